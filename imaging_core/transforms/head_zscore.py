"""The z-score over a head mask: statistics inside the head, one fixed value outside.

MONAI has no transform for it, so an exported bundle ships THIS FILE, verbatim,
as scripts/head_zscore.py (imaging_core/bundle/scripts.py): fedvox's
preprocessing and the bundle's MONAI run then execute the same code. It must
therefore stay self-contained: numpy and scipy only, no fedvox import.
"""
from __future__ import annotations

import numpy as np


def otsu_threshold(values: np.ndarray, bins: int = 256) -> float:
    """Otsu's threshold (the cut maximising the between-class variance) of ``values``.
    The top 0.1% are clipped first so a few bright vessels do not squeeze the histogram."""
    lo, hi = float(values.min()), float(np.percentile(values, 99.9))
    if hi <= lo:
        return lo
    hist, edges = np.histogram(np.clip(values, lo, hi), bins=bins, range=(lo, hi))
    centres = (edges[:-1] + edges[1:]) / 2.0
    w0 = np.cumsum(hist, dtype=np.float64)
    w1 = w0[-1] - w0
    m0 = np.cumsum(hist * centres, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        between = w0 * w1 * (m0 / w0 - (m0[-1] - m0) / w1) ** 2
    between = np.nan_to_num(between[:-1])
    # an empty gap between the classes is a plateau of maxima: take its middle
    best = np.flatnonzero(between >= between.max() * (1 - 1e-9))
    return float(centres[(best[0] + best[-1]) // 2])


def head_mask(x: np.ndarray, sigma: float = 1.0) -> np.ndarray:
    """The head (or body) of one 3D MR channel, whatever fills the air around it.

    Otsu on a smoothed copy separates air from tissue both when the air is
    zero-filled and when it is Rician noise (smoothing shrinks the noise far
    more than the tissue contrast); the largest connected component drops
    noise specks and background blobs, and filling holes takes back dark
    structures inside (ventricles, sinuses). All-False only for a flat image.
    """
    from scipy import ndimage
    sm = ndimage.gaussian_filter(np.asarray(x, dtype=np.float32), sigma) if sigma > 0 else x
    v = sm.ravel()
    t = otsu_threshold(v)
    # Otsu's cut lies inside the tissue's range (dark CSF and grey matter fall below it):
    # half way from the air's typical value to it keeps them and is still far above the noise
    air = float(np.median(v[v <= t]))
    fg = sm > air + 0.5 * (t - air)
    lab, n = ndimage.label(fg)
    if n == 0:
        return fg
    if n > 1:
        sizes = np.bincount(lab.ravel())
        sizes[0] = 0
        fg = lab == int(np.argmax(sizes))
    return ndimage.binary_fill_holes(fg)


def zscore_inside_(x: np.ndarray, mask: np.ndarray | None) -> bool:
    """In place: ``(x - mean) / std`` over ``mask`` (all of ``x`` when None; population
    std, float64 accumulation, a zero std treated as 1). False (``x`` untouched) when the
    mask is empty. The one z-score arithmetic: imaging_core's other masks use it too."""
    vals = x if mask is None else x[mask]
    if vals.size == 0:
        return False
    # float64 accumulation: float32 sums drift on multi-million-voxel volumes
    mean = vals.mean(dtype=np.float64)
    std = vals.std(dtype=np.float64)
    if std == 0.0:
        std = 1.0
    if mask is None:
        x -= np.float32(mean)
        x /= np.float32(std)
    else:
        x[mask] = (vals - np.float32(mean)) / np.float32(std)
    return True


def head_zscore_(x: np.ndarray, outside: float) -> None:
    """In place on the float32 3D array ``x``: the z-score over ``head_mask(x)``,
    ``outside`` everywhere else. A flat image (no head found) is left as it is."""
    mask = head_mask(x)
    if zscore_inside_(x, mask):
        x[~mask] = np.float32(outside)


def head_zscore(arr: np.ndarray, outside: float) -> np.ndarray:
    """A float32 copy of the channel-first ``arr`` with ``head_zscore_`` on each 3D channel
    (a head is found per channel). The input is never modified (it may be read-only)."""
    out = np.array(arr, dtype=np.float32, copy=True)
    for c in range(out.shape[0]):
        head_zscore_(out[c], outside)
    return out
