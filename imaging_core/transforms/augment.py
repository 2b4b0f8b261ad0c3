"""Random augmentation of training patches.

Spatial transforms draw once per call and apply the same draw to every key
(images linear, label keys nearest), updating the affine so each output voxel
still carries the world position it was sampled from. Intensity transforms
touch image keys only. All randomness comes from the ``rng`` argument, so a
seeded pipeline is reproducible; input arrays (often read-only memory maps)
are never modified.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

from .base import DEFAULT_KEYS, Data, RandomTransform, is_label_key


def _triple_f(v, name: str) -> tuple[float, float, float]:
    a = np.atleast_1d(np.asarray(v, dtype=np.float64)).ravel()
    if a.size == 1:
        a = np.repeat(a, 3)
    if a.size != 3:
        raise ValueError(f"{name} must be a number or 3 numbers, got {v!r}")
    return tuple(float(x) for x in a)


def _sym_range(v, name: str) -> tuple[float, float]:
    """A number ``v`` means ``(-|v|, |v|)``; a pair is taken as (low, high)."""
    a = np.atleast_1d(np.asarray(v, dtype=np.float64)).ravel()
    if a.size == 1:
        return (-abs(float(a[0])), abs(float(a[0])))
    if a.size != 2:
        raise ValueError(f"{name} must be a number or a (low, high) pair, got {v!r}")
    return (float(a.min()), float(a.max()))


def _spatial_keys(t, data: Data) -> list[str]:
    keys = t.present(data)
    shapes = {data[k].spatial_shape for k in keys}
    if len(shapes) > 1:
        raise ValueError(f"{type(t).__name__}: keys {keys} have different spatial shapes {shapes}")
    return keys


# ----------------------------------------------------------------------------
# spatial
# ----------------------------------------------------------------------------
def flip_affine(affine: np.ndarray, axis: int, n: int) -> np.ndarray:
    """Affine after reversing spatial ``axis`` (length ``n``): new voxel i is old voxel n-1-i."""
    f = np.eye(4)
    f[axis, axis] = -1.0
    f[axis, 3] = n - 1.0
    return np.asarray(affine, dtype=np.float64) @ f


class RandFlip(RandomTransform):
    """Flip each of ``spatial_axes`` independently with probability ``prob``."""

    def __init__(self, prob: float = 0.5, spatial_axes: Sequence[int] = (0, 1, 2),
                 keys: Sequence[str] = DEFAULT_KEYS):
        self.prob = float(prob)
        self.spatial_axes = tuple(int(a) for a in spatial_axes)
        if any(a not in (0, 1, 2) for a in self.spatial_axes):
            raise ValueError(f"spatial_axes must be within (0, 1, 2), got {spatial_axes!r}")
        self.keys = tuple(keys)

    def __call__(self, data: Data, rng: np.random.Generator | None = None) -> Data:
        rng = rng if rng is not None else np.random.default_rng()
        # one draw per axis, always, so later draws do not depend on earlier outcomes
        draws = rng.random(len(self.spatial_axes))
        axes = tuple(a for a, u in zip(self.spatial_axes, draws) if u < self.prob)
        return self.flip(data, axes) if axes else data

    def apply(self, data: Data, rng: np.random.Generator) -> Data:
        return self(data, rng)

    def flip(self, data: Data, axes: Sequence[int]) -> Data:
        out = dict(data)
        for k in _spatial_keys(self, data):
            vol = data[k]
            aff = vol.affine
            for a in axes:
                aff = flip_affine(aff, a, vol.spatial_shape[a])
            arr = np.ascontiguousarray(np.flip(vol.array, axis=tuple(a + 1 for a in axes)))
            out[k] = vol.replace(array=arr, affine=aff)
        return out


def rot90_index_map(k: int, axes: tuple[int, int], n: int) -> np.ndarray:
    """4x4 map from voxel index after ``np.rot90(k, axes)`` to the voxel index before.

    Both axes have length ``n``. One quarter turn reads ``new[i] = old[F(S(i))]``
    (S swaps the two axes, F reverses the second), so k turns are that map to the power k.
    """
    a, b = axes
    s = np.eye(4)
    s[[a, b]] = s[[b, a]]
    f = np.eye(4)
    f[b, b] = -1.0
    f[b, 3] = n - 1.0
    return np.linalg.matrix_power(f @ s, k % 4)


class RandRotate90(RandomTransform):
    """Rotate by k*90 degrees (k in 1..max_k) in one plane picked from ``planes``.

    Only planes whose two axes have equal length are candidates (the shape must
    not change, patches are batched); with none the item is returned unchanged.
    """

    def __init__(self, prob: float = 0.25, planes: Sequence[Sequence[int]] = ((0, 1), (0, 2), (1, 2)),
                 max_k: int = 3, keys: Sequence[str] = DEFAULT_KEYS):
        self.prob = float(prob)
        self.planes = tuple(tuple(int(a) for a in p) for p in planes)
        for p in self.planes:
            if len(p) != 2 or p[0] == p[1] or any(a not in (0, 1, 2) for a in p):
                raise ValueError(f"planes must be pairs of distinct axes in (0, 1, 2), got {planes!r}")
        if not 1 <= int(max_k) <= 3:
            raise ValueError(f"max_k must be 1, 2 or 3, got {max_k!r}")
        self.max_k = int(max_k)
        self.keys = tuple(keys)

    def apply(self, data: Data, rng: np.random.Generator) -> Data:
        keys = _spatial_keys(self, data)
        if not keys:
            return data
        shape = data[keys[0]].spatial_shape
        planes = [p for p in self.planes if shape[p[0]] == shape[p[1]]]
        if not planes:
            return data
        plane = planes[int(rng.integers(len(planes)))]
        k = int(rng.integers(1, self.max_k + 1))
        return self.rotate(data, k, plane)

    def rotate(self, data: Data, k: int, plane: tuple[int, int]) -> Data:
        out = dict(data)
        for key in _spatial_keys(self, data):
            vol = data[key]
            t = rot90_index_map(k, plane, vol.spatial_shape[plane[0]])
            arr = np.ascontiguousarray(np.rot90(vol.array, k, axes=(plane[0] + 1, plane[1] + 1)))
            out[key] = vol.replace(array=arr, affine=vol.affine @ t)
        return out


def _rotation(angles) -> np.ndarray:
    ax, ay, az = angles
    cx, sx, cy, sy, cz, sz = np.cos(ax), np.sin(ax), np.cos(ay), np.sin(ay), np.cos(az), np.sin(az)
    rx = np.array([[1, 0, 0], [0, cx, -sx], [0, sx, cx]])
    ry = np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
    rz = np.array([[cz, -sz, 0], [sz, cz, 0], [0, 0, 1]])
    return rz @ ry @ rx


def affine_index_map(shape: Sequence[int], angles=(0.0, 0.0, 0.0), scales=(1.0, 1.0, 1.0)) -> np.ndarray:
    """4x4 map from output voxel index to input voxel index: rotate and scale about the centre.

    A scale above 1 samples a larger region (content shrinks), as in MONAI's RandAffine.
    """
    m = _rotation(angles) @ np.diag(np.asarray(scales, dtype=np.float64))
    c = (np.asarray(shape, dtype=np.float64) - 1.0) / 2.0
    t = np.eye(4)
    t[:3, :3] = m
    t[:3, 3] = c - m @ c
    return t


def warp_array(arr: np.ndarray, index_map: np.ndarray, mode: str = "linear",
               padding_mode: str = "border") -> np.ndarray:
    """Sample channel-first ``arr`` at ``index_map @ (i, j, k, 1)`` for every output voxel (same shape).

    ``mode="linear"`` returns float32; ``"nearest"`` keeps the dtype (labels).
    """
    shape = np.asarray(arr.shape[1:], dtype=np.float64)
    m = index_map[:3, :3]
    off = index_map[:3, 3]
    # normalised coords (align_corners=True): p = h*u + h with h=(n-1)/2, so the
    # index map becomes u' = H^-1 M H u + H^-1 (M h + off - h)
    h = np.where(shape > 1, (shape - 1.0) / 2.0, 1.0)
    a = (m * h[None, :]) / h[:, None]
    b = (m @ h + off - h) / h
    # torch orders grid coordinates (W, H, D) = our (Z, Y, X): reverse both sides
    theta = np.zeros((3, 4))
    theta[:, :3] = a[::-1, ::-1]
    theta[:, 3] = b[::-1]
    src = np.ascontiguousarray(arr, dtype=np.float32)
    if not src.flags.writeable:  # read-only memmap: torch wants a writable buffer
        src = src.copy()
    inp = torch.from_numpy(src)[None]
    grid = torch.nn.functional.affine_grid(torch.from_numpy(theta).float()[None], list(inp.shape),
                                           align_corners=True)
    res = torch.nn.functional.grid_sample(inp, grid, mode="bilinear" if mode == "linear" else "nearest",
                                          padding_mode=padding_mode, align_corners=True)[0].numpy()
    if mode == "linear":
        return res
    if np.issubdtype(arr.dtype, np.integer):
        return np.rint(res).astype(arr.dtype)
    return res.astype(arr.dtype)


class RandAffine(RandomTransform):
    """Small rotation and scaling about the patch centre; the output keeps the input shape.

    Angles (radians) are drawn from ``U(-r, r)`` per axis, scales from
    ``1 + U(-s, s)``. Images are trilinear, label keys nearest neighbour;
    outside samples follow ``padding_mode`` ("border", "zeros" or "reflection").
    The affine becomes ``affine @ index_map``: each voxel keeps the world point it came from.
    """

    def __init__(self, prob: float = 0.2, rotate_range=(0.0, 0.0, 0.0), scale_range=(0.0, 0.0, 0.0),
                 padding_mode: str = "border", keys: Sequence[str] = DEFAULT_KEYS):
        if padding_mode not in ("border", "zeros", "reflection"):
            raise ValueError(f"padding_mode must be border, zeros or reflection, got {padding_mode!r}")
        self.prob = float(prob)
        self.rotate_range = _triple_f(rotate_range, "rotate_range")
        self.scale_range = _triple_f(scale_range, "scale_range")
        self.padding_mode = padding_mode
        self.keys = tuple(keys)

    def apply(self, data: Data, rng: np.random.Generator) -> Data:
        r = np.abs(self.rotate_range)
        s = np.abs(self.scale_range)
        angles = rng.uniform(-r, r)
        scales = 1.0 + rng.uniform(-s, s)
        return self.warp(data, angles, scales)

    def warp(self, data: Data, angles, scales) -> Data:
        out = dict(data)
        for k in _spatial_keys(self, data):
            vol = data[k]
            t = affine_index_map(vol.spatial_shape, angles, scales)
            mode = "nearest" if is_label_key(k) else "linear"
            arr = warp_array(vol.array, t, mode, self.padding_mode)
            out[k] = vol.replace(array=arr, affine=vol.affine @ t)
        return out


# ----------------------------------------------------------------------------
# intensity
# ----------------------------------------------------------------------------
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


def adjust_contrast(arr: np.ndarray, gamma: float) -> np.ndarray:
    """MONAI's gamma: ``((x - min) / (range + 1e-7)) ** gamma * range + min`` over the whole array."""
    x = np.asarray(arr, dtype=np.float32)
    lo = x.min()
    rng_ = x.max() - lo
    out = np.subtract(x, lo, dtype=np.float32)
    out /= np.float32(float(rng_) + 1e-7)
    np.power(out, np.float32(gamma), out=out)
    out *= rng_
    out += lo
    return out


class RandAdjustContrast(_RandIntensity):
    """Gamma contrast with ``gamma ~ U(lo, hi)``; a single number g means ``(0.5, g)`` (MONAI)."""

    def __init__(self, prob: float = 0.1, gamma=(0.5, 4.5), keys: Sequence[str] = ("image",)):
        if np.ndim(gamma) == 0:
            if gamma <= 0.5:
                raise ValueError(f"a single gamma must be > 0.5 (range (0.5, gamma)), got {gamma!r}")
            gamma = (0.5, float(gamma))
        if len(gamma) != 2 or min(gamma) <= 0:
            raise ValueError(f"gamma must be a positive (low, high) pair, got {gamma!r}")
        self.prob = float(prob)
        self.gamma = (float(min(gamma)), float(max(gamma)))
        self.keys = tuple(keys)

    def _draw(self, rng):
        return float(rng.uniform(*self.gamma))

    def _apply(self, arr, g, rng):
        return adjust_contrast(arr, g)


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
