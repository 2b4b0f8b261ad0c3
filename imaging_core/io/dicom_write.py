"""Volume -> DICOM: classic single-frame CT/MR series, or one enhanced multi-frame file.

The geometry written is exactly what ``imaging_core.io.dicom`` reads back:
the affine (RAS+) is converted to LPS; its first column gives the row
direction cosine and the column spacing, the second the column cosine and
row spacing, the third the step between consecutive ImagePositionPatient.

Limitation (inherent to DICOM, not to this writer): readers order slices
along the right-handed normal row x column. For a left-handed affine
(det < 0) the series reads back with the slice axis reversed (same voxels in
space, array flipped along k, affine adjusted accordingly).

Output is anonymous synthetic data: PatientName/PatientID default to "ANON",
no dates of birth or institution fields are written.
"""
from __future__ import annotations

import io
import secrets
from datetime import datetime
from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.uid import (PYDICOM_IMPLEMENTATION_UID, UID, ExplicitVRLittleEndian,
                         ImplicitVRLittleEndian, RLELossless, generate_uid)
from pydicom.valuerep import format_number_as_ds

from ..errors import ImagingError
from ..geometry import check_affine
from .atomic import write_bytes_atomic
from .volume import Volume

CT_IMAGE_STORAGE = UID("1.2.840.10008.5.1.4.1.1.2")
MR_IMAGE_STORAGE = UID("1.2.840.10008.5.1.4.1.1.4")
ENHANCED_CT_IMAGE_STORAGE = UID("1.2.840.10008.5.1.4.1.1.2.1")
ENHANCED_MR_IMAGE_STORAGE = UID("1.2.840.10008.5.1.4.1.1.4.1")

_SOP_CLASSES = {"CT": (CT_IMAGE_STORAGE, ENHANCED_CT_IMAGE_STORAGE),
                "MR": (MR_IMAGE_STORAGE, ENHANCED_MR_IMAGE_STORAGE)}
_UNCOMPRESSED = (ExplicitVRLittleEndian, ImplicitVRLittleEndian)
_LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])  # its own inverse


# --------------------------------------------------------------------------- public


def write_dicom_series(vol: Volume, out_dir, *, modality: str = "CT",
                       series_uid: str | None = None, study_uid: str | None = None,
                       rescale_slope: float = 1.0, rescale_intercept: float = 0.0,
                       patient_id: str = "ANON", series_description: str = "",
                       transfer_syntax: str = ExplicitVRLittleEndian,
                       filenames: str = "random") -> list[Path]:
    """Write ``vol`` as one single-frame CT/MR Image Storage file per slice.

    Stored values are ``round((value - intercept) / slope)`` as int16 (uint16
    when they are non-negative and exceed int16). ``filenames="random"`` gives
    names unrelated to slice order (so readers cannot cheat by sorting names);
    ``"ordered"`` gives IM00001.dcm, ... . ``transfer_syntax`` may be explicit
    or implicit VR little endian, or RLE Lossless. Returns the paths in slice
    order.
    """
    out_dir = Path(out_dir)
    sop_class = _sop_class(modality, out_dir, enhanced=False)
    ts = _transfer_syntax(transfer_syntax, out_dir)
    if filenames not in ("random", "ordered"):
        raise ImagingError(out_dir, f"filenames must be 'random' or 'ordered', got {filenames!r}")
    geo = _Geometry(vol, out_dir)
    stored, pixel_rep = _stored_values(vol, rescale_slope, rescale_intercept, out_dir)

    ds = _base_dataset(sop_class, modality, study_uid, series_uid, patient_id,
                       series_description, rows=geo.rows, cols=geo.cols, pixel_rep=pixel_rep)
    ds.ImageOrientationPatient = geo.iop
    ds.PixelSpacing = geo.pixel_spacing
    ds.SliceThickness = _ds(geo.thickness)
    ds.SpacingBetweenSlices = _ds(geo.thickness)
    ds.RescaleSlope = _ds(rescale_slope)
    ds.RescaleIntercept = _ds(rescale_intercept)
    if modality == "CT":
        ds.RescaleType = "HU"
    ds.ImageType = ["DERIVED", "SECONDARY", "AXIAL"]

    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    # One Dataset reused for all slices: only the per-slice fields change,
    # which keeps ~100 slices well under a second.
    for k in range(geo.n_slices):
        sop_uid = generate_uid()
        ds.file_meta.MediaStorageSOPInstanceUID = sop_uid
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian if ts == RLELossless else ts
        ds.SOPInstanceUID = sop_uid
        ds.InstanceNumber = k + 1
        ipp = geo.position(k)
        ds.ImagePositionPatient = [_ds(x) for x in ipp]
        ds.SliceLocation = _ds(float(ipp @ geo.normal))
        _set_pixels(ds, stored[k], ts)
        name = (f"{secrets.token_hex(8)}.dcm" if filenames == "random" else f"IM{k + 1:05d}.dcm")
        paths.append(_write(ds, out_dir / name))
    return paths


def write_enhanced_multiframe(vol: Volume, path, *, modality: str = "CT",
                              series_uid: str | None = None, study_uid: str | None = None,
                              rescale_slope: float = 1.0, rescale_intercept: float = 0.0,
                              patient_id: str = "ANON", series_description: str = "",
                              shuffle_frames: bool = False,
                              per_frame_measures: bool = False) -> Path:
    """Write ``vol`` as one Enhanced CT/MR Image Storage file.

    Frame geometry: PlanePositionSequence per frame; PlaneOrientationSequence,
    PixelMeasuresSequence and PixelValueTransformationSequence shared (or
    PixelMeasures per frame with ``per_frame_measures``). ``shuffle_frames``
    stores frames in random order, for testing that readers sort by position.
    """
    path = Path(path)
    sop_class = _sop_class(modality, path, enhanced=True)
    geo = _Geometry(vol, path)
    stored, pixel_rep = _stored_values(vol, rescale_slope, rescale_intercept, path)

    ds = _base_dataset(sop_class, modality, study_uid, series_uid, patient_id,
                       series_description, rows=geo.rows, cols=geo.cols, pixel_rep=pixel_rep)
    ds.ImageType = ["DERIVED", "SECONDARY", "VOLUME", "NONE"]
    ds.NumberOfFrames = geo.n_slices
    ds.InstanceNumber = 1
    ds.ContentQualification = "RESEARCH"
    ds.BurnedInAnnotation = "NO"
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()

    measures = Dataset()
    measures.PixelSpacing = geo.pixel_spacing
    measures.SliceThickness = _ds(geo.thickness)
    measures.SpacingBetweenSlices = _ds(geo.thickness)
    orientation = Dataset()
    orientation.ImageOrientationPatient = geo.iop
    rescale = Dataset()
    rescale.RescaleSlope = _ds(rescale_slope)
    rescale.RescaleIntercept = _ds(rescale_intercept)
    rescale.RescaleType = "HU" if modality == "CT" else "US"
    shared = Dataset()
    shared.PlaneOrientationSequence = Sequence([orientation])
    shared.PixelValueTransformationSequence = Sequence([rescale])
    if not per_frame_measures:
        shared.PixelMeasuresSequence = Sequence([measures])
    ds.SharedFunctionalGroupsSequence = Sequence([shared])

    order = np.arange(geo.n_slices)
    if shuffle_frames:
        np.random.default_rng().shuffle(order)
    per_frame = []
    for k in order:
        item = Dataset()
        pos = Dataset()
        pos.ImagePositionPatient = [_ds(x) for x in geo.position(int(k))]
        item.PlanePositionSequence = Sequence([pos])
        content = Dataset()
        content.StackID = "1"
        content.InStackPositionNumber = int(k) + 1
        item.FrameContentSequence = Sequence([content])
        if per_frame_measures:
            item.PixelMeasuresSequence = Sequence([measures])
        per_frame.append(item)
    ds.PerFrameFunctionalGroupsSequence = Sequence(per_frame)

    _set_pixels(ds, np.ascontiguousarray(stored[order]), ExplicitVRLittleEndian)
    return _write(ds, path)


# --------------------------------------------------------------------------- geometry


class _Geometry:
    """DICOM plane geometry (LPS) of a Volume's affine."""

    def __init__(self, vol: Volume, where: Path):
        if vol.array.ndim != 4 or vol.array.shape[0] != 1:
            raise ImagingError(where, f"DICOM writer needs a single-channel volume, got array "
                                      f"shape {vol.array.shape}")
        self.cols, self.rows, self.n_slices = (int(s) for s in vol.array.shape[1:])
        lps = _LPS_TO_RAS @ check_affine(vol.affine, where)
        c0, c1, self.step, self.origin = lps[:3, 0], lps[:3, 1], lps[:3, 2], lps[:3, 3]
        col_sp, row_sp = np.linalg.norm(c0), np.linalg.norm(c1)
        row_cos, col_cos = c0 / col_sp, c1 / row_sp
        if abs(float(row_cos @ col_cos)) > 1e-4:
            raise ImagingError(where, "affine shears the first two axes; DICOM in-plane axes "
                                      "must be orthogonal")
        self.normal = np.cross(row_cos, col_cos)
        self.iop = [_ds(x) for x in np.r_[row_cos, col_cos]]
        self.pixel_spacing = [_ds(row_sp), _ds(col_sp)]  # (between rows, between columns)
        self.thickness = abs(float(self.step @ self.normal))

    def position(self, k: int) -> np.ndarray:
        return self.origin + k * self.step


# --------------------------------------------------------------------------- datasets


def _ds(x: float) -> str:
    """A DS string (<= 16 characters) keeping as many digits as fit."""
    return format_number_as_ds(float(x))


def _sop_class(modality: str, where: Path, enhanced: bool) -> UID:
    if modality not in _SOP_CLASSES:
        raise ImagingError(where, f"modality must be 'CT' or 'MR', got {modality!r}")
    return _SOP_CLASSES[modality][1 if enhanced else 0]


def _transfer_syntax(ts, where: Path) -> UID:
    ts = UID(str(ts))
    if ts not in _UNCOMPRESSED and ts != RLELossless:
        raise ImagingError(where, f"unsupported transfer syntax for writing: {ts.name} ({ts}); "
                                  "use Explicit/Implicit VR Little Endian or RLE Lossless")
    return ts


def _stored_values(vol: Volume, slope: float, intercept: float, where: Path):
    """Stored integers as contiguous (Z, Y, X) frames -- DICOM (frame, row, column) --
    and the PixelRepresentation (1 signed, 0 unsigned)."""
    if not np.isfinite(slope) or slope == 0 or not np.isfinite(intercept):
        raise ImagingError(where, f"invalid rescale slope/intercept {slope}/{intercept}")
    # One transposing copy up front; slicing per frame later is then free.
    arr = np.ascontiguousarray(np.asarray(vol.array[0]).transpose(2, 1, 0))
    if arr.dtype.kind == "f" and not np.isfinite(arr).all():
        raise ImagingError(where, "volume contains NaN or inf voxels")
    if slope == 1 and intercept == 0 and arr.dtype in (np.int16, np.uint16):
        return arr, int(arr.dtype == np.int16)  # already storable as is
    if slope == 1 and intercept == 0 and arr.dtype.kind in "iub":
        stored = arr.astype(np.int64)  # exact for integer data, no float round trip
    else:
        stored = np.rint((arr.astype(np.float64) - intercept) / slope)
    lo, hi = (stored.min(), stored.max()) if stored.size else (0, 0)
    if lo >= -32768 and hi <= 32767:
        return stored.astype(np.int16), 1
    if lo >= 0 and hi <= 65535:
        return stored.astype(np.uint16), 0
    raise ImagingError(where, f"stored values {lo:.0f}..{hi:.0f} do not fit 16 bits with "
                              f"slope {slope} and intercept {intercept}; choose another slope")


def _base_dataset(sop_class, modality, study_uid, series_uid, patient_id,
                  series_description, *, rows: int, cols: int, pixel_rep: int) -> Dataset:
    """Patient/study/series/frame-of-reference and image pixel module attributes."""
    now = datetime.now()
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID

    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = sop_class
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.PatientName = patient_id
    ds.PatientID = patient_id
    ds.PatientBirthDate = ""
    ds.PatientSex = ""
    ds.StudyInstanceUID = study_uid or generate_uid()
    ds.SeriesInstanceUID = series_uid or generate_uid()
    ds.FrameOfReferenceUID = generate_uid()
    ds.PositionReferenceIndicator = ""
    ds.StudyDate = ds.SeriesDate = ds.ContentDate = now.strftime("%Y%m%d")
    ds.StudyTime = ds.SeriesTime = ds.ContentTime = now.strftime("%H%M%S")
    ds.StudyID = "1"
    ds.AccessionNumber = ""
    ds.ReferringPhysicianName = ""
    ds.Modality = modality
    ds.SeriesNumber = 1
    ds.SeriesDescription = series_description
    ds.Manufacturer = "fedvox"
    ds.AcquisitionNumber = 1
    if modality == "MR":
        # Type 1 in the MR Image module; values describe "unknown/derived".
        ds.ScanningSequence = "RM"
        ds.SequenceVariant = "NONE"
        ds.ScanOptions = ""
        ds.MRAcquisitionType = "3D"
        ds.EchoTime = ds.RepetitionTime = "0"
        ds.EchoTrainLength = 1
        ds.MagneticFieldStrength = "0"
    else:
        ds.KVP = ""
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows = rows
    ds.Columns = cols
    ds.BitsAllocated = 16
    ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = pixel_rep
    return ds


def _set_pixels(ds: Dataset, frames: np.ndarray, ts: UID) -> None:
    if ts == RLELossless:
        # pydicom's native RLE encoder; it also sets the transfer syntax.
        ds.compress(RLELossless, frames)
        return
    ds.file_meta.TransferSyntaxUID = ts
    ds.PixelData = frames.astype(frames.dtype.newbyteorder("<"), copy=False).tobytes()
    ds["PixelData"].VR = "OW"


def _write(ds: Dataset, path: Path) -> Path:
    buf = io.BytesIO()
    pydicom.dcmwrite(buf, ds, enforce_file_format=True)
    write_bytes_atomic(path, buf.getvalue())
    return path


__all__ = ["write_dicom_series", "write_enhanced_multiframe", "CT_IMAGE_STORAGE",
           "MR_IMAGE_STORAGE", "ENHANCED_CT_IMAGE_STORAGE", "ENHANCED_MR_IMAGE_STORAGE"]
