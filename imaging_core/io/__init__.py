"""Reading and writing images: NIfTI, NRRD, DICOM series -> Volume."""
from __future__ import annotations

import os
from pathlib import Path

from ..errors import ImagingError
from .nifti import is_nifti, load_nifti, save_nifti
from .nrrd_io import is_nrrd, load_nrrd, save_nrrd
from .volume import Volume

__all__ = ["Volume", "load_volume", "save_volume", "load_nifti", "save_nifti",
           "load_nrrd", "save_nrrd", "ImagingError"]


def load_volume(path: str | os.PathLike, expect_3d: bool = True, series_uid: str | None = None) -> Volume:
    """Load a NIfTI/NRRD file or a DICOM series (directory, or a single .dcm)."""
    p = Path(path)
    if is_nifti(p):
        return load_nifti(p, expect_3d=expect_3d)
    if is_nrrd(p):
        return load_nrrd(p, expect_3d=expect_3d)
    if p.is_dir() or p.suffix.lower() in (".dcm", ".ima") or _looks_like_dicom(p):
        from .dicom import load_dicom_series  # pydicom import only when needed
        return load_dicom_series(p, series_uid=series_uid)
    if not p.exists():
        raise ImagingError(p, "file not found")
    raise ImagingError(p, "unknown image format (expected .nii, .nii.gz, .nrrd or a DICOM series)")


def _looks_like_dicom(p: Path) -> bool:
    try:
        with open(p, "rb") as f:
            f.seek(128)
            return f.read(4) == b"DICM"
    except OSError:
        return False


def save_volume(vol: Volume, path: str | os.PathLike, dtype=None) -> Path:
    """Write NIfTI or NRRD by extension, atomically."""
    if is_nifti(path):
        return save_nifti(vol, path, dtype=dtype)
    if is_nrrd(path):
        return save_nrrd(vol if dtype is None else vol.replace(vol.array.astype(dtype)), path)
    raise ImagingError(path, "output must be .nii, .nii.gz or .nrrd")
