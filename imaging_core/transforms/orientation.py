"""Reorient volumes to given axis codes (MONAI ``Orientationd`` semantics).

Only flips and axis permutations: the array is a view of the input (no copy,
no interpolation) and the affine is updated so every voxel keeps its world
position.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
from nibabel import orientations as nio

from ..geometry import apply_ornt_to_array, ornt_transform_affine
from .base import DEFAULT_KEYS, Data, Transform


def _check_axcodes(axcodes: str) -> str:
    codes = "".join(axcodes).upper()
    if len(codes) != 3:
        raise ValueError(f"axcodes must have 3 letters, got {axcodes!r}")
    try:
        nio.axcodes2ornt(tuple(codes))
    except Exception as e:  # nibabel raises ValueError/KeyError on bad codes
        raise ValueError(f"invalid axcodes {axcodes!r}: {e}") from None
    groups = [set("LR"), set("PA"), set("IS")]
    if any(sum(c in g for c in codes) != 1 for g in groups):
        raise ValueError(f"invalid axcodes {axcodes!r}: need one of L/R, P/A, I/S each")
    return codes


def reorient(vol, axcodes: str = "RAS"):
    """Return ``vol`` reoriented so that ``vol.orientation == tuple(axcodes)``.

    The array is a flipped/transposed view of the input array; the affine is
    ``affine @ inv_ornt_aff(ornt, shape)`` exactly as MONAI's Orientation.
    """
    codes = _check_axcodes(axcodes)
    src = nio.io_orientation(vol.affine)
    dst = nio.axcodes2ornt(tuple(codes))
    ornt = nio.ornt_transform(src, dst)
    if np.array_equal(ornt, [[0, 1], [1, 1], [2, 1]]):
        return vol.replace()
    new_affine = vol.affine @ ornt_transform_affine(ornt, vol.spatial_shape)
    return vol.replace(array=apply_ornt_to_array(vol.array, ornt), affine=new_affine)


class Orientation(Transform):
    """Reorder / flip axes so each volume's orientation equals ``axcodes``.

    Any target codes are accepted ("RAS", "LPS", "PLI", ...). Arrays are views
    of the input arrays (the input is never modified).
    """

    def __init__(self, axcodes: str = "RAS", keys: Sequence[str] = DEFAULT_KEYS):
        self.axcodes = _check_axcodes(axcodes)
        self.keys = tuple(keys)

    def __call__(self, data: Data, rng: np.random.Generator | None = None) -> Data:
        out = dict(data)
        for k in self.present(data):
            out[k] = reorient(data[k], self.axcodes)
        return out
