"""Label map -> DICOM Segmentation (highdicom), referencing the source series.

What a PACS / OHIF needs to show a segmentation over the study it came from:
- one frame per source slice, matched to the slice by its ImagePositionPatient
  (so the SEG references exactly the images it was computed on, whatever order
  their files are in, and a label map on another grid is refused);
- every label as a segment with coded category and type (SNOMED CT where the
  label's name is a known concept, else a local code), its name as label;
- the algorithm that made it (name/version of the model and of fedvox) in each
  segment's AlgorithmIdentification, typed AUTOMATIC.

The SEG is written BINARY (one bit per pixel per segment, the form every viewer
reads); empty frames are omitted.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

import numpy as np

from ..errors import ImagingError
from .atomic import atomic_path
from .volume import Volume

# label names read as abnormal structures (else anatomical); SNOMED CT category codes
_ABNORMAL = ("lesion", "tumor", "tumour", "mass", "nodule", "cyst", "metastasis", "neoplasm", "cancer")
LOCAL_SCHEME = "99FEDVOX"  # "99" prefix: a private coding scheme (DICOM PS3.16 8.2)
_LPS = np.array([-1.0, -1.0, 1.0])


def segment_codes(name: str):
    """(category, type) CodedConcepts of a label name: SNOMED CT when pydicom's code
    dictionary has the concept (``liver`` -> SCT 10200004), else a local code."""
    from highdicom.sr import CodedConcept
    from pydicom.sr.codedict import codes
    abnormal = any(w in name.lower() for w in _ABNORMAL)
    category = codes.SCT.MorphologicallyAbnormalStructure if abnormal else codes.SCT.AnatomicalStructure
    camel = "".join(w[:1].upper() + w[1:] for w in name.replace("-", " ").replace("_", " ").split())
    try:
        kind = getattr(codes.SCT, camel)
    except AttributeError:
        kind = CodedConcept(value=camel[:16] or "unnamed", scheme_designator=LOCAL_SCHEME, meaning=name[:64])
    return CodedConcept.from_code(category), CodedConcept.from_code(kind) if not isinstance(kind, CodedConcept) \
        else kind


def _source_datasets(source: str | os.PathLike, series_uid: str | None) -> list:
    import pydicom
    src = Path(source)
    files = sorted(p for p in (src.rglob("*") if src.is_dir() else [src]) if p.is_file())
    found: dict[str, list] = {}
    for f in files:
        try:
            ds = pydicom.dcmread(f)
        except Exception:  # not DICOM (DICOMDIR, notes...): the loader skips these too
            continue
        if "PixelData" in ds and "ImagePositionPatient" in ds:
            found.setdefault(str(ds.SeriesInstanceUID), []).append(ds)
    if series_uid is not None:
        if series_uid not in found:
            raise ImagingError(src, f"no DICOM image of series {series_uid} found")
        return found[series_uid]
    if len(found) != 1:
        raise ImagingError(src, f"{len(found)} DICOM image series found; say which one the segmentation is of")
    return next(iter(found.values()))


def frames_for(labels: np.ndarray, affine: np.ndarray, datasets: Sequence, where) -> np.ndarray:
    """(frames, rows, cols) of ``labels`` (X = columns, Y = rows, Z = slices, RAS affine),
    frame i being the slice that ``datasets[i]`` shows; an error unless every source
    slice lies on the label map's grid."""
    inv = np.linalg.inv(np.asarray(affine, dtype=np.float64))
    out = np.zeros((len(datasets),) + (labels.shape[1], labels.shape[0]), dtype=labels.dtype)
    for i, ds in enumerate(datasets):
        ras = np.asarray([float(v) for v in ds.ImagePositionPatient]) * _LPS
        ijk = inv[:3, :3] @ ras + inv[:3, 3]
        k = int(round(ijk[2]))
        if (int(ds.Rows), int(ds.Columns)) != (labels.shape[1], labels.shape[0]) or \
                np.abs(ijk - [0, 0, k]).max() > 1e-2 or not 0 <= k < labels.shape[2]:
            raise ImagingError(where, f"slice {ds.SOPInstanceUID} ({int(ds.Rows)}x{int(ds.Columns)} at "
                               f"{list(map(float, ds.ImagePositionPatient))}) is not on the label map's grid "
                               f"{labels.shape}: the segmentation must be on the series' own grid")
        out[i] = labels[:, :, k].T
    return out


def write_dicom_seg(labels: Volume, source: str | os.PathLike, out_path: str | os.PathLike,
                    label_names: dict, algorithm: tuple[str, str] = ("fedvox", "unknown"),
                    series_uid: str | None = None, series_description: str = "fedvox segmentation") -> Path:
    """Write ``labels`` (uint8 Volume on the source series' grid) as a DICOM SEG of the
    series in ``source`` (a directory or file; ``series_uid`` picks one of several).
    ``label_names``: {"0": "background", "1": "liver", ...}; ``algorithm``: (name, version)
    of the model. Returns ``out_path``."""
    import highdicom as hd
    from pydicom.sr.codedict import codes
    from pydicom.uid import generate_uid
    out_path = Path(out_path)
    datasets = _source_datasets(source, series_uid)
    arr = np.asarray(labels.array[0] if labels.array.ndim == 4 else labels.array)
    pixels = frames_for(arr, labels.affine, datasets, source)
    fg = sorted(int(k) for k in label_names if int(k) != 0)
    if pixels.max(initial=0) > max(fg, default=0):
        raise ImagingError(out_path, f"label values up to {int(pixels.max())}, but only {fg} are named")
    name, version = algorithm
    algo = hd.AlgorithmIdentificationSequence(name=str(name)[:64], version=str(version)[:64],
                                              family=codes.cid7162.ArtificialIntelligence,
                                              source=f"fedvox {_fedvox_version()}")
    segments = []
    for k in fg:
        category, kind = segment_codes(str(label_names[str(k)]))
        segments.append(hd.seg.SegmentDescription(
            segment_number=k, segment_label=str(label_names[str(k)])[:64], segmented_property_category=category,
            segmented_property_type=kind, algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
            algorithm_identification=algo))
    seg = hd.seg.Segmentation(
        source_images=datasets, pixel_array=pixels.astype(np.uint8),
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY, segment_descriptions=segments,
        series_instance_uid=generate_uid(), series_number=int(getattr(datasets[0], "SeriesNumber", 0) or 0) + 1000,
        sop_instance_uid=generate_uid(), instance_number=1, manufacturer="fedvox",
        manufacturer_model_name=str(name)[:64], software_versions=[str(version)[:64], _fedvox_version()],
        device_serial_number="none", series_description=series_description[:64])
    out_path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(out_path, suffix=".dcm") as tmp:
        seg.save_as(str(tmp))
    return out_path


def _fedvox_version() -> str:
    from importlib.metadata import PackageNotFoundError, version
    try:
        return version("fedvox")
    except PackageNotFoundError:
        return "unknown"


def write_clinical_outputs(labels: Volume, image: Volume, label_names: dict, bundle_dir: str | os.PathLike,
                           dicom_seg: str | os.PathLike | None = None,
                           seg_nrrd: str | os.PathLike | None = None) -> list[Path]:
    """What `fedvox infer --dicom-seg/--seg-nrrd` writes beside the NIfTI: a DICOM SEG of
    the input series (``image`` must have been read from DICOM) and/or a Slicer .seg.nrrd.
    The algorithm identification is the bundle's (its directory name and metadata version)."""
    from .seg_nrrd import write_seg_nrrd
    from .tables import read_json
    out = []
    if dicom_seg is not None:
        if image.meta.get("format") != "dicom":
            raise ImagingError(image.source, "a DICOM SEG needs a DICOM series as input (this is "
                               f"{image.meta.get('format', 'not DICOM')}); use --seg-nrrd or the NIfTI")
        meta = read_json(Path(bundle_dir) / "configs" / "metadata.json", {})
        algo = (str(meta.get("name") or Path(bundle_dir).resolve().name), str(meta.get("version", "unknown")))
        out.append(write_dicom_seg(labels, image.source, dicom_seg, label_names, algo,
                                   series_uid=image.meta.get("series_uid")))
    if seg_nrrd is not None:
        out.append(write_seg_nrrd(labels, seg_nrrd, label_names))
    return out
