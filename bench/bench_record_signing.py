"""What signing the run record costs: a round checkpoint written through a RunRecord
with the run-record key (file + sidecar + run.json + a re-signed run_manifest.json)
against the same write without a key, and a model load verified against the signed
manifest against the unsigned (run.json hash) load, in one run. Model: the example
federation's UNet3D (channels 8-16-32-64) as flat float32, plus a server state of
the same size (FedAdam's moments are two more copies; here one).

    python bench/bench_record_signing.py [--repeats 20]

Last line: one JSON object; ratio = signed / unsigned (1.0: free).
"""
from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch


def _median(xs):
    xs = sorted(xs)
    return xs[len(xs) // 2]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=20)
    a = ap.parse_args()
    from fl_common.crypto.signing import MANIFEST_SIGNATURES
    from fl_server.record_manifest import RecordKey
    from fl_server.records import RunRecord
    from imaging_core.nets.unet3d import unet_from_config
    net = unet_from_config({"name": "unet3d", "channels": [8, 16, 32, 64], "strides": [2, 2, 2],
                            "num_res_units": 2, "in_channels": 1, "out_channels": 3})
    flat = torch.cat([p.detach().flatten() for p in net.state_dict().values() if p.is_floating_point()])
    state = {"flat": flat, "opt": {"m": flat.clone()}, "round": 1}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        MANIFEST_SIGNATURES.write_key_pair(tmp / "run_record.key", tmp / "run_record.pub")
        signer, verifier = RecordKey.signer(tmp / "run_record.key"), RecordKey.verifier(tmp / "run_record.pub")
        recs = {"unsigned": RunRecord(tmp / "u"), "signed": RunRecord(tmp / "s", signer=signer)}
        for rec in recs.values():
            rec.start({"run_id": "bench", "rounds": a.repeats})
            (rec.dir / "spec.json").write_text(json.dumps({"run_dir": str(rec.dir)}))
        save = {k: [] for k in recs}
        for r in range(1, a.repeats + 1):
            for k, rec in recs.items():  # interleaved: both see the same machine load
                state["round"] = r
                t0 = time.perf_counter()
                rec.save_round_checkpoint(r, state)
                save[k].append(time.perf_counter() - t0)
        load = {k: [] for k in recs}
        readers = {"unsigned": lambda: RunRecord.open(tmp / "u"),
                   "signed": lambda: RunRecord.open(tmp / "s", verify_key=verifier)}
        for _ in range(a.repeats):
            for k, open_ in readers.items():
                t0 = time.perf_counter()
                open_().load_round_checkpoint(a.repeats)
                load[k].append(time.perf_counter() - t0)
    mb = flat.numel() * 4 * 2 / 1e6
    out = {"checkpoint_mb": round(mb, 2), "repeats": a.repeats}
    for what, d in (("save", save), ("open_and_load", load)):
        u, s = _median(d["unsigned"]), _median(d["signed"])
        out[what] = {"unsigned_ms": round(u * 1e3, 2), "signed_ms": round(s * 1e3, 2), "ratio": round(s / u, 3)}
        print(f"{what}: unsigned {u * 1e3:.1f} ms, signed {s * 1e3:.1f} ms (x{s / u:.2f})")
    print(json.dumps(out))


if __name__ == "__main__":
    main()
