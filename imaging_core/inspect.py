"""What `fedvox inspect` reports for an image, a DICOM series or a datalist."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from .data.checks import check_label, check_pair
from .data.datalist import load_datalist
from .errors import ImagingError
from .io import load_volume
from .io.volume import Volume

# An integer volume with at most this many distinct values is treated as a label map.
MAX_LABEL_CLASSES = 64


def describe_volume(vol: Volume) -> dict:
    arr = vol.array
    info = {
        "path": vol.source, "format": vol.meta.get("format"),
        "shape": list(vol.spatial_shape), "channels": int(arr.shape[0]),
        "spacing": [round(float(s), 6) for s in vol.spacing],
        "orientation": "".join(vol.orientation),
        "affine": np.round(vol.affine, 6).tolist(), "dtype": str(arr.dtype),
        "intensity": {"min": float(arr.min()), "max": float(arr.max())},
    }
    for k in ("series_uid", "modality", "n_slices"):
        if k in vol.meta:
            info[k] = vol.meta[k]
    if arr.dtype.kind in "iub":
        values, counts = np.unique(arr, return_counts=True)
        if len(values) <= MAX_LABEL_CLASSES:
            info["label_classes"] = {str(int(v)): int(c) for v, c in zip(values, counts)}
    return info


def describe_datalist(path: Path) -> dict:
    dl = load_datalist(path)
    cases, n_ok = [], 0
    for case in dl.cases:
        entry = {"id": case.case_id, "split": case.split,
                 "image": os.path.relpath(case.image, dl.root),
                 "label": os.path.relpath(case.label, dl.root) if case.label else None}
        try:
            img = load_volume(case.image)
            entry.update(shape=list(img.spatial_shape), spacing=[round(float(s), 4) for s in img.spacing],
                         orientation="".join(img.orientation))
            if case.label is not None:
                lab = load_volume(case.label)
                check_pair(img, lab)
                arr = check_label(lab, dl.num_classes)
                entry["label_classes"] = {str(c): int(n) for c, n in
                                          enumerate(np.bincount(arr.reshape(-1), minlength=dl.num_classes))}
            entry["status"] = "ok"
            n_ok += 1
        except ImagingError as e:
            entry["status"] = "error"
            entry["error"] = str(e)
        cases.append(entry)
    return {"path": str(path), "kind": "datalist", "name": dl.name, "root": str(dl.root),
            "labels": {str(k): v for k, v in dl.labels.items()}, "modality": dl.modality,
            "counts": {s: len(dl.split(s)) for s in ("training", "validation", "test")},
            "ok": n_ok, "errors": len(dl.cases) - n_ok, "cases": cases}


def inspect_path(path: str | os.PathLike) -> dict:
    p = Path(path)
    if p.suffix.lower() == ".json":
        return describe_datalist(p)
    if not p.exists():
        raise ImagingError(p, "file not found")
    return {"kind": "volume", **describe_volume(load_volume(p))}
