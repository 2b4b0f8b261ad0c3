"""Does an input fit the bundle? Checked by ``fedvox infer`` before any inference.

Three checks, each one clear error naming the file unless the caller forces it
(``force={"modality", "intensity", "spacing"}`` or ``{"all"}``):

- modality: a DICOM series' Modality (0008,0060) must be one the bundle has
  preprocessing for, and the one used (the bundle's default unless --modality);
- intensity: a CT must look like Hounsfield units (air and fat are negative: a CT
  stored without its rescale intercept, or already normalised to [0, 1], has
  almost nothing below CT_NEGATIVE_BELOW), an MR must
  not look already normalised (a large share of negative values);
- spacing: each axis within a factor of SPACING_FACTOR of the bundle's working
  spacing (a volume far coarser or finer than anything in training is resampled
  into something the network never saw).
"""
from __future__ import annotations

import numpy as np

from ..errors import ImagingError

CHECKS = ("modality", "intensity", "spacing")
SPACING_FACTOR = 4.0       # allowed ratio between an input axis spacing and the bundle's pixdim
CT_NEGATIVE_BELOW = -50.0  # a CT in HU has its 1st percentile (air, fat) below this
MR_NEGATIVE_SHARE = 0.05   # an MR magnitude image has (almost) no negative voxels


def _forced(force, name: str) -> bool:
    return bool(force) and (name in force or "all" in force)


def _hint(name: str) -> str:
    return f" (override with --force {name})"


def choose_modality(vol, contract: dict, modality: str | None, force=()) -> str:
    """The modality to preprocess ``vol`` as: ``modality`` if given, else the DICOM
    header's when the bundle knows it, else the bundle's default; a DICOM modality
    that disagrees with that choice is an error unless forced."""
    src = vol.source
    known = sorted(contract["intensity"])
    header = str(vol.meta.get("modality") or "").upper() or None
    mod = modality or (header if header in contract["intensity"] else contract["modality"])
    if mod not in contract["intensity"]:
        raise ImagingError(src, f"the bundle has no preprocessing for modality {mod!r} (it knows {', '.join(known)})")
    if header and header != mod and not _forced(force, "modality"):
        raise ImagingError(src, f"DICOM Modality (0008,0060) is {header!r} but the bundle would preprocess it as "
                                f"{mod!r} (it knows {', '.join(known)})" + _hint("modality"))
    return mod


def check_input(vol, contract: dict, modality: str, force=()) -> None:
    """Raise one ImagingError naming the file for the first check that fails."""
    src = vol.source
    if not _forced(force, "intensity"):
        a = np.asarray(vol.array, dtype=np.float32)
        finite = a[np.isfinite(a)]
        if finite.size == 0 or float(finite.max()) == float(finite.min()):
            raise ImagingError(src, "image is constant (or not finite): nothing to segment" + _hint("intensity"))
        p1, p99 = np.percentile(finite, [1, 99])
        if modality == "CT" and p1 > CT_NEGATIVE_BELOW:
            raise ImagingError(src, f"does not look like a CT in Hounsfield units: its 1st percentile is "
                                    f"{p1:.4g} (air is about -1000; was the rescale slope/intercept lost, or "
                                    f"the image normalised?)" + _hint("intensity"))
        if modality == "MR" and float(np.mean(finite < 0)) > MR_NEGATIVE_SHARE and p99 < 50:
            raise ImagingError(src, f"{100 * float(np.mean(finite < 0)):.0f}% of voxels are negative: it looks "
                                    "already normalised, and the bundle normalises it again" + _hint("intensity"))
    if not _forced(force, "spacing"):
        sp = np.asarray(vol.spacing, dtype=np.float64)
        want = _pixdim_per_voxel_axis(vol.affine, contract)
        ratio = sp / want
        bad = (ratio > SPACING_FACTOR) | (ratio < 1 / SPACING_FACTOR)
        if bad.any():
            raise ImagingError(src, f"voxel spacing {' x '.join(f'{s:.3g}' for s in sp)} mm is far from the "
                                    f"bundle's {' x '.join(f'{s:.3g}' for s in want)} mm (more than "
                                    f"{SPACING_FACTOR:g}x on an axis)" + _hint("spacing"))


def _pixdim_per_voxel_axis(affine: np.ndarray, contract: dict) -> np.ndarray:
    """The bundle's spacing along each voxel axis of the input (whose axes may be
    ordered and flipped differently: LPS, LSA, ...), matched by world axis."""
    world = {"L": 0, "R": 0, "P": 1, "A": 1, "I": 2, "S": 2}
    by_world = {world[c]: float(p) for c, p in zip(contract["orientation"], contract["pixdim"])}
    axes = np.argmax(np.abs(np.asarray(affine, dtype=np.float64)[:3, :3]), axis=0)
    return np.asarray([by_world[int(a)] for a in axes])
