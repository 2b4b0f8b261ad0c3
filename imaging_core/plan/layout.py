"""The fixed layout of a site's summable fingerprint vector.

Every site bins on the SAME edges (per modality), so vectors from sites can be
added coordinate by coordinate, under secure aggregation, and the server reads
medians and percentiles from the sum without seeing one site's histogram.
All entries are non-negative integers (voxel and case counts).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

# Intensity bins: (low edge, high edge, number of bins, relative). CT is binned in
# Hounsfield units; MR (and any modality without an absolute scale) is binned as
# a fraction of the case's own whole-image 99.5th percentile.
INTENSITY_BINS = {"CT": (-1100.0, 3000.0, 1025, False)}
RELATIVE_BINS = (-0.5, 2.0, 250, True)
SPACING_STEP = 0.01       # mm; spacing is counted at round(s / step), 0..10 mm
SPACING_BINS = 1001
EXTENT_STEP = 1.0         # mm; extent after crop-to-nonzero, 0..2047 mm
EXTENT_BINS = 2048        # also voxels per axis after crop, 0..2047
FRACTION_BINS = 21        # fractions counted at round(f * 20)
MAX_LABEL = 15            # label values 0..15 counted one by one; larger ones as "other"


def intensity_bins(modality: str) -> tuple[float, float, int, bool]:
    return INTENSITY_BINS.get(modality.upper(), RELATIVE_BINS)


@dataclass(frozen=True)
class Layout:
    """Names and lengths of the sections of the vector, for one modality."""
    modality: str

    @property
    def sections(self) -> tuple[tuple[str, int], ...]:
        nb = intensity_bins(self.modality)[2] + 2   # + underflow and overflow
        nl = MAX_LABEL + 2                           # + "other"
        return (("cases", 1), ("skipped", 1), ("zero_min", 1),
                ("hist_all", nb), ("hist_fg", nb),
                ("spacing", 3 * (SPACING_BINS + 1)), ("extent", 3 * (EXTENT_BINS + 1)),
                ("crop_voxels", 3 * (EXTENT_BINS + 1)),
                ("crop_frac", FRACTION_BINS), ("min_frac", FRACTION_BINS),
                ("label_voxels", nl), ("label_components", nl), ("label_cases", nl))

    @property
    def size(self) -> int:
        return sum(n for _, n in self.sections)

    def zeros(self) -> dict[str, np.ndarray]:
        return {k: np.zeros(n, dtype=np.int64) for k, n in self.sections}

    def pack(self, parts: dict[str, np.ndarray]) -> np.ndarray:
        return np.concatenate([np.asarray(parts[k], dtype=np.int64).reshape(-1) for k, _ in self.sections])

    def unpack(self, vector: np.ndarray) -> dict[str, np.ndarray]:
        vector = np.asarray(vector)
        if vector.shape != (self.size,):
            raise ValueError(f"fingerprint vector has {vector.size} entries, the {self.modality} layout "
                             f"has {self.size}")
        out, i = {}, 0
        for k, n in self.sections:
            out[k] = vector[i:i + n].astype(np.int64)
            i += n
        for k in ("spacing", "extent", "crop_voxels"):
            out[k] = out[k].reshape(3, -1)
        return out


def intensity_counts(values: np.ndarray, modality: str, scale: float = 1.0) -> np.ndarray:
    """Counts on the fixed edges (index 0 underflow, nb + 1 overflow); ``scale``
    stretches the edges (relative modalities: the case's 99.5th percentile)."""
    lo, hi, nb, _ = intensity_bins(modality)
    lo, hi = lo * scale, hi * scale
    v = values.reshape(-1)
    inner, _ = np.histogram(v, bins=nb, range=(lo, hi))   # numpy's uniform-bin fast path
    out = np.empty(nb + 2, dtype=np.int64)
    out[0], out[-1] = np.count_nonzero(v < lo), np.count_nonzero(v > hi)
    out[1:-1] = inner
    return out


def grid_index(value: float, step: float, bins: int) -> int:
    """A value counted at its nearest grid point (``bins`` = overflow)."""
    return int(min(max(round(value / step), 0), bins))


def bin_centres(modality: str) -> np.ndarray:
    """Values standing for each bin, under/overflow at the outer edges."""
    lo, hi, nb, _ = intensity_bins(modality)
    width = (hi - lo) / nb
    return np.concatenate([[lo], lo + width * (np.arange(nb) + 0.5), [hi]])


def hist_percentile(counts: np.ndarray, modality: str, q: float) -> float:
    """The q-th percentile (0..100) of a histogram on the fixed edges, linear within a bin."""
    counts = np.asarray(counts, dtype=np.float64)
    total = counts.sum()
    if total <= 0:
        return float("nan")
    lo, hi, nb, _ = intensity_bins(modality)
    width = (hi - lo) / nb
    cum = np.cumsum(counts)
    target = q / 100.0 * total
    i = int(np.searchsorted(cum, target, side="left"))
    i = min(i, nb + 1)
    if i == 0:
        return lo
    if i == nb + 1:
        return hi
    before = cum[i - 1]
    frac = (target - before) / counts[i] if counts[i] else 0.0
    return float(lo + width * (i - 1 + frac))


def hist_mean_std(counts: np.ndarray, modality: str) -> tuple[float, float]:
    counts = np.asarray(counts, dtype=np.float64)
    total = counts.sum()
    if total <= 0:
        return float("nan"), float("nan")
    c = bin_centres(modality)
    mean = float((counts * c).sum() / total)
    return mean, float(np.sqrt(max((counts * (c - mean) ** 2).sum() / total, 0.0)))


def grid_percentile(counts: np.ndarray, step: float, q: float) -> float:
    """The q-th percentile of values counted on a grid (numpy's 'lower' rule on
    the expanded list, as the values themselves, not interpolated)."""
    counts = np.asarray(counts, dtype=np.int64)
    total = int(counts.sum())
    if total == 0:
        return float("nan")
    # linear interpolation between order statistics, like np.percentile's default
    pos = q / 100.0 * (total - 1)
    lo_k, hi_k = int(np.floor(pos)), int(np.ceil(pos))
    cum = np.cumsum(counts)
    v_lo = int(np.searchsorted(cum, lo_k + 1)) * step
    v_hi = int(np.searchsorted(cum, hi_k + 1)) * step
    return float(v_lo + (v_hi - v_lo) * (pos - lo_k))
