"""Pooling site fingerprints: sum the vectors, merge the categorical counts,
collect the summary rows, and read medians and percentiles from the sums.

``aggregate_fingerprints`` is the plaintext sum (one process holds every
site's reply: tests, benches, a single-institution run). The federation sums
the same vectors under secure aggregation and hands the sum to ``Pooled``.
A reply that is missing or malformed stops the plan with one line naming the
site and the problem (PlanError).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

import numpy as np

from ..errors import ImagingError
from .fingerprint import FINGERPRINT_VERSION, SMALL_COUNT
from .layout import (EXTENT_STEP, FRACTION_BINS, MAX_LABEL, SPACING_STEP, Layout, grid_percentile,
                     hist_mean_std, hist_percentile)


class PlanError(ImagingError):
    """A fingerprint reply the plan cannot use; the run does not start."""

    def __init__(self, site: str, problem: str):
        super().__init__(f"site {site}", problem)


def check_reply(site: str, reply: Any) -> dict:
    """The reply of ``site`` if it is a usable fingerprint, else PlanError."""
    if reply is None:
        raise PlanError(site, "sent no fingerprint reply (site down or refused the query)")
    if not isinstance(reply, Mapping):
        raise PlanError(site, f"fingerprint reply must be an object, got {type(reply).__name__}")
    missing = [k for k in ("version", "modality", "vector", "categorical", "summary") if k not in reply]
    if missing:
        raise PlanError(site, f"fingerprint reply lacks {', '.join(missing)}")
    if reply["version"] != FINGERPRINT_VERSION:
        raise PlanError(site, f"fingerprint version {reply['version']!r}, this server reads "
                              f"{FINGERPRINT_VERSION} (update fedvox at the site or the server)")
    if not isinstance(reply["modality"], str) or not reply["modality"]:
        raise PlanError(site, "fingerprint reply has no modality")
    size = Layout(reply["modality"]).size
    vec = reply["vector"]
    if vec is not None:   # None: the vector travelled in the secure sum instead
        try:
            arr = np.asarray(vec, dtype=np.int64)
        except (TypeError, ValueError):
            raise PlanError(site, "fingerprint vector is not a list of integers") from None
        if arr.shape != (size,):
            raise PlanError(site, f"fingerprint vector has {arr.size} entries, the "
                                  f"{reply['modality']} layout has {size}")
        if (arr < 0).any():
            raise PlanError(site, "fingerprint vector has negative counts")
    summary = reply["summary"]
    hidden = isinstance(summary, Mapping) and summary.get("cases") is None and "few_cases" in summary
    if not isinstance(summary, Mapping) or not (hidden or isinstance(summary.get("cases"), int)):
        raise PlanError(site, "fingerprint summary is missing or has no case count")
    if not hidden and summary["cases"] < 1:
        raise PlanError(site, "fingerprinted no case (every case was skipped or unlabelled)")
    return dict(reply)


@dataclass
class Pooled:
    """The federation's pooled fingerprint of one modality."""
    modality: str
    vector: np.ndarray                       # summed over sites
    categorical: dict[str, dict[str, int]]
    summaries: dict[str, dict]               # site -> its summary row

    @property
    def parts(self) -> dict[str, np.ndarray]:
        return Layout(self.modality).unpack(self.vector)

    @property
    def num_cases(self) -> int:
        return int(self.parts["cases"][0])

    def spacing_percentile(self, q: float) -> list[float]:
        return [round(grid_percentile(row, SPACING_STEP, q), 6) for row in self.parts["spacing"]]

    def spacing_axis_percentile(self, axis: int, q: float) -> float:
        return round(grid_percentile(self.parts["spacing"][axis], SPACING_STEP, q), 6)

    def extent_median(self) -> list[float]:
        return [grid_percentile(row, EXTENT_STEP, 50.0) for row in self.parts["extent"]]

    def crop_voxels_median(self) -> list[float]:
        return [grid_percentile(row, 1, 50.0) for row in self.parts["crop_voxels"]]

    def intensity(self, which: str = "fg") -> dict[str, float]:
        h = self.parts["hist_fg" if which == "fg" else "hist_all"]
        mean, std = hist_mean_std(h, self.modality)
        return {"p0.5": hist_percentile(h, self.modality, 0.5), "p50": hist_percentile(h, self.modality, 50),
                "p99.5": hist_percentile(h, self.modality, 99.5), "mean": mean, "std": std}

    def crop_fraction_median(self) -> float:
        return grid_percentile(self.parts["crop_frac"], 1.0 / (FRACTION_BINS - 1), 50.0)

    def label_values(self) -> list[int]:
        cases = self.parts["label_cases"]
        vals = [v for v in range(MAX_LABEL + 1) if cases[v] > 0]
        return vals + (["other"] if cases[MAX_LABEL + 1] else [])


def merge_categorical(cats: list[Mapping[str, Mapping[str, int]]]) -> dict[str, dict[str, int]]:
    """Sum per-site (already suppressed) category counts; small totals become 'other'."""
    total: dict[str, dict[str, int]] = {}
    for c in cats:
        for field_, counts in c.items():
            t = total.setdefault(field_, {})
            for k, n in counts.items():
                t[k] = t.get(k, 0) + int(n)
    return {f: _suppressed(t) for f, t in total.items()}


def _suppressed(t: Mapping[str, int]) -> dict[str, int]:
    out: dict[str, int] = {}
    for k, n in t.items():
        key = k if n >= SMALL_COUNT else "other"
        out[key] = out.get(key, 0) + n
    return out


def pooled_from_sum(modality: str, vector: np.ndarray, replies: Mapping[str, Mapping]) -> Pooled:
    """The pooled fingerprint from a (secure) sum and the sites' checked replies."""
    return Pooled(modality, np.asarray(vector, dtype=np.int64),
                  merge_categorical([r["categorical"] for r in replies.values()]),
                  {s: dict(r["summary"]) for s, r in replies.items()})


def aggregate_fingerprints(replies: Mapping[str, Any]) -> dict[str, Pooled]:
    """Plaintext pooling: modality -> Pooled over the sites of that modality."""
    checked = {s: check_reply(s, r) for s, r in replies.items()}
    out: dict[str, Pooled] = {}
    for mod in sorted({r["modality"] for r in checked.values()}):
        mine = {s: r for s, r in checked.items() if r["modality"] == mod}
        for s, r in mine.items():
            if r["vector"] is None:
                raise PlanError(s, "fingerprint reply has no vector to sum in plaintext")
        total = np.sum([np.asarray(r["vector"], dtype=np.int64) for r in mine.values()], axis=0)
        out[mod] = pooled_from_sum(mod, total, mine)
    return out
