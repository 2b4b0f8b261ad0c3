"""Resampling: ``Spacing`` (to a target voxel size) and general resample-to-grid.

Output grid semantics follow MONAI's ``Spacingd`` defaults (diagonal=False,
align_corners=False, scale_extent=False, padding_mode="border"): the new
affine keeps the input's direction cosines and only rescales its columns, and
the output grid starts at the input's first voxel. The map from output voxel
index to input voxel index is therefore a per-axis scale + offset, so the
trilinear interpolation is done *separably*: three 1D gathers + lerps, which
is several times faster than a 3D grid sample. Labels use nearest neighbour
(index gathers, dtype preserved). Out-of-grid samples take the border value
(MONAI's default ``padding_mode="border"``).

``resample_to_grid`` handles any target affine (oblique included) and is what
``to_original_space`` uses to write predictions back into the input's space.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

from ..errors import ImagingError
from ..geometry import spacing_from_affine
from .base import DEFAULT_KEYS, Data, Transform, is_label_key

# MONAI's tolerance: an input spacing within this of the target is kept as is.
AFFINE_TOL = 1e-3
# The most voxels one resampled channel may have (1 GiB as float32): a target spacing
# much finer than the image's (a plan or table asking 0.25 mm of a 1 mm scan) would
# otherwise allocate until the site runs out of memory; now it is one error for the case.
MAX_OUTPUT_VOXELS = 1 << 28
# Off-diagonal size (in input voxels per output voxel) below which the index
# mapping is treated as axis aligned.
_SEPARABLE_TOL = 1e-6


# ----------------------------------------------------------------------------
# output grid (MONAI Spacing semantics)
# ----------------------------------------------------------------------------
def _zoom_affine(affine: np.ndarray, spacing: np.ndarray) -> np.ndarray:
    """Keep the rotation part of ``affine`` (shear removed), set column norms to ``spacing``.

    Polar-free decomposition M = R @ U with U upper triangular with positive
    diagonal (U from the Cholesky factor of M^T M); the new 3x3 is R @ diag(spacing).
    Translation is zero.
    """
    m = affine[:3, :3]
    u = np.linalg.cholesky(m.T @ m).T
    rot = m @ np.linalg.inv(u)
    new = np.eye(4)
    new[:3, :3] = rot * (np.sign(np.diag(u)) * np.abs(spacing))[None, :]
    return new


def spacing_grid(affine: np.ndarray, spatial_shape: Sequence[int],
                 pixdim: Sequence[float]) -> tuple[np.ndarray, tuple[int, int, int]]:
    """The output affine and spatial shape MONAI's ``Spacing(pixdim)`` would produce."""
    affine = np.asarray(affine, dtype=np.float64)
    shape = np.asarray(spatial_shape, dtype=np.float64)
    orig = spacing_from_affine(affine)
    pd = np.asarray(pixdim, dtype=np.float64).ravel()
    if pd.size == 1:
        pd = np.repeat(pd, 3)
    elif pd.size < 3:
        pd = np.append(pd, [pd[-1]] * (3 - pd.size))
    pd = pd[:3].copy()
    # non-positive target: keep the input spacing; near-equal: keep the input spacing
    pd = np.where(pd <= 0, orig, pd)
    pd = np.where(np.abs(orig - pd) <= AFFINE_TOL, orig, pd)

    new = _zoom_affine(affine, pd)
    # corners of the input voxel-centre box, in output index space (zero translation)
    corners = np.array(np.meshgrid(*[(0.0, n - 1.0) for n in shape], indexing="ij")).reshape(3, -1)
    corners = np.vstack([corners, np.ones((1, corners.shape[1]))])
    c_out = np.linalg.solve(new, affine) @ corners
    c_world = affine @ corners
    dist = c_out[:3]
    out_shape = np.round(np.ptp(dist, axis=1) + 1.0)
    offset = None
    for i in range(dist.shape[1]):
        if np.all(np.abs(np.min(dist - dist[:, i:i + 1], axis=1)) <= 1e-8):
            offset = c_world[:3, i]
            break
    if offset is None:  # centre-align the grids
        offset = affine[:3, :3] @ (shape / 2.0) + affine[:3, 3] - new[:3, :3] @ (out_shape / 2.0)
    new[:3, 3] = offset
    return new, tuple(int(s) for s in out_shape)


# ----------------------------------------------------------------------------
# separable kernels
# ----------------------------------------------------------------------------
def _axis_aligned(xform: np.ndarray) -> bool:
    off = xform[:3, :3] - np.diag(np.diag(xform[:3, :3]))
    return bool(np.max(np.abs(off)) <= _SEPARABLE_TOL)


def _coords_1d(scale: float, offset: float, n_out: int, n_in: int) -> np.ndarray:
    """Input coordinates of output indices 0..n_out-1, clamped to the border."""
    c = scale * np.arange(n_out, dtype=np.float64) + offset
    return np.clip(c, 0.0, n_in - 1.0)


def _linear_1d(c: np.ndarray, n_in: int):
    i0 = np.floor(c).astype(np.int64)
    i0 = np.clip(i0, 0, max(n_in - 2, 0))
    i1 = np.minimum(i0 + 1, n_in - 1)
    w = c - i0
    return i0, i1, w


def _nearest_1d(c: np.ndarray, n_in: int) -> np.ndarray:
    return np.clip(np.rint(c), 0, n_in - 1).astype(np.int64)


# Every buffer below is allocated by numpy and torch writes into it (out=, copy_):
# numpy asks for transparent huge pages on big arrays, torch's allocator does not,
# and first-touch page faults on fresh torch buffers were most of the gather and
# convert time here (an int16->float32 conversion of 4.5M voxels: 7 ms vs 0.6 ms).
def _lerp_axis(a: np.ndarray, axis: int, i0, i1, w, dtype) -> np.ndarray:
    """Linear interpolation along ``axis``: a[i0] + w * (a[i1] - a[i0]) via torch.lerp.

    np.take for the gathers: along the innermost axis torch's index_select was 4x slower.
    """
    shape = [1] * a.ndim
    shape[axis] = -1
    a0 = np.take(a, i0, axis=axis).astype(dtype, copy=False)
    a1 = np.take(a, i1, axis=axis).astype(dtype, copy=False)
    t0 = torch.from_numpy(a0)
    wt = torch.from_numpy(w.astype(np.float32)).to(t0.dtype).reshape(shape)
    t0.lerp_(torch.from_numpy(a1), wt)  # a0 is this call's own fresh array
    return a0


def _unflipped(arr: np.ndarray) -> tuple[np.ndarray, list[int], list[bool]]:
    """``arr`` as a view in its own memory order, and how to address it.

    Returns (v, dim, flipped): spatial axis ``a`` of ``arr`` is axis ``dim[a]`` of
    ``v``, read backwards where ``flipped[a]``. No copy: reoriented volumes are
    flipped views and NIfTI data is x-fastest (Fortran order), and a C-order copy
    of either is a 3-D transpose that cost more than the resampling itself. So the
    flips go into the gather indices, and the gathers run in the array's memory
    order (C order for ``v`` where ``arr`` was contiguous in any axis order).
    """
    flipped = [arr.strides[a + 1] < 0 for a in range(3)]
    if arr.strides[0] < 0:  # a reversed channel axis: never from our transforms
        arr = np.ascontiguousarray(arr)
        flipped = [False] * 3
    elif any(flipped):
        arr = np.flip(arr, tuple(a + 1 for a in range(3) if flipped[a]))
    perm = [0] + sorted(range(1, 4), key=lambda d: -arr.strides[d])
    return arr.transpose(perm), [perm.index(a + 1) for a in range(3)], flipped


def _to_layout(v: np.ndarray, dim: list[int], flipped: list[bool]) -> np.ndarray:
    """The gathered array back in the input's axis order, C-contiguous."""
    if any(flipped):  # an axis left as it was, but read backwards
        v = np.flip(v, tuple(dim[a] for a in range(3) if flipped[a]))
    v = v.transpose([0] + dim)
    if v.flags.c_contiguous:
        return v
    out = np.empty(v.shape, v.dtype)
    if v.dtype.kind in "fc" or v.dtype in (np.int8, np.uint8, np.int16, np.int32, np.int64, np.bool_):
        if all(s >= 0 for s in v.strides):  # torch's transpose copy is threaded, numpy's is not
            torch.from_numpy(out).copy_(torch.from_numpy(v))
            return out
    np.copyto(out, v)
    return out


def _separable_linear(arr: np.ndarray, scales, offsets, out_shape, dtype) -> np.ndarray:
    dtype = np.dtype(dtype)
    in_shape = arr.shape[1:]
    v, dim, flipped = _unflipped(arr)
    # shrink the data as early as possible: process axes by increasing out/in ratio
    # (in axis order, not memory order: the values must not depend on the layout)
    order = sorted(range(3), key=lambda a: out_shape[a] / in_shape[a])
    for ax in order:
        n_in, n_out = in_shape[ax], out_shape[ax]
        if n_in == n_out and abs(scales[ax] - 1.0) <= 1e-12 and abs(offsets[ax]) <= 1e-12:
            continue
        c = _coords_1d(scales[ax], offsets[ax], n_out, n_in)
        i0, i1, w = _linear_1d(c, n_in)
        if flipped[ax]:  # the same voxels, addressed in the unflipped view
            i0, i1, flipped[ax] = n_in - 1 - i0, n_in - 1 - i1, False
        v = _lerp_axis(v, dim[ax], i0, i1, w, dtype)
    out = _to_layout(v.astype(dtype, copy=False), dim, flipped)
    if np.shares_memory(out, arr):
        out = out.copy()
    return out


def _separable_nearest(arr: np.ndarray, scales, offsets, out_shape) -> np.ndarray:
    v, dim, flipped = _unflipped(arr)
    # shrinking axes first (exact gathers: any order gives the same values), and
    # among equal ratios the innermost axis last, where the gathers are slowest
    for ax in sorted(range(3), key=lambda a: (out_shape[a] / arr.shape[a + 1], dim[a])):
        n_in = arr.shape[ax + 1]
        idx = _nearest_1d(_coords_1d(scales[ax], offsets[ax], out_shape[ax], n_in), n_in)
        if flipped[ax]:
            idx, flipped[ax] = n_in - 1 - idx, False
        v = np.take(v, idx, axis=dim[ax])
    out = _to_layout(v, dim, flipped)
    if np.shares_memory(out, arr):
        out = out.copy()
    return out


# ----------------------------------------------------------------------------
# general resampling
# ----------------------------------------------------------------------------
def _general_resample(arr: np.ndarray, xform: np.ndarray, out_shape, mode: str, dtype) -> np.ndarray:
    """Sample ``arr`` at input coordinates ``xform @ (i, j, k, 1)`` for the output grid."""
    out_shape = tuple(int(s) for s in out_shape)
    in_shape = arr.shape[1:]
    C = arr.shape[0]
    if mode == "nearest":
        out = np.empty((C,) + out_shape, dtype=arr.dtype)
        flat_out = out.reshape(C, -1)
        src = np.ascontiguousarray(arr).reshape(C, -1)
        jk = np.stack(np.meshgrid(np.arange(out_shape[1]), np.arange(out_shape[2]),
                                  indexing="ij"), 0).reshape(2, -1).astype(np.float64)
        plane = jk.shape[1]
        for i in range(out_shape[0]):
            c = xform[:3, 1:3] @ jk + (xform[:3, 0] * i + xform[:3, 3])[:, None]
            idx = [np.clip(np.rint(c[a]), 0, in_shape[a] - 1).astype(np.int64) for a in range(3)]
            flat = (idx[0] * in_shape[1] + idx[1]) * in_shape[2] + idx[2]
            flat_out[:, i * plane:(i + 1) * plane] = src[:, flat]
        return out
    # linear: torch grid_sample, border padding, align_corners=True on voxel centres
    tdtype = torch.from_numpy(np.zeros(0, dtype=dtype)).dtype
    inp = torch.from_numpy(np.ascontiguousarray(arr)).to(tdtype)[None]  # (1, C, X, Y, Z)
    ii, jj, kk = np.meshgrid(*[np.arange(s, dtype=np.float64) for s in out_shape], indexing="ij")
    out = np.empty((C,) + out_shape, dtype=dtype)
    chunk = max(1, (1 << 22) // max(1, out_shape[1] * out_shape[2]))
    for s in range(0, out_shape[0], chunk):
        e = min(out_shape[0], s + chunk)
        pts = np.stack([ii[s:e], jj[s:e], kk[s:e], np.ones_like(ii[s:e])], 0).reshape(4, -1)
        c = (xform @ pts)[:3]
        g = np.empty((c.shape[1], 3), dtype=np.float64)
        for a in range(3):  # grid's last dim is (z, y, x) order for (X, Y, Z) arrays
            n = in_shape[a]
            g[:, 2 - a] = (2.0 * c[a] / (n - 1) - 1.0) if n > 1 else 0.0
        grid = torch.from_numpy(g).to(tdtype).reshape(1, e - s, out_shape[1], out_shape[2], 3)
        res = torch.nn.functional.grid_sample(inp, grid, mode="bilinear", padding_mode="border",
                                              align_corners=True)
        out[:, s:e] = res[0].numpy()
    return out


def resample_array(arr: np.ndarray, src_affine: np.ndarray, dst_affine: np.ndarray,
                   out_shape: Sequence[int], mode: str = "linear",
                   dtype=np.float32) -> np.ndarray:
    """Resample channel-first ``arr`` (grid ``src_affine``) onto (``dst_affine``, ``out_shape``).

    ``mode="linear"`` returns ``dtype``; ``mode="nearest"`` keeps the input dtype.
    Separable (fast) when the index mapping is axis aligned, general otherwise.
    Samples outside the input take the border value.
    """
    if mode not in ("linear", "nearest"):
        raise ValueError(f"mode must be 'linear' or 'nearest', got {mode!r}")
    out_shape = tuple(int(s) for s in out_shape)
    xform = np.linalg.solve(np.asarray(src_affine, np.float64), np.asarray(dst_affine, np.float64))
    if _axis_aligned(xform):
        scales = np.diag(xform)[:3]
        offsets = xform[:3, 3]
        if (out_shape == arr.shape[1:] and np.allclose(scales, 1.0, atol=1e-9)
                and np.allclose(offsets, 0.0, atol=1e-6)):
            return arr if mode == "nearest" else arr.astype(dtype)
        if mode == "nearest":
            return _separable_nearest(arr, scales, offsets, out_shape)
        return _separable_linear(arr, scales, offsets, out_shape, dtype)
    return _general_resample(arr, xform, out_shape, mode, dtype)


def resample_to_grid(vol, target_affine: np.ndarray, target_shape: Sequence[int],
                     mode: str = "linear", dtype=np.float32):
    """``vol`` resampled onto the grid (``target_affine``, ``target_shape``) -> new Volume."""
    target_affine = np.asarray(target_affine, dtype=np.float64)
    target_shape = tuple(int(s) for s in tuple(target_shape)[-3:])
    arr = resample_array(vol.array, vol.affine, target_affine, target_shape, mode, dtype)
    return vol.replace(array=arr, affine=target_affine.copy())


def to_original_space(vol, mode: str | None = None, dtype=np.float32):
    """Resample ``vol`` (e.g. a prediction) back to ``meta['original_affine'/'original_shape']``.

    ``mode`` defaults to nearest for integer/bool arrays (label maps) and
    linear for float arrays (probabilities).
    """
    if "original_affine" not in vol.meta or "original_shape" not in vol.meta:
        raise ValueError("volume meta lacks 'original_affine' / 'original_shape'")
    if mode is None:
        mode = "linear" if np.issubdtype(vol.array.dtype, np.floating) else "nearest"
    return resample_to_grid(vol, vol.meta["original_affine"], vol.meta["original_shape"], mode, dtype)


class Spacing(Transform):
    """Resample to voxel size ``pixdim`` (mm): trilinear for images, nearest for labels.

    Output grid = MONAI ``Spacingd(keys, pixdim, mode=("bilinear", "nearest"))``.
    Images come out as ``image_dtype``; labels keep their dtype.
    """

    def __init__(self, pixdim: Sequence[float] | float = (1.5, 1.5, 2.0),
                 keys: Sequence[str] = DEFAULT_KEYS, image_dtype=np.float32,
                 max_voxels: int = MAX_OUTPUT_VOXELS):
        pd = np.atleast_1d(np.asarray(pixdim, dtype=np.float64))
        if pd.size not in (1, 2, 3):
            raise ValueError(f"pixdim must have 1 to 3 values, got {pixdim!r}")
        self.pixdim = tuple(float(p) for p in pd)
        self.keys = tuple(keys)
        self.image_dtype = np.dtype(image_dtype)
        self.max_voxels = int(max_voxels)

    def __call__(self, data: Data, rng: np.random.Generator | None = None) -> Data:
        out = dict(data)
        for k in self.present(data):
            vol = data[k]
            new_affine, new_shape = spacing_grid(vol.affine, vol.spatial_shape, self.pixdim)
            if int(np.prod(new_shape, dtype=np.int64)) > self.max_voxels:
                raise ImagingError(vol.source, f"resampling {k} {tuple(vol.spatial_shape)} to {self.pixdim} mm "
                                   f"would make {new_shape} voxels, over the {self.max_voxels:,} a case may "
                                   "have: a spacing far finer than the image's")
            mode = "nearest" if is_label_key(k) else "linear"
            arr = resample_array(vol.array, vol.affine, new_affine, new_shape, mode, self.image_dtype)
            out[k] = vol.replace(array=arr, affine=new_affine)
        return out
