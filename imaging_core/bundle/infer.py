"""Segment one study with a bundle: NIfTI file or DICOM series in, label NIfTI out
in the input's original grid (same affine, shape and orientation).

Steps: the bundle's preprocessing (orientation, spacing, intensity, foreground
crop, exactly as in training) -> sliding window -> argmax -> the crop is pasted
back into the resampled grid with background around it -> nearest-neighbour
resampling onto the input's grid. Pasting before resampling matters: the
resampler pads with the border value, which would smear a label touching the
crop edge across the rest of the image.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

from ..errors import ImagingError
from ..io import Volume, load_volume, save_volume
from ..io.nifti import is_nifti
from .contract import contract_config, contract_preprocess, modality_or_default


def _split_preprocess(contract: dict, modality: str):
    from ..transforms.base import Compose
    from ..transforms.crop_pad import CropForeground
    from ..transforms.presets import build_preprocess
    ts = build_preprocess(contract_preprocess(contract), modality).transforms
    if ts and isinstance(ts[-1], CropForeground):
        return Compose(ts[:-1]), ts[-1]
    return Compose(ts), None


def segment(net: torch.nn.Module, contract: dict, vol: Volume, device: str | torch.device = "cpu",
            modality: str | None = None, progress=None, amp: str | None = None) -> tuple[Volume, Volume]:
    """``(labels in the input's grid, labels in the preprocessed grid)``, both uint8 Volumes.

    ``progress(done, total)`` is called after every batch of windows.
    """
    from ..task import Task
    from ..transforms.crop_pad import crop_or_pad_array
    src = vol.source
    mod = modality_or_default(contract, modality, src)
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
    # paste the crop back (boxes may extend past the grid: only the overlap is kept)
    shape = np.asarray(full.spatial_shape)
    lo, hi = np.clip(start, 0, shape), np.clip(start + size, 0, shape)
    full_pred = np.zeros(tuple(shape), dtype=np.uint8)
    s = tuple(slice(a - b, c - b) for a, b, c in zip(lo, start, hi))
    full_pred[tuple(slice(a, c) for a, c in zip(lo, hi))] = pred[s]
    pre_vol = Volume(full_pred[None], full.affine, {"source": src})
    from ..transforms.spatial import resample_to_grid
    orig_aff = vol.meta.get("original_affine", vol.affine)
    orig_shape = vol.meta.get("original_shape", vol.spatial_shape)
    out = resample_to_grid(pre_vol, orig_aff, orig_shape, mode="nearest")
    return out, pre_vol


def infer_file(bundle_dir: str | os.PathLike, input_path: str | os.PathLike, out_path: str | os.PathLike,
               device: str = "cpu", progress: bool = True, modality: str | None = None,
               verify: bool = True, public_key=None, amp: str | None = None, scheme=None,
               allow_unsigned: bool = False, dicom_seg=None, seg_nrrd=None) -> Path:
    """Segment ``input_path`` (NIfTI/NRRD file or DICOM series directory) with the bundle;
    write a uint8 label NIfTI to ``out_path`` on the input's grid, and the same labels as a
    DICOM SEG (``dicom_seg``, DICOM input only) and/or Slicer .seg.nrrd. Returns ``out_path``.
    The bundle is verified against the pinned ``public_key`` first (load.load_bundle)."""
    from .load import load_bundle
    out_path = Path(out_path)
    if not is_nifti(out_path):
        raise ImagingError(out_path, "output must end in .nii or .nii.gz")
    net, contract = load_bundle(bundle_dir, verify=verify, public_key=public_key, scheme=scheme,
                                allow_unsigned=allow_unsigned)
    vol = load_volume(input_path)  # ImagingError names the file and the problem
    if min(vol.spatial_shape) < 1 or vol.array.size == 0:
        raise ImagingError(input_path, f"empty image {vol.spatial_shape}")
    if progress:
        from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
        with Progress(TextColumn(f"segmenting {Path(input_path).name}"), BarColumn(),
                      TextColumn("{task.completed}/{task.total} windows"), TimeElapsedColumn(),
                      transient=True) as bar:
            task = bar.add_task("windows", total=None)
            out, _ = segment(net, contract, vol, device, modality,
                             progress=lambda done, total: bar.update(task, completed=done, total=total), amp=amp)
    else:
        out, _ = segment(net, contract, vol, device, modality, amp=amp)
    save_volume(out, out_path, dtype=np.uint8)
    if dicom_seg is not None or seg_nrrd is not None:  # clinical formats beside the NIfTI
        from ..io.dicom_seg import write_clinical_outputs
        write_clinical_outputs(out, vol, contract["labels"], bundle_dir, dicom_seg, seg_nrrd)
    return out_path
