"""Dice per class, with MONAI's ``DiceMetric`` semantics (checked in the tests).

``include_background`` (MONAI default True) keeps or drops class/channel 0.
``ignore_empty`` (MONAI default True) decides what an empty ground truth gives:

=================  ====================  =====================
case               ignore_empty=True     ignore_empty=False
=================  ====================  =====================
gt empty, pred not NaN                   0.0
both empty         NaN                   1.0
pred empty, gt not 0.0                   0.0
=================  ====================  =====================

NaN entries are what ``aggregate("mean")`` skips, so a structure absent from the
ground truth does not count; a missed structure counts as 0.

Only voxel counts are needed, so this is counting rather than float sums over
one-hot tensors; counts are exact integers (MONAI sums in float32).
"""
from __future__ import annotations

import numpy as np

from .surface import _as_bool, _as_numpy

__all__ = ["dice_from_counts", "label_counts", "dice_labels", "dice_onehot"]

# Above this many classes one bincount pass beats a comparison pass per class.
_BINCOUNT_FROM = 24


def dice_from_counts(intersection, pred_sum, gt_sum, ignore_empty: bool = True) -> np.ndarray:
    """Dice from per-class voxel counts (arrays of equal shape) -> float64 array."""
    inter = np.asarray(intersection, dtype=np.float64)
    ps = np.asarray(pred_sum, dtype=np.float64)
    gs = np.asarray(gt_sum, dtype=np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        d = 2.0 * inter / (ps + gs)
    empty_gt = gs == 0
    if ignore_empty:
        d = np.where(empty_gt, np.nan, d)
    else:
        d = np.where(empty_gt, np.where(ps == 0, 1.0, 0.0), d)
    return d


def label_counts(pred, gt, num_classes: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(intersection, pred_sum, gt_sum) per class 0..num_classes-1 of two label maps.

    Labels outside [0, num_classes) count for no class (as MONAI's ``y == c``).
    """
    p, g = _as_numpy(pred), _as_numpy(gt)
    if p.shape != g.shape:
        raise ValueError(f"prediction and ground truth shapes differ: {p.shape} vs {g.shape}")
    k = int(num_classes)
    if k < 1:
        raise ValueError(f"num_classes must be >= 1, got {num_classes}")
    if k < _BINCOUNT_FROM:
        inter, ps, gs = (np.zeros(k, dtype=np.int64) for _ in range(3))
        for c in range(k):
            pc, gc = p == c, g == c
            ps[c], gs[c] = np.count_nonzero(pc), np.count_nonzero(gc)
            inter[c] = np.count_nonzero(pc & gc) if ps[c] and gs[c] else 0
        return inter, ps, gs

    def hist(x):
        x = x.ravel()
        x = x[(x >= 0) & (x < k)] if x.dtype.kind != "u" else x[x < k]
        return np.bincount(x.astype(np.intp, copy=False), minlength=k)[:k]

    same = p == g
    return hist(g[same]), hist(p), hist(g)


def dice_labels(pred, gt, num_classes: int, include_background: bool = True,
                ignore_empty: bool = True) -> np.ndarray:
    """Dice per class of two integer label maps -> (num_classes,) or (num_classes - 1,)."""
    d = dice_from_counts(*label_counts(pred, gt, num_classes), ignore_empty=ignore_empty)
    return d if include_background else d[1:]


def dice_onehot(y_pred, y, include_background: bool = True, ignore_empty: bool = True) -> np.ndarray:
    """Dice of one-hot (B, C, *spatial) arrays or tensors -> (B, C or C-1), like MONAI's
    ``DiceMetric`` (non-bool values count as foreground where non-zero)."""
    p, g = _as_numpy(y_pred), _as_numpy(y)
    if p.shape != g.shape:
        raise ValueError(f"y_pred and y should have same shapes, got {p.shape} and {g.shape}")
    if p.ndim < 3:
        raise ValueError(f"expected (batch, channel, *spatial), got shape {p.shape}")
    # One channel is taken as the foreground whatever include_background says (as MONAI).
    first = 0 if include_background or p.shape[1] == 1 else 1
    n_b, n_c = p.shape[0], p.shape[1] - first
    inter, ps, gs = (np.zeros((n_b, n_c), dtype=np.int64) for _ in range(3))
    for b in range(n_b):
        for c in range(n_c):
            pc, gc = _as_bool(p[b, c + first]), _as_bool(g[b, c + first])
            ps[b, c], gs[b, c] = np.count_nonzero(pc), np.count_nonzero(gc)
            inter[b, c] = np.count_nonzero(pc & gc)
    return dice_from_counts(inter, ps, gs, ignore_empty=ignore_empty)
