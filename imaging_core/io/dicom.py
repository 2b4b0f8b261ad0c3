"""DICOM series (classic single-frame or enhanced multi-frame) -> Volume.

Geometry comes only from ImagePositionPatient / ImageOrientationPatient /
PixelSpacing: slices are ordered along the slice normal, never by file name
or InstanceNumber (both are routinely wrong in real exports).

Conventions
-----------
* DICOM patient coordinates are LPS; the Volume affine is RAS+ (first two rows
  of the LPS affine negated).
* Voxel index ``(i, j, k)`` = (column, row, slice); the array is
  ``(1, Columns, Rows, Slices)``.
* Affine columns: row cosine * PixelSpacing[1], column cosine * PixelSpacing[0],
  the mean step between consecutive ImagePositionPatient vectors (equals
  normal * slice spacing; a constant in-plane shift from gantry tilt becomes a
  sheared affine instead of being silently dropped), origin = first slice IPP.

Tolerances (DS values are decimal strings of <= 16 characters, and scanners
round them, so exact comparisons would reject valid data)
* orientation cosines: equal within ``IOP_TOL`` = 1e-3 between slices;
* slice steps: equal within ``SPACING_RTOL`` = 1e-2 (relative) of the typical
  step; a step ~k times the typical one is reported as a gap (missing slices);
* duplicate slice: two positions closer than ``DUP_TOL_MM`` = 1e-3 mm along
  the normal.

Pixels are read only for the selected series, after all headers were checked.
Patient-identifying fields never go into ``meta``.
"""
from __future__ import annotations

import os
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import ImagingError
from ..geometry import check_affine, check_shape
from .volume import Volume

IOP_TOL = 1e-3
SPACING_RTOL = 1e-2
DUP_TOL_MM = 1e-3

_LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])

# What to install for transfer syntaxes pydicom cannot decode on its own.
_LIBJPEG = "pip install pylibjpeg pylibjpeg-libjpeg"
_OPENJPEG = "pip install pylibjpeg pylibjpeg-openjpeg"
_GDCM = "pip install python-gdcm"
_INSTALL_HINTS = {
    "1.2.840.10008.1.2.4.50": f"`{_LIBJPEG}` or `pip install pillow` or `{_GDCM}`",  # JPEG baseline
    "1.2.840.10008.1.2.4.51": f"`{_LIBJPEG}` or `pip install pillow` or `{_GDCM}`",  # JPEG extended
    "1.2.840.10008.1.2.4.57": f"`{_LIBJPEG}` or `{_GDCM}`",  # JPEG lossless
    "1.2.840.10008.1.2.4.70": f"`{_LIBJPEG}` or `{_GDCM}`",  # JPEG lossless SV1
    "1.2.840.10008.1.2.4.80": f"`{_LIBJPEG}` or `{_GDCM}`",  # JPEG-LS lossless
    "1.2.840.10008.1.2.4.81": f"`{_LIBJPEG}` or `{_GDCM}`",  # JPEG-LS near-lossless
    "1.2.840.10008.1.2.4.90": f"`{_OPENJPEG}` or `{_GDCM}`",  # JPEG 2000 lossless
    "1.2.840.10008.1.2.4.91": f"`{_OPENJPEG}` or `{_GDCM}`",  # JPEG 2000
    "1.2.840.10008.1.2.4.201": f"`{_OPENJPEG}`",  # HTJ2K lossless
    "1.2.840.10008.1.2.4.202": f"`{_OPENJPEG}`",  # HTJ2K lossless RPCL
    "1.2.840.10008.1.2.4.203": f"`{_OPENJPEG}`",  # HTJ2K
    "1.2.840.10008.1.2.5": "`pip install pylibjpeg pylibjpeg-rle`",  # RLE (normally native)
}
_DEFAULT_HINT = f"`pip install pylibjpeg pylibjpeg-libjpeg pylibjpeg-openjpeg` or `{_GDCM}`"

_DICOMDIR_SOP = "1.2.840.10008.1.3.10"


@dataclass
class _Slice:
    """Geometry and rescale of one 2D image (a file, or one frame of a file)."""

    path: Path
    frame: int | None  # None: classic single-frame file
    ipp: np.ndarray  # (3,) LPS mm
    row_cos: np.ndarray  # (3,) direction of increasing column index
    col_cos: np.ndarray  # (3,) direction of increasing row index
    spacing: tuple[float, float]  # PixelSpacing: (between rows, between columns)
    rows: int
    cols: int
    slope: float
    intercept: float
    thickness: float | None  # SpacingBetweenSlices or SliceThickness (single slice only)

    def where(self) -> str:
        return str(self.path) if self.frame is None else f"{self.path} (frame {self.frame + 1})"


@dataclass
class _Series:
    uid: str
    modality: str
    slices: list[_Slice]
    transfer_syntaxes: dict[Path, object]  # file -> pydicom UID


# --------------------------------------------------------------------------- public


def load_dicom_series(path, series_uid: str | None = None) -> Volume:
    """Read one DICOM series into a ``(1, Columns, Rows, Slices)`` Volume.

    ``path``: a directory (scanned recursively; non-DICOM and non-image files
    such as DICOMDIR are skipped), a single file, or a list of files. When the
    files hold several series, ``series_uid`` picks one; otherwise it is an
    error that lists them.
    """
    import pydicom  # noqa: F401  (imported here: pydicom is only needed for DICOM)

    files, where, strict = _collect_files(path)
    series = _read_headers(files, where, strict)
    chosen = _choose_series(series, series_uid, where)
    _check_decodable(chosen)
    ordered, step = _sort_and_check(chosen.slices, where)
    affine = check_affine(_build_affine(ordered, step), where)
    array, stored_dtype = _read_pixels(ordered)
    return Volume(array, affine, {
        "source": str(where), "format": "dicom",
        "original_affine": affine.copy(), "original_shape": tuple(array.shape[1:]),
        "original_dtype": stored_dtype,
        "series_uid": chosen.uid, "modality": chosen.modality, "n_slices": len(ordered),
    })


# --------------------------------------------------------------------------- files


def _collect_files(path) -> tuple[list[Path], Path, bool]:
    """Candidate files, the path to name in series-level errors, and whether
    the files were named explicitly (then a non-DICOM file is an error)."""
    if isinstance(path, (list, tuple)):
        files = [Path(p) for p in path]
        if not files:
            raise ImagingError(None, "no DICOM files given (empty list)")
        for f in files:
            if not f.is_file():
                raise ImagingError(f, "file not found")
        where = Path(os.path.commonpath([str(f.absolute()) for f in files]))
        return files, where, True
    p = Path(path)
    if p.is_dir():
        # sorted() only makes error messages reproducible; order is not used.
        files = sorted(f for f in p.rglob("*") if f.is_file())
        return files, p, False
    if p.is_file():
        return [p], p, True
    raise ImagingError(p, "file or directory not found")


def _has_dicom_magic(f: Path) -> bool:
    try:
        with open(f, "rb") as fh:
            fh.seek(128)
            return fh.read(4) == b"DICM"
    except OSError:
        return False


def _read_headers(files: list[Path], where: Path, strict: bool) -> dict[str, _Series]:
    """Parse headers (no pixels) and group image slices by SeriesInstanceUID.

    ``strict`` (files named explicitly): a non-DICOM or non-image file is an
    error. In a directory scan such files are skipped silently.
    """
    import pydicom
    from pydicom.uid import UID

    series: dict[str, _Series] = {}
    for f in files:
        # Check the magic ourselves: cheaper than letting pydicom fail, and a
        # file that *claims* to be DICOM but is corrupt should be an error.
        if not _has_dicom_magic(f):
            if strict:
                raise ImagingError(f, "not a DICOM file (no 'DICM' marker at byte 128)")
            continue
        try:
            ds = pydicom.dcmread(f, stop_before_pixels=True)
        except Exception as e:
            raise ImagingError(f, f"corrupt DICOM header ({_one_line(e)})") from None
        sop = UID(str(ds.get("SOPClassUID", "") or ds.file_meta.get("MediaStorageSOPClassUID", "")))
        if sop == _DICOMDIR_SOP or "Rows" not in ds or "Columns" not in ds:
            # pydicom parses a truncated file without complaint: an image SOP
            # class without Rows/Columns is damage, not a non-image object.
            if "Image Storage" in sop.name and sop != _DICOMDIR_SOP:
                raise ImagingError(f, f"{sop.name} file without Rows/Columns: truncated or "
                                      "corrupt header")
            if strict:
                raise ImagingError(f, f"DICOM file holds no image (SOP class "
                                      f"{sop.name if sop else 'unknown'})")
            continue
        uid = str(ds.get("SeriesInstanceUID", "")).strip()
        if not uid:
            raise ImagingError(f, "missing SeriesInstanceUID (0020,000E)")
        s = series.setdefault(uid, _Series(uid, str(ds.get("Modality", "")), [], {}))
        s.slices.extend(_slices_of(ds, f))
        s.transfer_syntaxes[f] = ds.file_meta.get("TransferSyntaxUID")
    if not series:
        raise ImagingError(where, "no DICOM files found"
                           + (f" (scanned {len(files)} files)" if files else " (empty)"))
    return series


def _choose_series(series: dict[str, _Series], uid: str | None, where: Path) -> _Series:
    def listing() -> str:
        return "; ".join(f"{s.uid} ({len(s.slices)} slices, {s.modality or '?'})"
                         for s in series.values())

    if uid is not None:
        if uid not in series:
            raise ImagingError(where, f"series_uid {uid} not found; available: {listing()}")
        return series[uid]
    if len(series) > 1:
        raise ImagingError(where, f"{len(series)} DICOM series found, pick one with "
                                  f"series_uid=...: {listing()}")
    return next(iter(series.values()))


# --------------------------------------------------------------------------- header parsing


def _floats(ds, keyword: str, n: int, where: str, tag: str) -> np.ndarray:
    if keyword not in ds or ds[keyword].value in (None, ""):
        raise ImagingError(where, f"missing {keyword} {tag}")
    try:
        v = np.array([float(x) for x in np.atleast_1d(ds[keyword].value)], dtype=np.float64)
    except (TypeError, ValueError):
        raise ImagingError(where, f"unreadable {keyword} {tag}: {ds[keyword].value!r}") from None
    if v.shape != (n,) or not np.all(np.isfinite(v)):
        raise ImagingError(where, f"{keyword} {tag} must be {n} finite numbers, got {list(v)}")
    return v


def _orientation(iop: np.ndarray, where: str) -> tuple[np.ndarray, np.ndarray]:
    """Unit row/column cosines; refuse non-orthonormal orientations."""
    r, c = iop[:3], iop[3:]
    nr, nc = np.linalg.norm(r), np.linalg.norm(c)
    if abs(nr - 1) > 1e-2 or abs(nc - 1) > 1e-2 or abs(float(r @ c)) > 1e-2:
        raise ImagingError(where, f"ImageOrientationPatient {list(iop)} is not two orthogonal "
                                  "unit vectors")
    return r / nr, c / nc


def _optional_float(item, keyword: str) -> float | None:
    if item is None or keyword not in item or item[keyword].value in (None, ""):
        return None
    try:
        v = float(item[keyword].value)
    except (TypeError, ValueError):
        return None
    return v if np.isfinite(v) else None


def _pixel_basics(ds, f: Path) -> tuple[int, int]:
    """Rows/Columns, validated before anything is allocated."""
    try:
        rows, cols = int(ds.Rows), int(ds.Columns)
    except (TypeError, ValueError):
        raise ImagingError(f, "unreadable Rows/Columns") from None
    check_shape((cols, rows), f)
    spp = int(ds.get("SamplesPerPixel", 1) or 1)
    if spp != 1:
        raise ImagingError(f, f"colour images (SamplesPerPixel={spp}) are not supported")
    return rows, cols


def _slices_of(ds, f: Path) -> list[_Slice]:
    """One _Slice for a classic file, one per frame for an enhanced multi-frame file."""
    rows, cols = _pixel_basics(ds, f)
    if "PerFrameFunctionalGroupsSequence" in ds:
        return _enhanced_slices(ds, f, rows, cols)
    n_frames = int(ds.get("NumberOfFrames", 1) or 1)
    if n_frames > 1:
        raise ImagingError(f, f"multi-frame file ({n_frames} frames) without per-frame "
                              "geometry (PerFrameFunctionalGroupsSequence) is not supported")
    w = str(f)
    iop = _floats(ds, "ImageOrientationPatient", 6, w, "(0020,0037)")
    ipp = _floats(ds, "ImagePositionPatient", 3, w, "(0020,0032)")
    ps = _floats(ds, "PixelSpacing", 2, w, "(0028,0030)")
    return [_make_slice(f, None, ipp, iop, ps, rows, cols, ds, ds, w)]


def _make_slice(f, frame, ipp, iop, ps, rows, cols, rescale_item, measures_item, w) -> _Slice:
    if np.any(ps <= 0):
        raise ImagingError(w, f"non-positive PixelSpacing {list(ps)}")
    r, c = _orientation(iop, w)
    slope = _optional_float(rescale_item, "RescaleSlope")
    inter = _optional_float(rescale_item, "RescaleIntercept")
    thick = (_optional_float(measures_item, "SpacingBetweenSlices")
             or _optional_float(measures_item, "SliceThickness"))
    return _Slice(f, frame, ipp, r, c, (float(ps[0]), float(ps[1])), rows, cols,
                  1.0 if slope is None or slope == 0 else slope,
                  0.0 if inter is None else inter, thick)


def _enhanced_slices(ds, f: Path, rows: int, cols: int) -> list[_Slice]:
    """Per-frame geometry of an enhanced CT/MR file (functional groups)."""
    per_frame = ds.PerFrameFunctionalGroupsSequence
    shared = ds.SharedFunctionalGroupsSequence[0] if ds.get("SharedFunctionalGroupsSequence") else None
    n_frames = int(ds.get("NumberOfFrames", len(per_frame)) or len(per_frame))
    if len(per_frame) != n_frames:
        raise ImagingError(f, f"NumberOfFrames={n_frames} but PerFrameFunctionalGroupsSequence "
                              f"has {len(per_frame)} items")

    def group(item, name):
        # A functional group lives in the frame's item, else in the shared one.
        for src in (item, shared):
            if src is not None and src.get(name):
                return src[name][0]
        return None

    out = []
    for k, item in enumerate(per_frame):
        w = f"{f} (frame {k + 1})"
        pos, ori, meas = (group(item, "PlanePositionSequence"),
                          group(item, "PlaneOrientationSequence"),
                          group(item, "PixelMeasuresSequence"))
        for name, g in (("PlanePositionSequence", pos), ("PlaneOrientationSequence", ori),
                        ("PixelMeasuresSequence", meas)):
            if g is None:
                raise ImagingError(f, f"frame {k + 1}: missing {name} (per-frame or shared)")
        ipp = _floats(pos, "ImagePositionPatient", 3, w, "(0020,0032)")
        iop = _floats(ori, "ImageOrientationPatient", 6, w, "(0020,0037)")
        ps = _floats(meas, "PixelSpacing", 2, w, "(0028,0030)")
        # Rescale: per-frame/shared PixelValueTransformation, else top level (older MR).
        rescale = group(item, "PixelValueTransformationSequence") or ds
        s = _make_slice(f, k, ipp, iop, ps, rows, cols, rescale, meas, w)
        out.append(s)
    return out


# --------------------------------------------------------------------------- geometry


def _check_consistent(slices: list[_Slice]) -> None:
    """Same grid and orientation in every slice (checked against the first)."""
    ref = slices[0]
    for s in slices[1:]:
        if (s.rows, s.cols) != (ref.rows, ref.cols):
            raise ImagingError(s.where(), f"Rows x Columns {s.rows}x{s.cols} differs from "
                                          f"{ref.rows}x{ref.cols} in {ref.where()}")
        if not np.allclose(s.spacing, ref.spacing, rtol=1e-4, atol=1e-6):
            raise ImagingError(s.where(), f"PixelSpacing {list(s.spacing)} differs from "
                                          f"{list(ref.spacing)} in {ref.where()}")
        if (np.abs(s.row_cos - ref.row_cos).max() > IOP_TOL
                or np.abs(s.col_cos - ref.col_cos).max() > IOP_TOL):
            raise ImagingError(s.where(), "inconsistent ImageOrientationPatient between slices: "
                                          f"{_fmt(np.r_[s.row_cos, s.col_cos])} here, "
                                          f"{_fmt(np.r_[ref.row_cos, ref.col_cos])} in {ref.where()}")


def _typical_step(steps: np.ndarray) -> float:
    """The step most other steps agree with (ties: the smaller one).

    Unlike the median this stays right when a few slices are missing, e.g.
    steps (1, 2) -> 1, so the 2 is reported as a gap.
    """
    # Distinct values first (to 1e-4 mm): keeps the pairwise count small for
    # thousands of slices.
    uniq, counts = np.unique(np.round(steps, 4), return_counts=True)
    close = np.abs(uniq[:, None] - uniq[None, :]) <= SPACING_RTOL * uniq[:, None]
    agree = close.astype(np.int64) @ counts
    best = np.flatnonzero(agree == agree.max())
    return float(uniq[best].min())


def _sort_and_check(slices: list[_Slice], where: Path) -> tuple[list[_Slice], np.ndarray]:
    """Slices ordered along the normal, and the IPP step vector between them."""
    _check_consistent(slices)
    ref = slices[0]
    normal = np.cross(ref.row_cos, ref.col_cos)
    if len(slices) == 1:
        # One slice has no neighbour to measure from: use its thickness (1 mm if absent).
        return slices, normal * (ref.thickness or 1.0)

    dist = np.array([s.ipp @ normal for s in slices])
    order = np.argsort(dist, kind="stable")
    slices = [slices[i] for i in order]
    dist = dist[order]
    steps = np.diff(dist)

    for i in np.flatnonzero(steps < DUP_TOL_MM):
        a, b = slices[i], slices[i + 1]
        raise ImagingError(where, f"duplicate slice at position {_fmt(a.ipp)} mm (LPS): "
                                  f"{a.where()} and {b.where()}")

    typical = _typical_step(steps)
    for i, s in enumerate(steps):
        if abs(s - typical) <= SPACING_RTOL * typical:
            continue
        a, b = slices[i], slices[i + 1]
        k = int(round(s / typical))
        between = (f"between {a.where()} ({dist[i]:.4f} mm along the normal) and "
                   f"{b.where()} ({dist[i + 1]:.4f} mm)")
        if k >= 2 and abs(s - k * typical) <= SPACING_RTOL * k * typical:
            raise ImagingError(where, f"gap in slice positions: {k - 1} slice(s) missing "
                                      f"{between}; step {s:.4g} mm, expected {typical:.4g} mm")
        raise ImagingError(where, f"inconsistent slice spacing: step {s:.4g} mm {between}, "
                                  f"other steps are {typical:.4g} mm "
                                  f"(tolerance {SPACING_RTOL:.0%})")

    # Positions must also lie on a line (a constant in-plane shift is gantry
    # tilt and is kept as shear; a varying one means the slices do not stack).
    step = (slices[-1].ipp - slices[0].ipp) / (len(slices) - 1)
    for i in range(len(slices) - 1):
        d = slices[i + 1].ipp - slices[i].ipp
        if np.linalg.norm(d - step) > SPACING_RTOL * typical + 1e-3:
            raise ImagingError(where, f"slice positions do not lie on a line: step "
                                      f"{_fmt(d)} from {slices[i].where()} to "
                                      f"{slices[i + 1].where()}, mean step {_fmt(step)}")
    return slices, step


def _build_affine(slices: list[_Slice], step: np.ndarray) -> np.ndarray:
    """Voxel (column, row, slice) -> RAS+ mm."""
    ref = slices[0]
    row_sp, col_sp = ref.spacing  # PixelSpacing = (row spacing, column spacing)
    lps = np.eye(4)
    lps[:3, 0] = ref.row_cos * col_sp  # moving along a row = next column
    lps[:3, 1] = ref.col_cos * row_sp  # moving down a column = next row
    lps[:3, 2] = step
    lps[:3, 3] = ref.ipp
    return _LPS_TO_RAS @ lps


def _one_line(e: Exception) -> str:
    """An exception as one line (ImagingError messages are single-line)."""
    return f"{type(e).__name__}: " + " ".join(str(e).split())


def _fmt(v) -> str:
    return "(" + ", ".join(f"{x:.4g}" for x in np.asarray(v, dtype=float)) + ")"


# --------------------------------------------------------------------------- pixels


def _check_decodable(series: _Series) -> None:
    """Fail before reading any pixels when a compressed syntax has no decoder."""
    from pydicom.pixels.decoders.base import get_decoder
    from pydicom.uid import UID

    for f, ts in series.transfer_syntaxes.items():
        if ts is None:
            raise ImagingError(f, "missing TransferSyntaxUID in the file meta information")
        ts = UID(str(ts))
        if not ts.is_compressed:
            continue
        try:
            available = get_decoder(ts).is_available
        except (NotImplementedError, ValueError, KeyError):
            available = False
        if not available:
            hint = _INSTALL_HINTS.get(str(ts), _DEFAULT_HINT)
            raise ImagingError(f, f"pixel data is compressed with {ts.name} ({ts}) and no "
                                  f"decoder for it is installed; install one: {hint}")


def _read_frames(f: Path, rows: int, cols: int) -> np.ndarray:
    """All frames of one file as (frames, rows, cols), stored values (no rescale)."""
    import pydicom

    try:
        ds = pydicom.dcmread(f)
        if "PixelData" not in ds:
            raise ImagingError(f, "no PixelData in an image file")
        arr = ds.pixel_array
    except ImagingError:
        raise
    except Exception as e:
        ts = ds.file_meta.get("TransferSyntaxUID", "?") if "ds" in locals() else "?"
        name = getattr(ts, "name", ts)
        raise ImagingError(f, f"cannot decode pixel data ({name}): {_one_line(e)}") from None
    arr = arr.reshape((-1,) + arr.shape[-2:]) if arr.ndim >= 2 else arr
    if arr.shape[1:] != (rows, cols):
        raise ImagingError(f, f"decoded pixel data has shape {arr.shape[1:]}, header says "
                              f"{rows}x{cols}")
    return arr


def _read_pixels(slices: list[_Slice]) -> tuple[np.ndarray, str]:
    """(1, Columns, Rows, Slices) with rescale applied, and the stored dtype."""
    ref = slices[0]
    n = len(slices)
    check_shape((ref.cols, ref.rows, n), ref.path)

    # Read each file once (an enhanced file holds every frame).
    cache: dict[Path, np.ndarray] = {}
    need = defaultdict(int)
    for s in slices:
        need[s.path] += 1
    raw = []
    for s in slices:
        if s.path not in cache:
            cache[s.path] = _read_frames(s.path, ref.rows, ref.cols)
        frames = cache[s.path]
        idx = 0 if s.frame is None else s.frame
        if idx >= frames.shape[0]:
            raise ImagingError(s.path, f"frame {idx + 1} missing from pixel data "
                                       f"({frames.shape[0]} frames decoded)")
        raw.append(frames[idx])
        need[s.path] -= 1
        if need[s.path] == 0:
            del cache[s.path]  # drop our reference; raw keeps only the views we need
    stored_dtype = str(raw[0].dtype)

    out_dtype = _output_dtype(slices, raw)
    # Fill a (slices, rows, cols) stack and view it as (cols, rows, slices):
    # a transposed view, no copy, like nibabel's Fortran-order arrays.
    stack = np.empty((n, ref.rows, ref.cols), dtype=out_dtype)
    for k, (s, r) in enumerate(zip(slices, raw)):
        if s.slope == 1.0 and s.intercept == 0.0:
            stack[k] = r
        elif out_dtype == np.int16:
            stack[k] = r.astype(np.int64) * int(s.slope) + int(s.intercept)
        else:
            stack[k] = r.astype(np.float64) * s.slope + s.intercept
    return stack.transpose(2, 1, 0)[None], stored_dtype


def _output_dtype(slices: list[_Slice], raw: list[np.ndarray]):
    """int16 when every rescale is integral and the result fits, else float32."""
    if not all(float(s.slope).is_integer() and float(s.intercept).is_integer() for s in slices):
        return np.float32
    lo, hi = np.inf, -np.inf
    for s, r in zip(slices, raw):
        ends = (float(r.min()) * s.slope + s.intercept, float(r.max()) * s.slope + s.intercept)
        lo, hi = min(lo, *ends), max(hi, *ends)
    info = np.iinfo(np.int16)
    return np.int16 if info.min <= lo and hi <= info.max else np.float32
