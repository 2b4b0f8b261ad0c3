"""Cropping and padding (MONAI CropForegroundd / SpatialPadd / DivisiblePadd /
CenterSpatialCropd semantics). Every op translates the affine so that the
world position of every kept voxel is unchanged. Input arrays are never
modified; in-bounds crops are views.
"""
from __future__ import annotations

from typing import Callable, Sequence

import numpy as np

from .base import DEFAULT_KEYS, Data, Transform, is_label_key

_PAD_MODES = ("constant", "edge")


def _triple(v, name: str) -> tuple[int, int, int]:
    a = np.atleast_1d(np.asarray(v)).ravel()
    if a.size == 1:
        a = np.repeat(a, 3)
    if a.size != 3:
        raise ValueError(f"{name} must be an int or 3 ints, got {v!r}")
    return tuple(int(x) for x in a)


def shifted_affine(affine: np.ndarray, start: Sequence[int]) -> np.ndarray:
    """Affine of a grid whose voxel 0 is voxel ``start`` of the grid of ``affine``."""
    out = np.array(affine, dtype=np.float64, copy=True)
    out[:3, 3] = affine[:3, :3] @ np.asarray(start, dtype=np.float64) + affine[:3, 3]
    return out


def crop_or_pad_array(arr: np.ndarray, start: Sequence[int], size: Sequence[int],
                      pad_value=0, mode: str = "constant") -> np.ndarray:
    """Box ``[start, start+size)`` of channel-first ``arr``; parts outside are padded.

    Fully in-bounds boxes are returned as views.
    """
    if mode not in _PAD_MODES:
        raise ValueError(f"pad mode must be one of {_PAD_MODES}, got {mode!r}")
    start = np.asarray(start, dtype=np.int64)
    size = np.asarray(size, dtype=np.int64)
    if np.any(size < 0):
        raise ValueError(f"negative box size {tuple(size)}")
    shape = np.asarray(arr.shape[1:], dtype=np.int64)
    end = start + size
    lo = np.clip(start, 0, shape)
    hi = np.clip(end, 0, shape)
    hi = np.maximum(hi, lo)
    inner = arr[:, lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]]
    if np.all(start >= 0) and np.all(end <= shape):
        return inner
    before = lo - start
    after = end - hi
    if mode == "edge" and np.all(hi > lo):
        return np.pad(inner, [(0, 0)] + [(int(b), int(a)) for b, a in zip(before, after)],
                      mode="edge")
    out = np.full((arr.shape[0],) + tuple(int(s) for s in size), pad_value, dtype=arr.dtype)
    out[:, before[0]:before[0] + inner.shape[1], before[1]:before[1] + inner.shape[2],
        before[2]:before[2] + inner.shape[3]] = inner
    return out


def crop_or_pad(vol, start: Sequence[int], size: Sequence[int], pad_value=0,
                mode: str = "constant"):
    """Extract the box ``[start, start+size)`` of ``vol`` (may lie partly outside).

    Out-of-bounds parts are filled with ``pad_value`` (``mode="constant"``) or
    the nearest edge voxel (``mode="edge"``). The affine is translated so world
    coordinates are preserved.
    """
    start = _triple(start, "start")
    size = _triple(size, "size")
    arr = crop_or_pad_array(vol.array, start, size, pad_value, mode)
    return vol.replace(array=arr, affine=shifted_affine(vol.affine, start))


def foreground_box(mask: np.ndarray, margin=0, allow_smaller: bool = False,
                   k_divisible=1) -> tuple[np.ndarray, np.ndarray] | None:
    """(start, end) of the bounding box of a spatial boolean mask (MONAI semantics).

    ``None`` when the mask is empty. With ``allow_smaller=False`` the margin may
    take the box outside the volume (the crop is then padded).
    """
    margin = np.asarray(_triple(margin, "margin"))
    if np.any(margin < 0):
        raise ValueError(f"margin must be non-negative, got {tuple(margin)}")
    start = np.zeros(3, dtype=np.int64)
    end = np.zeros(3, dtype=np.int64)
    for ax in range(3):
        others = tuple(a for a in range(3) if a != ax)
        line = mask.any(axis=others)
        nz = np.flatnonzero(line)
        if nz.size == 0:
            return None
        start[ax] = nz[0] - margin[ax]
        end[ax] = nz[-1] + 1 + margin[ax]
        if allow_smaller:
            start[ax] = max(start[ax], 0)
            end[ax] = min(end[ax], mask.shape[ax])
    k = np.asarray(_triple(k_divisible, "k_divisible"))
    size = end - start
    new_size = np.where(k > 0, np.ceil(size / np.where(k > 0, k, 1)) * k, size).astype(np.int64)
    start = start - (new_size - size) // 2
    end = start + new_size
    return start, end


class CropForeground(Transform):
    """Crop every key to the bounding box of ``select_fn(data[source_key])`` (any channel).

    ``select_fn`` defaults to ``a > 0``; ``threshold=t`` is a shortcut for
    ``a > t``. ``margin`` voxels are added on each side; with the default
    ``allow_smaller=False`` the box may extend past the volume and that part is
    padded with 0, as MONAI's CropForegroundd. If nothing is foreground the
    volumes are returned uncropped (MONAI would return an empty array).
    """

    def __init__(self, source_key: str = "image", select_fn: Callable | None = None,
                 margin=0, keys: Sequence[str] = DEFAULT_KEYS, threshold: float | None = None,
                 allow_smaller: bool = False, k_divisible=1):
        if select_fn is not None and threshold is not None:
            raise ValueError("give either select_fn or threshold, not both")
        self.source_key = source_key
        self.threshold = threshold
        self.select_fn = select_fn
        self.margin = _triple(margin, "margin")
        if any(m < 0 for m in self.margin):
            raise ValueError(f"margin must be non-negative, got {margin!r}")
        self.keys = tuple(keys)
        self.allow_smaller = bool(allow_smaller)
        self.k_divisible = _triple(k_divisible, "k_divisible")

    def _select(self, a: np.ndarray) -> np.ndarray:
        if self.select_fn is not None:
            return np.asarray(self.select_fn(a), dtype=bool)
        if self.threshold is not None:
            return a > self.threshold
        return a > 0

    def box(self, data: Data) -> tuple[np.ndarray, np.ndarray] | None:
        src = data[self.source_key]
        mask = self._select(src.array).any(axis=0)
        return foreground_box(mask, self.margin, self.allow_smaller, self.k_divisible)

    def __call__(self, data: Data, rng: np.random.Generator | None = None) -> Data:
        if self.source_key not in data or data[self.source_key] is None:
            raise KeyError(f"CropForeground: source key {self.source_key!r} not in data")
        box = self.box(data)
        out = dict(data)
        if box is None:
            return out
        start, end = box
        for k in self.present(data):
            out[k] = crop_or_pad(data[k], start, end - start, pad_value=0)
        return out


def _symmetric_pad_box(shape, target) -> tuple[np.ndarray, np.ndarray]:
    shape = np.asarray(shape, dtype=np.int64)
    target = np.where(np.asarray(target) > 0, target, shape)
    width = np.maximum(target - shape, 0)
    before = width // 2
    return -before, shape + width


class _PadBase(Transform):
    def __init__(self, mode: str = "constant", value: float = 0, label_value: float = 0,
                 keys: Sequence[str] = DEFAULT_KEYS):
        if mode not in _PAD_MODES:
            raise ValueError(f"pad mode must be one of {_PAD_MODES}, got {mode!r}")
        self.mode = mode
        self.value = value
        self.label_value = label_value
        self.keys = tuple(keys)

    def target_shape(self, shape) -> np.ndarray:  # pragma: no cover
        raise NotImplementedError

    def __call__(self, data: Data, rng: np.random.Generator | None = None) -> Data:
        out = dict(data)
        for k in self.present(data):
            vol = data[k]
            start, size = _symmetric_pad_box(vol.spatial_shape, self.target_shape(vol.spatial_shape))
            if np.all(size == vol.spatial_shape):
                out[k] = vol.replace()
                continue
            value = self.label_value if is_label_key(k) else self.value
            out[k] = crop_or_pad(vol, start, size, pad_value=value, mode=self.mode)
        return out


class SpatialPad(_PadBase):
    """Pad symmetrically to at least ``min_size`` (MONAI SpatialPadd: the odd voxel goes at the end).

    Non-positive ``min_size`` entries leave that axis alone. Images are padded
    with ``value``, label keys with ``label_value`` (``mode="constant"``), or
    both by edge replication (``mode="edge"``).
    """

    def __init__(self, min_size=(96, 96, 96), mode: str = "constant", value: float = 0,
                 keys: Sequence[str] = DEFAULT_KEYS, label_value: float = 0):
        super().__init__(mode, value, label_value, keys)
        self.min_size = _triple(min_size, "min_size")

    def target_shape(self, shape):
        return np.asarray(self.min_size)


class DivisiblePad(_PadBase):
    """Pad symmetrically so every spatial size is a multiple of ``k`` (MONAI DivisiblePadd)."""

    def __init__(self, k=16, mode: str = "constant", value: float = 0,
                 keys: Sequence[str] = DEFAULT_KEYS, label_value: float = 0):
        super().__init__(mode, value, label_value, keys)
        self.k = _triple(k, "k")

    def target_shape(self, shape):
        shape = np.asarray(shape)
        k = np.asarray(self.k)
        return np.where(k > 0, -(-shape // np.where(k > 0, k, 1)) * k, shape)


class CenterSpatialCrop(Transform):
    """Crop the centre ``size`` box (MONAI CenterSpatialCropd); axes smaller than ``size`` are kept whole.

    Non-positive ``size`` entries keep that axis. The result is a view.
    """

    def __init__(self, size, keys: Sequence[str] = DEFAULT_KEYS):
        self.size = _triple(size, "size")
        self.keys = tuple(keys)

    def __call__(self, data: Data, rng: np.random.Generator | None = None) -> Data:
        out = dict(data)
        for k in self.present(data):
            vol = data[k]
            shape = np.asarray(vol.spatial_shape)
            roi = np.where(np.asarray(self.size) > 0, self.size, shape)
            start = np.maximum(shape // 2 - roi // 2, 0)
            end = np.minimum(start + roi, shape)
            out[k] = crop_or_pad(vol, start, end - start)
        return out
