"""NRRD (.nrrd, .nhdr) read/write with pynrrd; public lesion data ships as NRRD."""
from __future__ import annotations

import os
from pathlib import Path

import nrrd
import numpy as np

from ..errors import ImagingError
from ..geometry import check_affine, check_shape
from .atomic import atomic_path
from .volume import Volume

# NRRD "space" -> sign flips turning it into RAS+.
_SPACE_TO_RAS = {
    "right-anterior-superior": (1, 1, 1), "ras": (1, 1, 1),
    "left-posterior-superior": (-1, -1, 1), "lps": (-1, -1, 1),
    "left-anterior-superior": (-1, 1, 1), "las": (-1, 1, 1),
}


def is_nrrd(path) -> bool:
    return str(path).lower().endswith((".nrrd", ".nhdr"))


def _affine_from_header(hdr: dict, path: Path) -> np.ndarray:
    dirs = hdr.get("space directions")
    if dirs is None:
        sp = hdr.get("spacings")
        if sp is None:
            raise ImagingError(path, "NRRD header has neither 'space directions' nor 'spacings'")
        aff = np.diag(list(np.asarray(sp, dtype=float)[-3:]) + [1.0])
        return aff
    dirs = np.array([d for d in dirs if d is not None and not np.all(np.isnan(np.asarray(d, float)))],
                    dtype=float)
    if dirs.shape != (3, 3):
        raise ImagingError(path, f"NRRD 'space directions' must be 3 vectors of 3, got {dirs.shape}")
    space = str(hdr.get("space", "left-posterior-superior")).lower()
    if space not in _SPACE_TO_RAS:
        raise ImagingError(path, f"unsupported NRRD space '{space}'")
    flip = np.array(_SPACE_TO_RAS[space], dtype=float)
    aff = np.eye(4)
    aff[:3, :3] = dirs.T * flip[:, None]  # columns = axis directions
    origin = np.asarray(hdr.get("space origin", np.zeros(3)), dtype=float)
    aff[:3, 3] = origin * flip
    return aff


def load_nrrd(path: str | os.PathLike, expect_3d: bool = True) -> Volume:
    path = Path(path)
    if not path.is_file():
        raise ImagingError(path, "file not found")
    try:
        hdr = nrrd.read_header(str(path))
    except Exception as e:
        raise ImagingError(path, f"not a readable NRRD header ({e})") from None
    shape = check_shape(hdr.get("sizes", ()), path)
    if len(shape) == 4 and expect_3d:
        raise ImagingError(path, f"4D image {shape} where a 3D volume is expected")
    if len(shape) not in (3, 4):
        raise ImagingError(path, f"{len(shape)}D NRRD {shape} is not supported")
    try:
        arr, hdr = nrrd.read(str(path), index_order="F")
    except Exception as e:
        raise ImagingError(path, f"corrupt or truncated NRRD data ({e})") from None
    if arr.dtype.kind == "f" and not np.isfinite(arr).all():
        raise ImagingError(path, "image contains NaN or inf voxels")
    affine = check_affine(_affine_from_header(hdr, path), path)
    # a 4D NRRD keeps its non-spatial (channel) axis first in pynrrd's F order
    arr = arr[None] if arr.ndim == 3 else arr
    return Volume(np.ascontiguousarray(arr), affine, {
        "source": str(path), "format": "nrrd", "original_affine": affine.copy(),
        "original_shape": tuple(arr.shape[1:]), "original_dtype": str(arr.dtype)})


def save_nrrd(vol: Volume, path: str | os.PathLike, fields: dict | None = None) -> Path:
    """``fields``: extra header key/value pairs (written as ``key:=value``, e.g. Slicer's Segment*)."""
    path = Path(path)
    flip = np.array([-1.0, -1.0, 1.0])  # write LPS, the NRRD/Slicer convention
    hdr = {
        "space": "left-posterior-superior",
        "space directions": (vol.affine[:3, :3] * flip[:, None]).T,
        "space origin": vol.affine[:3, 3] * flip,
    }
    arr = vol.array[0] if vol.array.shape[0] == 1 else vol.array
    if vol.array.shape[0] != 1:
        hdr["space directions"] = np.vstack([np.full(3, np.nan), hdr["space directions"]])
        hdr["kinds"] = ["list", "domain", "domain", "domain"]
    hdr.update(fields or {})
    with atomic_path(path, suffix=".nrrd") as tmp:
        nrrd.write(str(tmp), np.asarray(arr), hdr, index_order="F")
    return path
