"""Per-case metrics of label maps, their summary over cases, and files on disk.

Per case (``case_metrics``) the values are exactly MONAI's: Dice with
``ignore_empty=True``, symmetric HD / HD95 and ASSD with their inf/NaN for
empty masks. Summaries (``summarize``) average like MONAI's
``aggregate("mean")`` -- NaN skipped -- but MONAI's mean silently drops a
structure the model missed (HD95 NaN) or invented (Dice NaN), so every summary
also counts those cases and gives worst-case figures that include them:

* ``dice_strict``: Dice with ``ignore_empty=False`` semantics, i.e. an
  invented structure (gt empty, pred not) counts 0 and a correctly absent one
  (both empty) counts 1. A missed structure already counts 0 in plain Dice.
* ``hd95_worst``: HD95 where a missed or invented structure counts as the
  image diagonal in mm -- the distance between the centres of two opposite
  corner voxels, ``sqrt(sum(((shape - 1) * spacing) ** 2))``, which no real
  surface distance in that image can exceed. Both-empty cases stay excluded.

Statistics use finite values only; ``n_inf`` / ``n_nan`` say what was left
out. (MONAI's mean of HD-max or ASSD becomes inf once any case is inf; here inf
is counted in ``n_inf`` instead.)
"""
from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

from ..errors import ImagingError
from .dice import dice_from_counts
from .surface import _check_percentile, _spacing, surface_metrics

__all__ = ["case_metrics", "summarize", "stats", "write_summary", "metrics_for_files", "per_case_values"]

STAT_KEYS = ("mean", "median", "std", "p5", "p95", "n")
SUMMARY_METRICS = ("dice", "dice_strict", "hd95", "hd95_worst", "hd", "assd")
PER_CASE_METRICS = ("dice", "hd95", "hd", "assd")


# ------------------------------------------------------------------------- one case
def case_metrics(pred, gt, num_classes: int, spacing=(1.0, 1.0, 1.0), include_background: bool = False,
                 percentile: float | None = 95) -> dict:
    """Per-class Dice, HD95 (at ``percentile``), HD and ASSD of two label maps (X, Y, Z).

    Returns JSON-friendly floats keyed by ``str(class)`` (NaN / inf kept as
    floats), plus ``missed`` (gt present, prediction empty), ``spurious`` (gt
    empty, prediction present), voxel counts and ``diagonal_mm`` (for the
    worst-case summary).
    """
    p, g = np.asarray(pred), np.asarray(gt)
    if p.shape != g.shape:
        raise ValueError(f"prediction and ground truth shapes differ: {p.shape} vs {g.shape}")
    if int(num_classes) < 1:
        raise ValueError(f"num_classes must be >= 1, got {num_classes}")
    _check_percentile(percentile)
    sp = _spacing(spacing, p.ndim)
    out: dict = {"dice": {}, "hd95": {}, "hd": {}, "assd": {}, "missed": [], "spurious": [],
                 "gt_voxels": {}, "pred_voxels": {},
                 "percentile": None if percentile is None else float(percentile),
                 "diagonal_mm": _diagonal(p.shape, sp)}
    for c in range(0 if include_background else 1, int(num_classes)):
        pc, gc = p == c, g == c
        n_p, n_g = int(np.count_nonzero(pc)), int(np.count_nonzero(gc))
        inter = int(np.count_nonzero(pc & gc)) if n_p and n_g else 0
        k = str(c)
        out["dice"][k] = float(dice_from_counts(inter, n_p, n_g))
        sm = surface_metrics(pc, gc, sp, percentile)
        for name in ("hd95", "hd", "assd"):
            out[name][k] = float(sm[name])
        out["gt_voxels"][k], out["pred_voxels"][k] = n_g, n_p
        if n_g and not n_p:
            out["missed"].append(c)
        elif n_p and not n_g:
            out["spurious"].append(c)
    return out


def _diagonal(shape: Sequence[int], spacing: Sequence[float]) -> float:
    return float(math.sqrt(sum(((n - 1) * s) ** 2 for n, s in zip(shape, spacing))))


# -------------------------------------------------------------------------- summary
def stats(values: Iterable[float]) -> dict:
    """mean / median / std (population) / p5 / p95 / n over the finite values,
    with ``n_inf`` and ``n_nan`` for what was left out; NaN everywhere if none."""
    v = np.asarray([float(x) for x in values], dtype=np.float64)
    fin = v[np.isfinite(v)]
    out = {"n": int(fin.size), "n_inf": int(np.isinf(v).sum()), "n_nan": int(np.isnan(v).sum())}
    if fin.size:
        out.update(mean=float(fin.mean()), median=float(np.median(fin)), std=float(fin.std()),
                   p5=float(np.percentile(fin, 5)), p95=float(np.percentile(fin, 95)))
    else:
        out.update({k: math.nan for k in ("mean", "median", "std", "p5", "p95")})
    return {k: out[k] for k in STAT_KEYS + ("n_inf", "n_nan")}


def _num(x) -> float:
    try:
        return float(x)
    except (TypeError, ValueError):
        return math.nan


def summarize(per_case: list[dict], num_classes: int) -> dict:
    """Summary over cases, keyed by ``str(class)`` for the foreground classes 1..K-1.

    Each class: ``dice``, ``dice_strict``, ``hd95``, ``hd95_worst``, ``hd``,
    ``assd`` (stats dicts, see ``stats``), ``n_cases`` (cases that scored the
    class), ``n_present`` (gt non-empty), ``n_missed``, ``n_spurious``,
    ``n_both_empty`` and ``hd95_worst_case_mean`` (= ``hd95_worst["mean"]``).
    """
    out: dict = {}
    for c in range(1, int(num_classes)):
        k = str(c)
        rows = [m for m in per_case if k in (m.get("dice") or {})]
        dice, strict, hd95, worst, hd, assd = [], [], [], [], [], []
        n_missed = n_spurious = n_present = 0
        for m in rows:
            d = _num(m["dice"][k])
            missed, spurious = c in m.get("missed", ()), c in m.get("spurious", ())
            n_missed += missed
            n_spurious += spurious
            n_present += not math.isnan(d)  # Dice is NaN exactly when the gt is empty
            dice.append(d)
            strict.append(d if not math.isnan(d) else (0.0 if spurious else 1.0))
            h95 = _num((m.get("hd95") or {}).get(k))
            hd95.append(h95)
            worst.append(_num(m.get("diagonal_mm")) if (missed or spurious) else h95)
            hd.append(_num((m.get("hd") or {}).get(k)))
            assd.append(_num((m.get("assd") or {}).get(k)))
        s = {"dice": stats(dice), "dice_strict": stats(strict), "hd95": stats(hd95),
             "hd95_worst": stats(worst), "hd": stats(hd), "assd": stats(assd),
             "n_cases": len(rows), "n_present": n_present, "n_missed": n_missed,
             "n_spurious": n_spurious, "n_both_empty": len(rows) - n_present - n_spurious}
        s["hd95_worst_case_mean"] = s["hd95_worst"]["mean"]
        out[k] = s
    return out


def per_case_values(per_case: Sequence[dict], num_classes: int) -> dict[str, list[float]]:
    """Per-case rows (``case_metrics`` + case_id) as value lists in case order, named as
    ``flat_scores`` names them (dice_<c>, hd95_<c>, missed_<c>); no case ids."""
    out: dict[str, list[float]] = {}
    for c in range(1, int(num_classes)):
        k = str(c)
        out[f"dice_{c}"] = [float(m["dice"].get(k, math.nan)) for m in per_case]
        out[f"hd95_{c}"] = [float(m["hd95"].get(k, math.nan)) for m in per_case]
        out[f"missed_{c}"] = [float(c in m.get("missed", [])) for m in per_case]
    return out


def flat_scores(summary: dict, num_classes: int) -> dict:
    """Scalar headline figures from a summary (for tables and best-model choice)."""
    out = {}
    fg = [c for c in range(1, num_classes)]
    dices = [summary[str(c)]["dice"]["mean"] for c in fg if str(c) in summary]
    out["dice_fg_mean"] = float(np.nanmean(dices)) if dices and not np.all(np.isnan(dices)) else float("nan")
    for c in fg:
        s = summary.get(str(c))
        if s:
            out[f"dice_{c}"] = s["dice"]["mean"]
            out[f"hd95_{c}"] = s["hd95"]["mean"]
            out[f"missed_{c}"] = s.get("n_missed", 0)
    return out


# ---------------------------------------------------------------------------- files


def write_summary(summary: dict, per_case: list[dict], out_dir: str | os.PathLike) -> dict[str, Path]:
    """Write metrics.json (summary + per case), per_case.csv (one row per case and
    class) and summary.csv (one row per class), each atomically."""
    from ..io.tables import write_csv, write_json

    out_dir = Path(out_dir)
    paths = {"json": out_dir / "metrics.json", "per_case": out_dir / "per_case.csv",
             "summary": out_dir / "summary.csv"}
    write_json(paths["json"], {"summary": summary, "per_case": per_case})
    rows = []
    for i, m in enumerate(per_case):
        for k in (m.get("dice") or {}):
            row = {"case_id": m.get("case_id", i), "class": k}
            for name in PER_CASE_METRICS:
                row[name] = (m.get(name) or {}).get(k, "")
            row["gt_voxels"] = (m.get("gt_voxels") or {}).get(k, "")
            row["pred_voxels"] = (m.get("pred_voxels") or {}).get(k, "")
            row["missed"] = int(int(k) in m.get("missed", ()))
            row["spurious"] = int(int(k) in m.get("spurious", ()))
            rows.append(row)
    write_csv(paths["per_case"], rows,
              ["case_id", "class", *PER_CASE_METRICS, "gt_voxels", "pred_voxels", "missed", "spurious"])
    counts = ["n_cases", "n_present", "n_missed", "n_spurious", "n_both_empty"]
    cols = [f"{m}_{s}" for m in SUMMARY_METRICS for s in STAT_KEYS]
    srows = []
    for k, s in summary.items():
        row = {"class": k, **{n: s.get(n, "") for n in counts}}
        for m in SUMMARY_METRICS:
            for st in STAT_KEYS:
                row[f"{m}_{st}"] = (s.get(m) or {}).get(st, "")
        srows.append(row)
    write_csv(paths["summary"], srows, ["class", *counts, *cols])
    return paths


def _label_array(vol, path) -> np.ndarray:
    """The (X, Y, Z) integer label array of a loaded Volume, or a clear error."""
    a = vol.array
    if a.shape[0] != 1:
        raise ImagingError(path, f"expected a single-channel label map, got {a.shape[0]} channels")
    a = a[0]
    if a.dtype.kind == "f":
        if not np.all(np.isfinite(a)) or not np.array_equal(a, np.round(a)):
            raise ImagingError(path, "not a label map: non-integer voxel values")
        a = a.astype(np.int64)
    elif a.dtype.kind not in "iub":
        raise ImagingError(path, f"not a label map: voxel type {a.dtype}")
    if a.size and a.dtype.kind == "i" and a.min() < 0:
        raise ImagingError(path, f"not a label map: negative label {int(a.min())}")
    return a


def metrics_for_files(pred_path: str | os.PathLike, gt_path: str | os.PathLike, spacing=None,
                      num_classes: int | None = None, include_background: bool = False,
                      percentile: float | None = 95) -> dict:
    """Metrics of a predicted label file against a ground-truth label file.

    Both are NIfTI / NRRD files or DICOM series (``imaging_core.io.load_volume``)
    and must share shape and affine. Spacing is the ground truth's own unless
    given; ``num_classes`` defaults to the largest label in either file + 1.
    """
    from ..io import load_volume

    gt_vol = load_volume(gt_path)
    pred_vol = load_volume(pred_path)
    g, p = _label_array(gt_vol, gt_path), _label_array(pred_vol, pred_path)
    if p.shape != g.shape:
        raise ImagingError(pred_path, f"shape {p.shape} differs from the ground truth's {g.shape} ({gt_path})")
    if not np.allclose(pred_vol.affine, gt_vol.affine, rtol=0, atol=1e-3):
        raise ImagingError(pred_path, f"voxel-to-world affine differs from the ground truth's ({gt_path}): "
                                      "resample the prediction onto the ground-truth grid first")
    top = int(max(p.max(initial=0), g.max(initial=0)))
    if num_classes is None:
        num_classes = max(top + 1, 2)
    elif top >= int(num_classes):
        path = pred_path if int(p.max(initial=0)) == top else gt_path
        raise ImagingError(path, f"label {top} is not below num_classes={num_classes}")
    sp = tuple(float(s) for s in (gt_vol.spacing if spacing is None else _spacing(spacing, g.ndim)))
    res = case_metrics(p, g, int(num_classes), spacing=sp, include_background=include_background,
                       percentile=percentile)
    return {"pred": str(pred_path), "gt": str(gt_path), "shape": [int(s) for s in g.shape],
            "spacing": list(sp), "num_classes": int(num_classes), **res}
