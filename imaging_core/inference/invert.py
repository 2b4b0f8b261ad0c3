"""A label map predicted on the preprocessed grid, put back on an input's grid.

One function for everyone who measures or writes a prediction in the original
space (Task.evaluate's original-space measure, ``fedvox infer``), so the figures
a run records and the files a bundle writes come from the same inversion.
"""
from __future__ import annotations

import numpy as np

from ..io import Volume


def labels_to_grid(labels: np.ndarray, affine: np.ndarray, target_affine: np.ndarray,
                   target_shape) -> np.ndarray:
    """``labels`` (X, Y, Z) on the grid ``affine`` -> (target shape) by nearest neighbour.

    The map gets a one-voxel border of background first: the resampler takes the
    border value outside its input, so without it a label touching the edge of a
    foreground crop would be smeared across the rest of the input grid (what
    MONAI's Invertd avoids by padding the crop back with zeros).
    """
    lab = np.asarray(labels)
    padded = np.pad(lab, 1)
    shift = np.eye(4)
    shift[:3, 3] = -1.0
    from ..transforms.spatial import resample_to_grid
    vol = Volume(padded[None], np.asarray(affine, np.float64) @ shift, {})
    return resample_to_grid(vol, target_affine, target_shape, mode="nearest").array[0]


def to_input_grid(labels: np.ndarray, affine: np.ndarray, like: Volume) -> Volume:
    """``labels`` as a uint8 Volume on ``like``'s original grid (its file's affine and shape)."""
    aff = np.asarray(like.meta.get("original_affine", like.affine), np.float64)
    shape = tuple(like.meta.get("original_shape", like.spatial_shape))
    arr = labels_to_grid(labels, affine, aff, shape).astype(np.uint8)
    return Volume(arr[None], aff, {"source": like.meta.get("source")})
