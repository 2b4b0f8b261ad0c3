"""Checks on an (image, label) pair: the problems that silently ruin training."""
from __future__ import annotations

import numpy as np

from ..errors import ImagingError
from ..io.volume import Volume

# World-space tolerance for "same grid" (mm): DICOM->NIfTI converters round.
AFFINE_ATOL_MM = 1e-3


def check_label(label: Volume, num_classes: int, require_foreground: bool = True) -> np.ndarray:
    """Return the label as an integer array; raise on non-integer/out-of-range/empty."""
    src = label.source
    arr = label.array
    if label.array.shape[0] != 1:
        raise ImagingError(src, f"label must have one channel, got {arr.shape[0]}")
    if arr.dtype.kind == "f":
        if not np.isfinite(arr).all():
            raise ImagingError(src, "label contains NaN or inf")
        if not np.array_equal(arr, np.round(arr)):
            raise ImagingError(src, "label has non-integer values (was it resampled with interpolation?)")
    elif arr.dtype.kind not in "iub":
        raise ImagingError(src, f"label has unsupported dtype {arr.dtype}")
    lo, hi = (int(arr.min()), int(arr.max())) if arr.size else (0, 0)
    if lo < 0 or hi >= num_classes:
        raise ImagingError(src, f"label values span [{lo}, {hi}] but the datalist defines "
                                f"classes 0..{num_classes - 1}")
    if require_foreground and hi == 0:
        raise ImagingError(src, "label is empty (no foreground voxel)")
    dtype = np.uint8 if num_classes <= 256 else np.int16
    return arr.astype(dtype, copy=False)


def check_pair(image: Volume, label: Volume) -> None:
    """Image and label must share the voxel grid (shape and affine)."""
    if image.spatial_shape != label.spatial_shape:
        raise ImagingError(label.source, f"label shape {label.spatial_shape} does not match image "
                                         f"shape {image.spatial_shape} ({image.source})")
    # compare world positions of the grid corners rather than raw matrices
    corners = np.array([[0, 0, 0, 1], [*np.array(image.spatial_shape) - 1, 1]], dtype=float).T
    d = np.abs(image.affine @ corners - label.affine @ corners).max()
    if d > AFFINE_ATOL_MM + 1e-6 * float(np.abs(image.affine).max()):
        raise ImagingError(label.source, f"label affine differs from image affine ({image.source}) "
                                         f"by up to {d:.3g} mm")
