"""Volume: the one object that flows through the imaging pipeline."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..geometry import axcodes, spacing_from_affine


@dataclass
class Volume:
    """A channel-first array ``(C, X, Y, Z)`` with its voxel -> RAS+ mm affine.

    ``meta`` carries where it came from and its original geometry
    (``source``, ``format``, ``original_affine``, ``original_shape``,
    ``original_dtype``), so results can be written back in the input's space.
    """

    array: np.ndarray
    affine: np.ndarray
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self):
        self.affine = np.asarray(self.affine, dtype=np.float64)
        if self.array.ndim != 4:
            raise ValueError(f"Volume array must be (C, X, Y, Z), got shape {self.array.shape}")

    @property
    def spatial_shape(self) -> tuple[int, int, int]:
        return tuple(int(s) for s in self.array.shape[1:])

    @property
    def spacing(self) -> np.ndarray:
        return spacing_from_affine(self.affine)

    @property
    def orientation(self) -> tuple[str, ...]:
        return axcodes(self.affine)

    @property
    def source(self) -> str | None:
        return self.meta.get("source")

    def replace(self, array: np.ndarray | None = None, affine: np.ndarray | None = None,
                **meta_updates) -> "Volume":
        """A new Volume sharing meta (shallow-copied) with some fields replaced."""
        meta = dict(self.meta)
        meta.update(meta_updates)
        return Volume(self.array if array is None else array,
                      self.affine if affine is None else affine, meta)
