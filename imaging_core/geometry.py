"""Affine helpers shared by io and transforms (voxel index -> RAS+ millimetres)."""
from __future__ import annotations

import numpy as np
from nibabel import orientations as nio

from .errors import ImagingError

# Refuse absurd sizes before allocating anything (a corrupt header can claim
# 2^31 voxels per axis). 2^30 voxels is ~4 GB as float32: larger than any CT.
MAX_AXIS = 8192
MAX_VOXELS = 2**30


def spacing_from_affine(affine: np.ndarray) -> np.ndarray:
    """Voxel size along each array axis, in mm (column norms of the 3x3 part)."""
    a = np.asarray(affine, dtype=np.float64)
    return np.sqrt((a[:3, :3] ** 2).sum(axis=0))


def axcodes(affine: np.ndarray) -> tuple[str, ...]:
    """Orientation codes ('R','A','S',...) of the array axes, nibabel's convention."""
    return tuple(nio.aff2axcodes(np.asarray(affine, dtype=np.float64)))


def check_affine(affine: np.ndarray, path=None) -> np.ndarray:
    """Return a float64 4x4 affine, or raise naming the problem."""
    a = np.asarray(affine, dtype=np.float64)
    if a.shape != (4, 4):
        raise ImagingError(path, f"affine must be 4x4, got shape {a.shape}")
    if not np.all(np.isfinite(a)):
        raise ImagingError(path, "affine contains NaN or inf")
    sp = spacing_from_affine(a)
    if np.any(sp <= 1e-6):
        raise ImagingError(path, f"zero or negative voxel spacing {tuple(np.round(sp, 6))}")
    if abs(np.linalg.det(a[:3, :3])) < 1e-9 * float(np.prod(sp)):
        raise ImagingError(path, "singular affine (axes are collinear)")
    return a


def check_shape(shape, path=None) -> tuple[int, ...]:
    """Reject absurd dimensions before any allocation."""
    shape = tuple(int(s) for s in shape)
    if any(s <= 0 for s in shape):
        raise ImagingError(path, f"non-positive dimension in shape {shape}")
    if any(s > MAX_AXIS for s in shape) or int(np.prod(shape, dtype=np.float64)) > MAX_VOXELS:
        raise ImagingError(path, f"absurd dimensions {shape} (limit {MAX_AXIS} per axis, "
                                 f"{MAX_VOXELS} voxels); refusing to allocate")
    return shape


def ornt_transform_affine(ornt: np.ndarray, shape) -> np.ndarray:
    """Affine taking new voxel indices (after applying ``ornt``) to old ones.

    Wraps nibabel's inv_ornt_aff, which is exactly this mapping.
    """
    return nio.inv_ornt_aff(ornt, tuple(shape))


def apply_ornt_to_array(arr: np.ndarray, ornt: np.ndarray) -> np.ndarray:
    """Reorient the last 3 axes of ``arr`` (channel-first) by a nibabel ornt array.

    Returns a view where possible (flips + transpose), no copy.
    """
    ornt = np.asarray(ornt)
    out = arr
    for ax, flip in enumerate(ornt[:, 1]):
        if flip == -1:
            out = np.flip(out, axis=ax + 1)
    perm = [0] + [int(np.where(ornt[:, 0] == k)[0][0]) + 1 for k in range(3)]
    return out.transpose(perm)
