"""Post-processing chosen from data: nnU-Net's rule for keeping the largest component.

Every evaluation (Task.evaluate) also measures, per class, the Dice of the
prediction before the chain's label steps ("raw") and with only the largest
connected component of that class kept ("lcc"). Both are flat scalar scores,
so the coordinator's held-out rows and the sites' validation rows of a run
carry them like any other metric; ``decide_largest_component`` turns those rows
into the chain to ship: keep the largest component of class c only where it
raises the mean validation Dice of c (nnU-Net v2, determine_postprocessing).
Removing voxels of class c changes no other class's Dice, so the classes are
decided independently.
"""
from __future__ import annotations

import math
from typing import Iterable, Mapping

RAW = "raw_dice_"   # flat score: Dice of class c before the chain's label steps
LCC = "lcc_dice_"   # flat score: the same prediction with class c's largest component kept


def candidate_scores(per_case: list[dict], num_classes: int) -> dict:
    """Flat ``raw_dice_<c>`` / ``lcc_dice_<c>``: the case means (NaN cases skipped)."""
    out = {}
    for c in range(1, int(num_classes)):
        for prefix, key in ((RAW, "raw"), (LCC, "largest")):
            vals = [float(r["candidates"][key][str(c)]) for r in per_case
                    if "candidates" in r and str(c) in r["candidates"][key]]
            vals = [v for v in vals if math.isfinite(v)]
            out[f"{prefix}{c}"] = sum(vals) / len(vals) if vals else math.nan
    return out


def decide_largest_component(rows: Iterable[tuple[float, Mapping]], num_classes: int,
                             min_gain: float = 0.0) -> dict:
    """The largest-component decision from weighted metric rows.

    ``rows``: ``(weight, scores)`` pairs, ``scores`` holding ``raw_dice_<c>`` and
    ``lcc_dice_<c>`` (e.g. each site's validation scores weighted by its number of
    validation cases). A class is kept when its weighted mean Dice with the largest
    component exceeds the one without by more than ``min_gain``; a class no row
    measured is left alone. Returns ``{"classes": [...], "per_class": {c: {"raw",
    "lcc", "n", "keep"}}, "chain": [...]}`` where ``chain`` is the [postprocess]
    chain that applies the decision ([] when no class gains).
    """
    rows = [(float(w), s) for w, s in rows if float(w) > 0]
    per_class, keep = {}, []
    for c in range(1, int(num_classes)):
        acc = {"raw": 0.0, "lcc": 0.0, "w": 0.0}
        for w, s in rows:
            r, l = s.get(f"{RAW}{c}"), s.get(f"{LCC}{c}")
            if isinstance(r, (int, float)) and isinstance(l, (int, float)) and math.isfinite(r) and math.isfinite(l):
                acc["raw"] += w * r
                acc["lcc"] += w * l
                acc["w"] += w
        if acc["w"] == 0:
            continue
        raw, lcc = acc["raw"] / acc["w"], acc["lcc"] / acc["w"]
        k = lcc > raw + min_gain
        per_class[str(c)] = {"raw": raw, "lcc": lcc, "weight": acc["w"], "keep": bool(k)}
        if k:
            keep.append(c)
    chain = [{"name": "largest_component", "classes": keep}] if keep else []
    return {"rule": "keep the largest component of a class where it raises its mean validation Dice",
            "classes": keep, "per_class": per_class, "chain": chain}
