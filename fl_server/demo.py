"""`fedvox demo`: the example federation end to end on this machine.

What exists so far: generate sites_example, build every site's cache, and
draw training patches at each site through its patch loader (the data each
site's trainer will consume), with a table of what every site produced.
"""
from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
from rich.table import Table

from .prepare import console, prepare_example


def sample_epoch(sd, epochs: int = 1) -> dict:
    """Draw ``epochs`` epochs of patches; returns throughput and class balance."""
    loader, sampler = sd.train_loader()
    n_patches, t0 = 0, time.perf_counter()
    centre_classes = np.zeros(sd.num_classes, dtype=np.int64)
    voxel_classes = np.zeros(sd.num_classes, dtype=np.int64)
    shape = None
    for ep in range(epochs):
        sampler.set_epoch(ep)
        for batch in loader:
            lab = batch["label"].numpy()
            shape = tuple(batch["image"].shape[2:])
            n_patches += lab.shape[0]
            c = tuple(s // 2 for s in lab.shape[2:])
            centre_classes += np.bincount(lab[:, 0, c[0], c[1], c[2]], minlength=sd.num_classes)
            voxel_classes += np.bincount(lab.reshape(-1), minlength=sd.num_classes)
    dt = time.perf_counter() - t0
    return {"patches": n_patches, "patch_shape": shape, "seconds": round(dt, 3),
            "patches_per_s": round(n_patches / max(dt, 1e-9), 1),
            "centre_class_fraction": (centre_classes / max(n_patches, 1)).round(3).tolist(),
            "voxel_class_fraction": (voxel_classes / max(voxel_classes.sum(), 1)).round(4).tolist()}


def run_demo(work: str | Path, zoom: float = 1.0, cases: float = 1.0, seed: int = 0, epochs: int = 2) -> int:
    work = Path(work)
    site_data = prepare_example(work, zoom=zoom, cases=cases, seed=seed)
    table = Table(title=f"Training patches per site ({epochs} epochs)")
    for col in ("site", "train cases", "patches", "patch", "patches/s", "centre bg/organ/lesion",
                "voxels bg/organ/lesion"):
        table.add_column(col)
    summary = {}
    for name, sd in site_data.items():
        if not sd.cases("training"):
            continue  # the coordinator only evaluates
        s = sample_epoch(sd, epochs)
        summary[name] = s
        table.add_row(name, str(len(sd.cases("training"))), str(s["patches"]),
                      "x".join(map(str, s["patch_shape"])), str(s["patches_per_s"]),
                      " / ".join(map(str, s["centre_class_fraction"])),
                      " / ".join(map(str, s["voxel_class_fraction"])))
    console.print(table)
    out = work / "demo_summary.json"
    out.write_text(json.dumps(summary, indent=2) + "\n")
    console.print(f"summary written to {out}")
    return 0
