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


# ----- one vector for the whole federation -------------------------------------
# Sites of different modalities bin on different edges; the secure sum needs one
# length, so every site sends the blocks of all MODALITIES, zeros but its own.
MODALITIES = ("CT", "MR")   # fl_common.config.SiteTable.modality


def _sizes() -> dict[str, int]:
    from imaging_core.plan.layout import Layout
    return {m: Layout(m).size for m in MODALITIES}


def federation_vector(modality: str, vector) -> np.ndarray:
    """The site's vector in its modality's block of the federation vector."""
    sizes = _sizes()
    if modality not in sizes:
        raise CountCodecError(f"modality {modality!r} is none of {MODALITIES}")
    v = np.asarray(vector, dtype=np.int64)
    if v.shape != (sizes[modality],):
        raise CountCodecError(f"{modality} fingerprint vector has {v.size} entries, its layout {sizes[modality]}")
    out = np.zeros(sum(sizes.values()), dtype=np.int64)
    start = sum(sizes[m] for m in MODALITIES[:MODALITIES.index(modality)])
    out[start:start + v.size] = v
    return out


def split_federation_vector(total) -> dict[str, np.ndarray]:
    """modality -> its block of a summed federation vector."""
    sizes = _sizes()
    total = np.asarray(total, dtype=np.int64)
    if total.shape != (sum(sizes.values()),):
        raise CountCodecError(f"summed fingerprint has {total.size} entries, the federation layout "
                              f"{sum(sizes.values())}")
    out, i = {}, 0
    for m in MODALITIES:
        out[m] = total[i:i + sizes[m]]
        i += sizes[m]
    return out
