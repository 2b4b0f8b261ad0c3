"""Segment studies with a bundle: a NIfTI/NRRD file, a DICOM series, or a folder
of them in; label NIfTI out in each input's original grid (same affine, shape and
orientation).

Steps: the input checks (checks.py: modality, intensity, spacing) -> the bundle's
preprocessing (orientation, spacing, intensity, foreground crop, exactly as in
training) -> sliding window -> argmax -> the bundle's post-processing chain on
the preprocessed grid (as the run's evaluation ran it) -> the prediction put back
on the input's grid (inference.invert, the same inversion the run's
original-space evaluation used).
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

from ..errors import ImagingError
from ..io import Volume, load_volume, save_volume
from ..io.nifti import is_nifti
from .checks import check_input, choose_modality
from .contract import contract_config, contract_preprocess


def _split_preprocess(contract: dict, modality: str):
    from ..transforms.base import Compose
    from ..transforms.crop_pad import CropForeground
    from ..transforms.presets import build_preprocess
    ts = build_preprocess(contract_preprocess(contract), modality).transforms
    if ts and isinstance(ts[-1], CropForeground):
        return Compose(ts[:-1]), ts[-1]
    return Compose(ts), None


def segment(net: torch.nn.Module, contract: dict, vol: Volume, device: str | torch.device = "cpu",
            modality: str | None = None, progress=None, amp: str | None = None,
            force=("all",)) -> tuple[Volume, Volume]:
    """``(labels in the input's grid, labels in the preprocessed grid)``, both uint8 Volumes.

    ``progress(done, total)`` is called after every batch of windows. ``force``: the
    input checks to skip (checks.py; default all: a caller that wants them says so,
    as infer_file does).
    """
    from ..inference.invert import to_input_grid
    from ..task import Task
    from ..transforms.crop_pad import crop_or_pad_array
    src = vol.source
    mod = choose_modality(vol, contract, modality, force)
    check_input(vol, contract, mod, force)
    if vol.array.shape[0] != int(contract["in_channels"]):
        raise ImagingError(src, f"image has {vol.array.shape[0]} channel(s); the model expects "
                                f"{contract['in_channels']}")
    pre, crop = _split_preprocess(contract, mod)
    try:
        data = pre({"image": vol})
    except ValueError as e:
        raise ImagingError(src, f"preprocessing failed ({e})") from None
    full = data["image"]
    box = crop.box(data) if crop is not None else None
    if box is None:  # no crop configured, or nothing above the threshold: use the whole image
        start, size = np.zeros(3, np.int64), np.asarray(full.spatial_shape, np.int64)
    else:
        start, size = box[0], box[1] - box[0]
    x = crop_or_pad_array(full.array, start, size, pad_value=0)
    # the same prediction as every evaluation: Task.predict on the contract's settings
    pred = Task(contract_config(contract, amp), device).predict(net.eval(), x, progress=progress)
    # the preprocessed-grid view (crop pasted back; boxes may extend past the grid)
    shape = np.asarray(full.spatial_shape)
    lo, hi = np.clip(start, 0, shape), np.clip(start + size, 0, shape)
    full_pred = np.zeros(tuple(shape), dtype=np.uint8)
    s = tuple(slice(a - b, c - b) for a, b, c in zip(lo, start, hi))
    full_pred[tuple(slice(a, c) for a, c in zip(lo, hi))] = pred[s]
    pre_vol = Volume(full_pred[None], full.affine, {"source": src})
    shift = np.eye(4)
    shift[:3, 3] = start
    return to_input_grid(pred, full.affine @ shift, vol), pre_vol


def infer_file(bundle_dir: str | os.PathLike, input_path: str | os.PathLike, out_path: str | os.PathLike,
               device: str = "cpu", progress: bool = True, modality: str | None = None,
               verify: bool = True, public_key=None, amp: str | None = None, scheme=None,
               allow_unsigned: bool = False, force=(), series_uid: str | None = None,
               dicom_seg=None, seg_nrrd=None) -> Path:
    """Segment ``input_path`` (NIfTI/NRRD file or DICOM series directory; ``series_uid``
    picks one series of a folder holding several) with the bundle; write a uint8 label
    NIfTI to ``out_path`` on the input's grid (a directory: ``<input name>_seg.nii.gz``
    in it), and the same labels as a DICOM SEG (``dicom_seg``, DICOM input only) and/or
    Slicer .seg.nrrd. Returns the NIfTI written. The bundle is verified against the pinned
    ``public_key`` first (load.load_bundle); the input is checked against the bundle
    (checks.py) unless ``force`` names the check (or "all")."""
    from .load import load_bundle
    out_path = _out_file(input_path, out_path)
    net, contract = load_bundle(bundle_dir, verify=verify, public_key=public_key, scheme=scheme,
                                allow_unsigned=allow_unsigned)
    _, labels, vol = _segment_one(net, contract, input_path, out_path, device, progress, modality, amp, force,
                                  series_uid)
    if dicom_seg is not None or seg_nrrd is not None:  # clinical formats beside the NIfTI
        from ..io.dicom_seg import write_clinical_outputs
        write_clinical_outputs(labels, vol, contract["labels"], bundle_dir, dicom_seg, seg_nrrd)
    return out_path


def infer_folder(bundle_dir: str | os.PathLike, input_dir: str | os.PathLike, out_dir: str | os.PathLike,
                 device: str = "cpu", progress: bool = True, modality: str | None = None,
                 verify: bool = True, public_key=None, amp: str | None = None, scheme=None,
                 allow_unsigned: bool = False, force=()) -> list[Path]:
    """Every NIfTI/NRRD file and DICOM series directory directly in ``input_dir``
    (like nnU-Net's -i/-o) -> ``out_dir/<name>_seg.nii.gz``. The bundle is loaded and
    verified once; every input is checked before any is segmented, so a bad one stops
    the run before anything is written. Returns the files written, in name order."""
    from .load import load_bundle
    inputs = folder_inputs(input_dir)
    net, contract = load_bundle(bundle_dir, verify=verify, public_key=public_key, scheme=scheme,
                                allow_unsigned=allow_unsigned)
    for p in inputs:  # checks first: a mismatch is found before hours of inference
        vol = _load(p, None)
        check_input(vol, contract, choose_modality(vol, contract, modality, force), force)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    return [_segment_one(net, contract, p, _out_file(p, out_dir), device, progress, modality, amp, force, None)[0]
            for p in inputs]


def folder_inputs(input_dir: str | os.PathLike) -> list[Path]:
    """The studies in a folder: its image files and its DICOM series subfolders.
    A folder of DICOM files is one study: pass it to infer_file (with a series uid)."""
    from ..io.nrrd_io import is_nrrd
    d = Path(input_dir)
    if not d.is_dir():
        raise ImagingError(d, "input folder not found")
    files = sorted(p for p in d.iterdir() if p.is_file() and (is_nifti(p) or is_nrrd(p)))
    series = sorted(p for p in d.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not files and not series:
        raise ImagingError(d, "no NIfTI/NRRD files or DICOM series folders in it")
    return files + series


def is_study_folder(path: str | os.PathLike) -> bool:
    """A folder holding image files or series subfolders (not itself one DICOM series)."""
    p = Path(path)
    if not p.is_dir():
        return False
    from ..io.nrrd_io import is_nrrd
    entries = [e for e in p.iterdir() if not e.name.startswith(".")]
    return any(e.is_dir() or is_nifti(e) or is_nrrd(e) for e in entries)


def _stem(p: Path) -> str:
    name = p.name
    for ext in (".nii.gz", ".nii", ".nrrd", ".nhdr", ".dcm"):
        if name.lower().endswith(ext):
            return name[: -len(ext)]
    return name


def _out_file(input_path, out_path) -> Path:
    out = Path(out_path)
    if out.is_dir():
        return out / f"{_stem(Path(input_path))}_seg.nii.gz"
    if not is_nifti(out):
        raise ImagingError(out, "output must end in .nii or .nii.gz (or be an existing folder)")
    return out


def _load(input_path, series_uid) -> Volume:
    vol = load_volume(input_path, series_uid=series_uid)  # ImagingError names the file and the problem
    if min(vol.spatial_shape) < 1 or vol.array.size == 0:
        raise ImagingError(input_path, f"empty image {vol.spatial_shape}")
    return vol


def _segment_one(net, contract, input_path, out_path: Path, device, progress, modality, amp, force,
                 series_uid) -> tuple[Path, Volume, Volume]:
    """(file written, labels on the input's grid, the input as loaded)."""
    vol = _load(input_path, series_uid)
    if progress:
        from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
        with Progress(TextColumn(f"segmenting {Path(input_path).name}"), BarColumn(),
                      TextColumn("{task.completed}/{task.total} windows"), TimeElapsedColumn(),
                      transient=True) as bar:
            task = bar.add_task("windows", total=None)
            out, _ = segment(net, contract, vol, device, modality, amp=amp, force=force,
                             progress=lambda done, total: bar.update(task, completed=done, total=total))
    else:
        out, _ = segment(net, contract, vol, device, modality, amp=amp, force=force)
    save_volume(out, out_path, dtype=np.uint8)
    return out_path, out, vol
