"""Spatial augmentation of training patches: mirroring, quarter turns, a small
rotation/scaling (RandAffine) and the resampling helpers augment_warp builds on.

Each transform draws once per call and applies the same draw to every key
(images linear, label keys nearest), updating the affine so each output voxel
still carries the world position it was sampled from. All
randomness comes from the ``rng`` argument, so a seeded pipeline is
reproducible; input arrays (often read-only memory maps) are never modified.
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


def _pair(v, name: str, positive: bool = False) -> tuple[float, float]:
    a = np.atleast_1d(np.asarray(v, dtype=np.float64)).ravel()
    if a.size != 2 or a[0] > a[1] or (positive and a[0] <= 0) or a[0] < 0:
        raise ValueError(f"{name} must be a (low, high) pair with 0 {'<' if positive else '<='} low <= high, got {v!r}")
    return (float(a[0]), float(a[1]))


def _spatial_keys(t, data: Data) -> list[str]:
    keys = t.present(data)
    shapes = {data[k].spatial_shape for k in keys}
    if len(shapes) > 1:
        raise ValueError(f"{type(t).__name__}: keys {keys} have different spatial shapes {shapes}")
    return keys


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
    """Rotation about axes 0, 1, 2, composed ``rx @ ry @ rz`` as MONAI's create_rotate
    (so the same angles give MONAI's Affine output)."""
    ax, ay, az = angles
    cx, sx, cy, sy, cz, sz = np.cos(ax), np.sin(ax), np.cos(ay), np.sin(ay), np.cos(az), np.sin(az)
    rx = np.array([[1, 0, 0], [0, cx, -sx], [0, sx, cx]])
    ry = np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
    rz = np.array([[cz, -sz, 0], [sz, cz, 0], [0, 0, 1]])
    return rx @ ry @ rz


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


def sampling_grid(shape: Sequence[int], index_map: np.ndarray, displacement: np.ndarray | None = None,
                  in_shape: Sequence[int] | None = None) -> torch.Tensor:
    """The grid_sample grid (1, X, Y, Z, 3) of output ``shape`` that reads input voxel
    ``index_map @ (i, j, k, 1) + displacement[:, i, j, k]`` into output voxel (i, j, k);
    the input has ``in_shape`` (default: ``shape``)."""
    n_out = np.asarray(shape, dtype=np.float64)
    n_in = n_out if in_shape is None else np.asarray(in_shape, dtype=np.float64)
    m = index_map[:3, :3]
    off = index_map[:3, 3]
    # normalised coords (align_corners=True): p = g*u + g with g=(n_out-1)/2 and
    # q = h*u' + h with h=(n_in-1)/2, so u' = H^-1 M G u + H^-1 (M g + off - h)
    g = np.where(n_out > 1, (n_out - 1.0) / 2.0, 1.0)
    h = np.where(n_in > 1, (n_in - 1.0) / 2.0, 1.0)
    a = (m * g[None, :]) / h[:, None]
    b = (m @ g + off - h) / h
    # torch orders grid coordinates (W, H, D) = our (Z, Y, X): reverse both sides
    theta = np.zeros((3, 4))
    theta[:, :3] = a[::-1, ::-1]
    theta[:, 3] = b[::-1]
    grid = torch.nn.functional.affine_grid(torch.from_numpy(theta).float()[None], [1, 1, *(int(x) for x in shape)],
                                           align_corners=True)
    if displacement is not None:
        # voxel offsets -> normalised offsets, axis a lands in grid channel 2 - a
        d = torch.from_numpy(np.ascontiguousarray(displacement, dtype=np.float32))
        d = d / torch.from_numpy(h.astype(np.float32))[:, None, None, None]
        grid += d.flip(0).permute(1, 2, 3, 0)[None]
    return grid


def sample_grid(arr: np.ndarray, grid: torch.Tensor, mode: str = "linear", padding_mode: str = "border") -> np.ndarray:
    """Resample channel-first ``arr`` on ``grid`` (from ``sampling_grid``).
    ``mode="linear"`` returns float32; ``"nearest"`` keeps the dtype (labels)."""
    src = np.ascontiguousarray(arr, dtype=np.float32)
    if not src.flags.writeable:  # read-only memmap: torch wants a writable buffer
        src = src.copy()
    res = torch.nn.functional.grid_sample(torch.from_numpy(src)[None], grid,
                                          mode="bilinear" if mode == "linear" else "nearest",
                                          padding_mode=padding_mode, align_corners=True)[0].numpy()
    if mode == "linear":
        return res
    if np.issubdtype(arr.dtype, np.integer):
        return np.rint(res).astype(arr.dtype)
    return res.astype(arr.dtype)


def warp_array(arr: np.ndarray, index_map: np.ndarray, mode: str = "linear",
               padding_mode: str = "border", displacement: np.ndarray | None = None) -> np.ndarray:
    """Sample channel-first ``arr`` at ``index_map @ (i, j, k, 1) + displacement[:, i, j, k]``
    for every output voxel (same shape): one resampling however many warps are combined.

    ``displacement`` is (3, X, Y, Z) in input voxels, or None. ``mode="linear"``
    returns float32; ``"nearest"`` keeps the dtype (labels).
    """
    return sample_grid(arr, sampling_grid(arr.shape[1:], index_map, displacement), mode, padding_mode)


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




def draw_around_one(rng: np.random.Generator, low: float, high: float) -> float:
    """nnU-Net's draw for factors around 1: half the time from (low, 1), else from (1, high),
    so shrinking and growing are equally likely. Always two draws (stable RNG stream)."""
    below, u = rng.random(), rng.random()
    if low < 1.0 < high:
        lo, hi = (low, 1.0) if below < 0.5 else (1.0, high)
    else:
        lo, hi = low, high
    return float(lo + (hi - lo) * u)
