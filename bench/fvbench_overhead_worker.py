"""A minimal long-lived site worker for bench/bench_site_overhead.py.

Holds torch, the site's data (a small .npy volume) and the tiny model of
fvbench_overhead_app in memory, and serves fedvox's site-worker gRPC API
(fl_client.worker_server.serve_until_signalled: Unix socket, 0600) so the torch-free ClientApp
shim can forward each message to it.

    python bench/fvbench_overhead_worker.py --socket S --data X.npy --ready-file R --name SITE
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

from fl_client.worker_server import serve_until_signalled  # noqa: E402
from fvbench_overhead_app import build_model, compute  # noqa: E402


class TinyWorker:
    def __init__(self, name: str, data: str):
        torch.set_num_threads(1)
        self.name = name
        self.x = torch.from_numpy(np.load(data))
        self.model = build_model(torch).eval()

    def status(self) -> dict:
        return {"site": self.name, "num_train": 1, "num_val": 1, "skipped": {}, "model": {}}

    def train(self, server_round: int, weights: dict, config: dict):
        res = compute(torch, self.model, self.x, weights["w"])
        return {}, 1.0, res

    def evaluate(self, server_round: int, weights: dict, config: dict):
        return compute(torch, self.model, self.x, weights["w"]), 1.0


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--socket", required=True)
    ap.add_argument("--data", required=True)
    ap.add_argument("--ready-file", required=True)
    ap.add_argument("--name", default="site")
    a = ap.parse_args()
    worker = TinyWorker(a.name, a.data)
    compute(torch, worker.model, worker.x, np.zeros(sum(p.numel() for p in worker.model.parameters()),
                                                    np.float32))  # warm the first forward
    serve_until_signalled(worker, a.socket, a.ready_file)
    return 0


if __name__ == "__main__":
    sys.exit(main())
