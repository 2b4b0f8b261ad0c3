"""Does post-processing help? Dice / HD95 of a federated run's global model on
the coordinator's held-out cases with no post-processing, largest component
per class, CRF, and CRF + largest component. Last line: one JSON object.

    python bench/bench_postprocess_quality.py RUN_DIR
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import torch


def main(run_dir: str) -> None:
    from fl_common.config import load_federation
    from imaging_core.inference.sliding_window import sliding_window_inference
    from imaging_core.metrics import case_metrics, flat_scores, summarize
    from imaging_core.postprocess.chain import postprocess_probs
    from imaging_core.train.checkpoint import load_checkpoint
    from imaging_core.task import Task

    run = Path(run_dir)
    info = json.loads((run / "run.json").read_text())
    fed = load_federation(info["federation_path"], data_base=info.get("data_base"))
    task = Task(fed)
    nc = task.num_classes
    net = task.net_from_state(load_checkpoint(run / "global_final.pt"))
    # one sliding window per case, every chain on its probabilities (Task.evaluate would
    # run the window once per chain)
    sd = task.site_data(fed.coordinator, run / "coordinator-cache")
    cases = sd.prepare().cases
    chains = {"none": [], "largest": ["largest_component"], "crf": ["crf"],
              "crf+largest": ["crf", "largest_component"]}
    per = {k: [] for k in chains}
    for cc in cases:
        item = cc.load(mmap=True)
        img = np.array(item["image"].array, np.float32)
        with torch.inference_mode():
            logits = sliding_window_inference(torch.from_numpy(img)[None], task.roi,
                                              net, overlap=0.5)
        probs = torch.softmax(logits[0], 0).numpy()
        gt = np.asarray(item["label"].array[0])
        sp = tuple(float(s) for s in item["image"].spacing)
        image01 = (img[0] - img[0].min()) / max(float(np.ptp(img[0])), 1e-6)  # CRF colour sigma assumes [0,1]
        for name, chain in chains.items():
            pred = postprocess_probs(probs, image01[None], {"chain": chain})
            per[name].append(case_metrics(pred, gt, nc, spacing=sp))
    out = {}
    for name in chains:
        s = flat_scores(summarize(per[name], nc), nc)
        out[name] = {k: round(float(v), 4) for k, v in s.items()}
        print(f"{name:12s} " + "  ".join(f"{k} {v:.3f}" for k, v in out[name].items() if k.startswith(("dice", "hd95"))))
    print(json.dumps({"bench": "postprocess_quality", "run": str(run), "cases": len(cases), "results": out}))


if __name__ == "__main__":
    main(sys.argv[1])
