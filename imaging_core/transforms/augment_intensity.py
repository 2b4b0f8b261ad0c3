"""Intensity augmentation of training patches (image keys only): nnU-Net v2's set
(noise, blur, brightness, contrast, low resolution, gamma also inverted) plus
an additive shift.

One draw per call, applied to every present image key; all randomness comes
from ``rng`` (reproducible per seed); inputs are never modified. Where MONAI
has the same transform the maths follows it (tests compare them).
"""
from __future__ import annotations

import math
from typing import Sequence

import numpy as np
import torch

from .augment_spatial import _pair, draw_around_one
from .base import Data, RandomTransform


def _sym_range(v, name: str) -> tuple[float, float]:
    """A number ``v`` means ``(-|v|, |v|)``; a pair is taken as (low, high)."""
    a = np.atleast_1d(np.asarray(v, dtype=np.float64)).ravel()
    if a.size == 1:
        return (-abs(float(a[0])), abs(float(a[0])))
    if a.size != 2:
        raise ValueError(f"{name} must be a number or a (low, high) pair, got {v!r}")
    return (float(a.min()), float(a.max()))


class _RandIntensity(RandomTransform):
    """One draw per call, applied to every present image key."""

    def _draw(self, rng: np.random.Generator):  # pragma: no cover
        raise NotImplementedError

    def _apply(self, arr: np.ndarray, draw, rng: np.random.Generator) -> np.ndarray:  # pragma: no cover
        raise NotImplementedError

    def apply(self, data: Data, rng: np.random.Generator) -> Data:
        draw = self._draw(rng)
        out = dict(data)
        for k in self.present(data):
            out[k] = data[k].replace(array=self._apply(np.asarray(data[k].array), draw, rng))
        return out


class RandScaleIntensity(_RandIntensity):
    """``x * (1 + f)``, ``f ~ U(-factors, factors)`` (or ``U(lo, hi)`` for a pair)."""

    def __init__(self, prob: float = 0.1, factors=0.1, keys: Sequence[str] = ("image",)):
        self.prob = float(prob)
        self.factors = _sym_range(factors, "factors")
        self.keys = tuple(keys)

    def _draw(self, rng):
        return float(rng.uniform(*self.factors))

    def _apply(self, arr, f, rng):
        return np.multiply(arr, np.float32(1.0 + f), dtype=np.float32)


class RandShiftIntensity(_RandIntensity):
    """``x + o``, ``o ~ U(-offsets, offsets)`` (or ``U(lo, hi)`` for a pair)."""

    def __init__(self, prob: float = 0.1, offsets=0.1, keys: Sequence[str] = ("image",)):
        self.prob = float(prob)
        self.offsets = _sym_range(offsets, "offsets")
        self.keys = tuple(keys)

    def _draw(self, rng):
        return float(rng.uniform(*self.offsets))

    def _apply(self, arr, o, rng):
        return np.add(arr, np.float32(o), dtype=np.float32)


def adjust_contrast(arr: np.ndarray, gamma: float, invert_image: bool = False,
                    retain_stats: bool = False) -> np.ndarray:
    """MONAI's (and nnU-Net's) gamma: ``((x - min) / (range + 1e-7)) ** gamma * range + min``
    over the whole array; ``invert_image`` applies it to ``-x`` (bends the bright end),
    ``retain_stats`` restores the input's mean and standard deviation afterwards."""
    x = np.asarray(arr, dtype=np.float32)
    if invert_image:
        x = np.negative(x)
    if retain_stats:
        mn, sd = float(x.mean(dtype=np.float64)), float(x.std(dtype=np.float64))
    lo = x.min()
    rng_ = x.max() - lo
    out = np.subtract(x, lo, dtype=np.float32)
    out /= np.float32(float(rng_) + 1e-7)
    np.power(out, np.float32(gamma), out=out)
    out *= rng_
    out += lo
    if retain_stats:
        out -= np.float32(out.mean(dtype=np.float64))
        out *= np.float32(sd / (float(out.std(dtype=np.float64)) + 1e-8))
        out += np.float32(mn)
    if invert_image:
        np.negative(out, out=out)
    return out


class RandAdjustContrast(_RandIntensity):
    """Gamma contrast, ``gamma`` from ``(lo, hi)``; a single number g means ``(0.5, g)`` (MONAI).

    ``around_one`` draws as nnU-Net does (half below 1, half above); otherwise
    uniform (MONAI). ``invert_image`` / ``retain_stats`` as in ``adjust_contrast``.
    """

    def __init__(self, prob: float = 0.1, gamma=(0.5, 4.5), invert_image: bool = False,
                 retain_stats: bool = False, around_one: bool = False, keys: Sequence[str] = ("image",)):
        if np.ndim(gamma) == 0:
            if gamma <= 0.5:
                raise ValueError(f"a single gamma must be > 0.5 (range (0.5, gamma)), got {gamma!r}")
            gamma = (0.5, float(gamma))
        if len(gamma) != 2 or min(gamma) <= 0:
            raise ValueError(f"gamma must be a positive (low, high) pair, got {gamma!r}")
        self.prob = float(prob)
        self.gamma = (float(min(gamma)), float(max(gamma)))
        self.invert_image = bool(invert_image)
        self.retain_stats = bool(retain_stats)
        self.around_one = bool(around_one)
        self.keys = tuple(keys)

    def _draw(self, rng):
        return draw_around_one(rng, *self.gamma) if self.around_one else float(rng.uniform(*self.gamma))

    def _apply(self, arr, g, rng):
        return adjust_contrast(arr, g, self.invert_image, self.retain_stats)


def scale_about_mean(arr: np.ndarray, factor: float, preserve_range: bool = True) -> np.ndarray:
    """nnU-Net's contrast: ``(x - mean) * factor + mean``, clipped to the input's range
    (MONAI's ScaleIntensityFixedMean with factor - 1, fixed_mean and preserve_range)."""
    x = np.asarray(arr, dtype=np.float32)
    mn = np.float32(x.mean(dtype=np.float64))
    out = np.subtract(x, mn, dtype=np.float32)
    out *= np.float32(factor)
    out += mn
    if preserve_range:
        np.clip(out, x.min(), x.max(), out=out)
    return out


class RandContrast(_RandIntensity):
    """Contrast about the mean, factor drawn around one from ``factors``, range preserved."""

    def __init__(self, prob: float = 0.15, factors=(0.75, 1.25), preserve_range: bool = True,
                 keys: Sequence[str] = ("image",)):
        self.prob = float(prob)
        self.factors = _pair(factors, "factors", positive=True)
        self.preserve_range = bool(preserve_range)
        self.keys = tuple(keys)

    def _draw(self, rng):
        return draw_around_one(rng, *self.factors)

    def _apply(self, arr, f, rng):
        return scale_about_mean(arr, f, self.preserve_range)


def gaussian_kernel_1d(sigma: float, truncated: float = 4.0) -> np.ndarray:
    """The Gaussian integrated over each voxel (the "erf" kernel MONAI's GaussianFilter
    uses), ``truncated`` sigmas each side, normalised so a flat image stays flat."""
    tail = int(max(sigma * truncated, 0.5) + 0.5)
    x = np.arange(-tail, tail + 1, dtype=np.float64)
    t = 1.0 / (np.sqrt(2.0) * sigma)
    k = np.clip([0.5 * (math.erf(t * (v + 0.5)) - math.erf(t * (v - 0.5))) for v in x], 0.0, None)
    return (k / k.sum()).astype(np.float32)


def gaussian_smooth(arr: np.ndarray, sigmas: Sequence[float]) -> np.ndarray:
    """Separable Gaussian blur of channel-first ``arr`` (sigma per spatial axis, voxels).

    Edges replicate the border voxel (MONAI pads zeros, which darkens a patch's
    rim; inside, the two agree)."""
    x = torch.from_numpy(np.ascontiguousarray(arr, dtype=np.float32).copy())[None]  # 1, C, X, Y, Z
    c = x.shape[1]
    for axis, sigma in enumerate(sigmas):
        if sigma <= 0:
            continue
        k = torch.from_numpy(gaussian_kernel_1d(float(sigma)))
        r = (k.numel() - 1) // 2
        shape = [1, 1, 1]
        shape[axis] = k.numel()
        pad = [0, 0, 0, 0, 0, 0]
        pad[2 * (2 - axis)] = pad[2 * (2 - axis) + 1] = r  # F.pad lists the last axis first
        x = torch.nn.functional.pad(x, pad, mode="replicate")
        x = torch.nn.functional.conv3d(x, k.reshape(1, 1, *shape).repeat(c, 1, 1, 1, 1), groups=c)
    return x[0].numpy()


class RandGaussianSmooth(_RandIntensity):
    """Gaussian blur, sigma drawn per axis from ``sigma`` (voxels; nnU-Net: (0.5, 1.0),
    axes independent; MONAI's RandGaussianSmooth draws the same way)."""

    def __init__(self, prob: float = 0.1, sigma=(0.5, 1.0), keys: Sequence[str] = ("image",)):
        self.prob = float(prob)
        self.sigma = _pair(sigma, "sigma")
        self.keys = tuple(keys)

    def _draw(self, rng):
        return tuple(float(s) for s in rng.uniform(*self.sigma, size=3))

    def _apply(self, arr, sigmas, rng):
        return gaussian_smooth(arr, sigmas)


def simulate_low_resolution(arr: np.ndarray, zoom: float) -> np.ndarray:
    """Down-sample by ``zoom`` (nearest), back up to the shape (trilinear): MONAI's
    SimulateLowResolution and nnU-Net's SimulateLowResolutionTransform."""
    x = torch.from_numpy(np.ascontiguousarray(arr, dtype=np.float32).copy())[None]
    shape = tuple(arr.shape[1:])
    small = tuple(max(1, int(np.round(n * zoom))) for n in shape)
    x = torch.nn.functional.interpolate(x, size=small, mode="nearest")
    return torch.nn.functional.interpolate(x, size=shape, mode="trilinear", align_corners=False)[0].numpy()


class RandSimulateLowResolution(_RandIntensity):
    """Lose detail as a coarser scanner would: ``zoom ~ U(zoom_range)``, same for every axis."""

    def __init__(self, prob: float = 0.125, zoom_range=(0.5, 1.0), keys: Sequence[str] = ("image",)):
        self.prob = float(prob)
        self.zoom_range = _pair(zoom_range, "zoom_range", positive=True)
        if self.zoom_range[1] > 1.0:
            raise ValueError(f"zoom_range must lie within (0, 1], got {zoom_range!r}")
        self.keys = tuple(keys)

    def _draw(self, rng):
        return float(rng.uniform(*self.zoom_range))

    def _apply(self, arr, zoom, rng):
        return simulate_low_resolution(arr, zoom)


class RandGaussianNoise(_RandIntensity):
    """Add ``N(mean, sigma)`` noise; ``sigma ~ U(0, std)`` when ``sample_std`` (MONAI's default), else ``std``."""

    def __init__(self, prob: float = 0.1, std: float = 0.1, mean: float = 0.0, sample_std: bool = True,
                 keys: Sequence[str] = ("image",)):
        if std < 0:
            raise ValueError(f"std must be non-negative, got {std!r}")
        self.prob = float(prob)
        self.std = float(std)
        self.mean = float(mean)
        self.sample_std = bool(sample_std)
        self.keys = tuple(keys)

    def _draw(self, rng):
        return float(rng.uniform(0.0, self.std)) if self.sample_std else self.std

    def _apply(self, arr, sigma, rng):
        noise = rng.standard_normal(arr.shape, dtype=np.float32)
        noise *= np.float32(sigma)
        noise += np.float32(self.mean)
        noise += arr
        return noise
