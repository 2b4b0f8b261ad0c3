"""Paired bootstrap confidence intervals: is model A better than model B on the
same cases, or can these cases not tell them apart?

Pairs are resampled together (case i's two values always travel as one), so
between-case variation, which both models share, does not widen the interval.
Percentile interval of the mean per-case difference; pure numpy, seeded.
"""
from __future__ import annotations

import math
from typing import Sequence

import numpy as np

BETTER, SAME, WORSE = "better", "not distinguishable", "worse"
MIN_CASES = 10  # fewer paired cases than this: no verdict beyond "not distinguishable"


def paired_bootstrap(a: Sequence[float], b: Sequence[float], n_boot: int = 10_000, level: float = 0.95,
                     higher_is_better: bool = True, seed: int = 0, min_n: int = MIN_CASES) -> dict:
    """Mean of ``a - b`` over the cases where both are finite, its ``level`` percentile
    bootstrap interval, ``n`` (cases used) and the verdict for A against B: "better" when
    the whole interval is on A's good side, "worse" when on its bad side, else
    "not distinguishable" (also for fewer than ``min_n`` usable cases: a percentile
    bootstrap of a handful of cases gives intervals too narrow to trust; ``too_few`` says so,
    the interval is still given)."""
    x, y = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if x.shape != y.shape or x.ndim != 1:
        raise ValueError(f"a and b must be 1-D of one length (paired cases), got {x.shape} and {y.shape}")
    if not 0 < level < 1:
        raise ValueError(f"level must be in (0, 1), got {level}")
    keep = np.isfinite(x) & np.isfinite(y)
    d = x[keep] - y[keep]
    n = int(d.size)
    out = {"n": n, "n_dropped": int(x.size - n), "mean_diff": float(d.mean()) if n else math.nan,
           "ci_low": math.nan, "ci_high": math.nan, "level": level, "verdict": SAME, "too_few": n < min_n}
    if n < 2:
        return out
    rng = np.random.default_rng(seed)
    means = np.empty(n_boot)
    step = max(1, 2_000_000 // n)  # bounded memory for many cases
    for s in range(0, n_boot, step):
        m = min(step, n_boot - s)
        means[s:s + m] = d[rng.integers(0, n, size=(m, n))].mean(axis=1)
    lo, hi = np.quantile(means, [(1 - level) / 2, (1 + level) / 2])
    out.update(ci_low=float(lo), ci_high=float(hi))
    good_low, good_high = (lo > 0, hi < 0) if higher_is_better else (hi < 0, lo > 0)
    if not out["too_few"]:
        out["verdict"] = BETTER if good_low else WORSE if good_high else SAME
    return out


def paired_rows(per_case: Sequence[dict], labels: dict, first: str, others: Sequence[str],
                eval_set: str | None = None, **kw) -> list[dict]:
    """``first`` against each of ``others`` on the cases both were scored on (per-case rows
    {"model", "case_id", "dice_<c>", "hd95_<c>"}): one row per (other, metric) with the
    bootstrap result."""
    def values(model):
        return {r["case_id"]: r for r in per_case if r["model"] == model
                and (eval_set is None or r.get("eval_set") == eval_set)}
    a = values(first)
    out = []
    for other in others:
        b = values(other)
        ids = sorted(set(a) & set(b))
        if not ids:
            continue
        for c in (c for c in labels if c != "0"):
            for metric, hib in (("dice", True), ("hd95", False)):
                k = f"{metric}_{c}"
                r = paired_bootstrap([_f(a[i].get(k)) for i in ids], [_f(b[i].get(k)) for i in ids],
                                     higher_is_better=hib, **kw)
                out.append({"model": first, "versus": other, "metric": k, **r})
    return out


def _f(v) -> float:
    try:
        return float(v)
    except (TypeError, ValueError):
        return math.nan
