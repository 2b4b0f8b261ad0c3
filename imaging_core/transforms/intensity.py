"""Deterministic intensity normalisation (the cached part of the pipeline).

Numerics follow MONAI's ``ScaleIntensityRanged``, ``NormalizeIntensityd`` and
``ScaleIntensityRangePercentilesd``; the z-score's "head" mask (statistics inside
the head, one fixed value outside) has no MONAI equivalent: it is head_zscore.py,
which bundles ship as their own code. Outputs are float32
new arrays: inputs may be read-only memory maps, so nothing is modified in place.
"""
from __future__ import annotations

import warnings
from typing import Sequence

import numpy as np

from ..config import ZScoreRule
from .base import Data, Transform
# the head mask lives in a self-contained module: exported bundles ship it verbatim
from .head_zscore import head_mask, head_zscore, otsu_threshold, zscore_inside_  # noqa: F401 (head_mask, otsu_threshold re-exported)

_ZSCORE = ZScoreRule()  # the defaults live in imaging_core.config


def _float32_copy(a: np.ndarray) -> np.ndarray:
    # always a fresh, writable array so the in-place ops below never touch the input
    return np.array(a, dtype=np.float32, copy=True)


def scale_intensity_range(arr: np.ndarray, a_min: float, a_max: float, b_min: float | None,
                          b_max: float | None, clip: bool) -> np.ndarray:
    """Map ``[a_min, a_max]`` linearly onto ``[b_min, b_max]`` (float32)."""
    out = _float32_copy(arr)
    if a_max - a_min == 0.0:
        warnings.warn("ScaleIntensityRange: a_min == a_max, only shifting", RuntimeWarning,
                      stacklevel=3)
        out -= np.float32(a_min)
        if b_min is not None:
            out += np.float32(b_min)
        return out
    out -= np.float32(a_min)
    out /= np.float32(a_max - a_min)
    if b_min is not None and b_max is not None:
        out *= np.float32(b_max - b_min)
        out += np.float32(b_min)
    if clip and (b_min is not None or b_max is not None):
        np.clip(out, b_min, b_max, out=out)
    return out


class _IntensityBase(Transform):
    """Applies ``_apply(array)`` to every present key (images only by default)."""

    def _apply(self, arr: np.ndarray) -> np.ndarray:  # pragma: no cover
        raise NotImplementedError

    def __call__(self, data: Data, rng: np.random.Generator | None = None) -> Data:
        out = dict(data)
        for k in self.present(data):
            out[k] = data[k].replace(array=self._apply(data[k].array))
        return out


class ScaleIntensityRange(_IntensityBase):
    """CT windowing: ``[a_min, a_max]`` -> ``[b_min, b_max]``, clipped by default."""

    def __init__(self, a_min: float, a_max: float, b_min: float | None = 0.0,
                 b_max: float | None = 1.0, clip: bool = True, keys: Sequence[str] = ("image",)):
        self.a_min = float(a_min)
        self.a_max = float(a_max)
        self.b_min = None if b_min is None else float(b_min)
        self.b_max = None if b_max is None else float(b_max)
        self.clip = bool(clip)
        self.keys = tuple(keys)

    def _apply(self, arr):
        return scale_intensity_range(arr, self.a_min, self.a_max, self.b_min, self.b_max, self.clip)


class NormalizeIntensity(_IntensityBase):
    """Z-score: ``(x - mean) / std`` (population std; a zero std is treated as 1).

    ``mask`` says which voxels give the statistics:
    - "all": every voxel (MONAI ``nonzero=False``);
    - "nonzero": the non-zero voxels, and zero voxels stay zero (MONAI
      ``nonzero=True``). A zero-filled background then sits at the tissue mean,
      a noisy one well below it: two sites' air looks different to the model;
    - "head": the voxels of ``head_mask``; every voxel outside it is set to
      ``outside``, so zero-filled and noisy air end at the same value.
    ``channel_wise`` computes them per channel.
    """

    def __init__(self, mask: str = _ZSCORE.mask, channel_wise: bool = True, outside: float = _ZSCORE.outside,
                 keys: Sequence[str] = ("image",)):
        if mask not in ("nonzero", "all", "head"):
            raise ValueError(f"z-score mask must be 'nonzero', 'all' or 'head', got {mask!r}")
        self.mask = mask
        self.channel_wise = bool(channel_wise)
        if mask == "head":  # only then part of the repr (the cache key)
            self.outside = float(outside)
        self.keys = tuple(keys)

    def _normalize(self, x: np.ndarray) -> None:
        """In place on the float32 copy ``x``."""
        zscore_inside_(x, None if self.mask == "all" else x != 0)

    def _apply(self, arr):
        if self.mask == "head":  # one implementation, shared with exported bundles
            return head_zscore(arr, self.outside)
        out = _float32_copy(arr)
        if self.channel_wise:
            for c in range(out.shape[0]):
                self._normalize(out[c])
        else:
            self._normalize(out)
        return out


class ScaleIntensityRangePercentiles(_IntensityBase):
    """Map the ``lower``/``upper`` percentiles (0-100, linear interpolation) onto ``[b_min, b_max]``."""

    def __init__(self, lower: float, upper: float, b_min: float | None = 0.0,
                 b_max: float | None = 1.0, clip: bool = True, relative: bool = False,
                 channel_wise: bool = False, keys: Sequence[str] = ("image",)):
        if not (0.0 <= lower <= 100.0 and 0.0 <= upper <= 100.0):
            raise ValueError(f"percentiles must be in [0, 100], got {lower}, {upper}")
        if relative and (b_min is None or b_max is None):
            raise ValueError("relative=True needs b_min and b_max")
        self.lower = float(lower)
        self.upper = float(upper)
        self.b_min = None if b_min is None else float(b_min)
        self.b_max = None if b_max is None else float(b_max)
        self.clip = bool(clip)
        self.relative = bool(relative)
        self.channel_wise = bool(channel_wise)
        self.keys = tuple(keys)

    def _scale(self, x: np.ndarray) -> np.ndarray:
        a_min, a_max = (float(v) for v in np.percentile(x, [self.lower, self.upper]))
        b_min, b_max = self.b_min, self.b_max
        if self.relative:
            b_min = (self.b_max - self.b_min) * self.lower / 100.0 + self.b_min
            b_max = (self.b_max - self.b_min) * self.upper / 100.0 + self.b_min
        return scale_intensity_range(x, a_min, a_max, b_min, b_max, self.clip)

    def _apply(self, arr):
        arr = np.asarray(arr)
        if self.channel_wise:
            return np.stack([self._scale(arr[c]) for c in range(arr.shape[0])])
        return self._scale(arr)
