"""Integer count vectors (a site's fingerprint, imaging_core.plan.layout)
through the weights' secure aggregation, unchanged.

The secure sum (fl_common.secagg.quantize) averages clipped float updates. A
count vector becomes floats in [0, clip_range): each count is split into
DIGITS base-BASE digits, each scaled by clip_range / BASE, and every site
sends weight = max_weight, so the unmasked weighted mean is sum_i(x_i) / n.
The server multiplies by the n survivors and rounds: the digit sums come back
exact because the quantisation error in digit units, n * BASE * 2^-23 at
float32, stays far below 1/2 (n <= 100 sites: < 0.05).
"""
from __future__ import annotations

import numpy as np

BASE = 2 ** 12
DIGITS = 3                 # counts up to 2^36 - 1 per site (a site's voxels of one modality)
MAX_COUNT = BASE ** DIGITS - 1


class CountCodecError(ValueError):
    pass


def encode_counts(counts, clip_range: float) -> np.ndarray:
    """float32[DIGITS * n]: the digits of ``counts`` (non-negative integers), least significant first."""
    v = np.asarray(counts)
    if v.ndim != 1 or not np.issubdtype(v.dtype, np.integer):
        raise CountCodecError(f"counts must be a 1-d integer vector, got {v.dtype}{list(v.shape)}")
    if v.size and (v.min() < 0 or v.max() > MAX_COUNT):
        raise CountCodecError(f"counts must lie in [0, {MAX_COUNT}], got [{v.min()}, {v.max()}]")
    v = v.astype(np.int64)
    digits = [(v // BASE ** d) % BASE for d in range(DIGITS)]
    return (np.concatenate(digits).astype(np.float64) * (clip_range / BASE)).astype(np.float32)


def decode_sum(mean: np.ndarray, survivors: int, clip_range: float) -> np.ndarray:
    """int64[n]: the summed counts from the secure weighted mean over ``survivors`` sites."""
    m = np.asarray(mean, dtype=np.float64)
    if m.size % DIGITS:
        raise CountCodecError(f"sum has {m.size} values, not a multiple of {DIGITS} digits")
    digit_sums = np.rint(m * survivors * BASE / clip_range).astype(np.int64)
    n = m.size // DIGITS
    return sum(digit_sums[d * n:(d + 1) * n] * BASE ** d for d in range(DIGITS))
