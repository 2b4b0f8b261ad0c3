"""DICOM series reader/writer: round trips and every kind of bad input, on real files."""
from __future__ import annotations

import shutil

import numpy as np
import pydicom
import pytest
from pydicom.encaps import encapsulate
from pydicom.uid import JPEG2000Lossless, RLELossless, generate_uid

from imaging_core.errors import ImagingError
from imaging_core.io import load_volume
from imaging_core.io.dicom import load_dicom_series
from imaging_core.io.dicom_write import write_dicom_series, write_enhanced_multiframe
from imaging_core.io.volume import Volume

SHAPE = (24, 20, 12)  # (X=columns, Y=rows, Z=slices): all different, to catch transposes


# --------------------------------------------------------------------------- helpers


def _rotation(axis, degrees):
    axis = np.asarray(axis, float) / np.linalg.norm(axis)
    a = np.radians(degrees)
    k = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
    return np.eye(3) + np.sin(a) * k + (1 - np.cos(a)) * k @ k


def _affine(rot, spacing, origin):
    aff = np.eye(4)
    aff[:3, :3] = np.asarray(rot, float) @ np.diag(spacing)
    aff[:3, 3] = origin
    return aff


AFFINES = {
    # Typical CT from DICOM: LPS-like, i.e. RAS axes (-x, -y, +z); det > 0.
    "axial": _affine(np.diag([-1, -1, 1]), (0.7, 0.8, 2.5), (120.0, 110.0, -300.0)),
    # Sagittal stack: i -> posterior, j -> inferior, k -> right (right-handed).
    "sagittal": _affine([[0, 0, 1], [-1, 0, 0], [0, -1, 0]], (0.9, 1.1, 3.0), (-40.0, 80.0, 60.0)),
    "coronal": _affine([[1, 0, 0], [0, 0, 1], [0, -1, 0]], (1.0, 1.2, 2.0), (-100.0, 5.0, 70.0)),
    "oblique": _affine(_rotation((1, 2, 3), 27) @ np.diag([-1, -1, 1]), (0.6, 0.75, 1.5),
                       (33.3, -12.5, 7.25)),
}


def _volume(affine, dtype=np.int16, seed=0):
    rng = np.random.default_rng(seed)
    arr = rng.integers(-1024, 3000, size=(1, *SHAPE)).astype(dtype)
    return Volume(arr, affine)


def _edit(path, fn):
    ds = pydicom.dcmread(path)
    fn(ds)
    ds.save_as(path, enforce_file_format=True)


def _assert_same(loaded, vol, atol=1e-4):
    assert loaded.array.shape == vol.array.shape
    np.testing.assert_array_equal(loaded.array, vol.array)
    np.testing.assert_allclose(loaded.affine, vol.affine, atol=atol)


def _err(fn, *args, **kw) -> str:
    with pytest.raises(ImagingError) as ei:
        fn(*args, **kw)
    msg = str(ei.value)
    assert "\n" not in msg
    return msg


@pytest.fixture
def series(tmp_path):
    """An axial series in tmp_path/s; returns (dir, paths in slice order, volume)."""
    vol = _volume(AFFINES["axial"])
    d = tmp_path / "s"
    return d, write_dicom_series(vol, d), vol


# --------------------------------------------------------------------------- round trips


@pytest.mark.parametrize("name", sorted(AFFINES))
def test_round_trip_affines(tmp_path, name):
    vol = _volume(AFFINES[name])
    write_dicom_series(vol, tmp_path)
    out = load_dicom_series(tmp_path)
    _assert_same(out, vol)
    assert out.array.dtype == np.int16
    m = out.meta
    assert m["format"] == "dicom" and m["modality"] == "CT" and m["n_slices"] == SHAPE[2]
    assert m["original_shape"] == SHAPE and m["original_dtype"] == "int16"
    np.testing.assert_allclose(m["original_affine"], out.affine)
    assert "PatientName" not in m and "PatientID" not in m and "patient_id" not in m


def test_gantry_tilt_shear_round_trip(tmp_path):
    # Slice step with an in-plane component (tilted gantry): kept as shear.
    aff = AFFINES["axial"].copy()
    aff[1, 2] = 0.4
    vol = _volume(aff)
    write_dicom_series(vol, tmp_path)
    _assert_same(load_dicom_series(tmp_path), vol)


def test_left_handed_affine_reads_back_flipped(tmp_path):
    # DICOM orders slices along row x column; a det<0 affine comes back with k
    # reversed: same voxels at the same physical places.
    aff = _affine(np.diag([1, -1, 1]), (0.7, 0.8, 2.5), (0, 0, 0))
    vol = _volume(aff)
    write_dicom_series(vol, tmp_path)
    out = load_dicom_series(tmp_path)
    np.testing.assert_array_equal(out.array, vol.array[..., ::-1])
    n = SHAPE[2] - 1
    np.testing.assert_allclose(out.affine @ [0, 0, n, 1], aff @ [0, 0, 0, 1], atol=1e-4)
    np.testing.assert_allclose(out.affine[:3, :2], aff[:3, :2], atol=1e-6)


def test_shuffled_filenames_and_instance_numbers(tmp_path):
    vol = _volume(AFFINES["oblique"])
    paths = write_dicom_series(vol, tmp_path, filenames="ordered")
    # Rename in reverse and scramble InstanceNumber: neither may drive the order.
    rng = np.random.default_rng(1)
    numbers = rng.permutation(len(paths)) + 1
    for p, n in zip(paths, numbers):
        _edit(p, lambda ds, n=n: setattr(ds, "InstanceNumber", int(n)))
    for k, p in enumerate(paths):
        p.rename(tmp_path / f"z{len(paths) - k:03d}.dcm")
    sub = tmp_path / "nested" / "deeper"
    sub.mkdir(parents=True)
    next(tmp_path.glob("z001.dcm")).rename(sub / "a.dcm")  # recursive scan
    _assert_same(load_dicom_series(tmp_path), vol)


def test_random_filenames_do_not_follow_slice_order(series):
    d, paths, vol = series
    names = [p.name for p in paths]
    assert names != sorted(names)  # 12 random names sorted by chance: ~2e-9
    _assert_same(load_dicom_series(d), vol)


def test_list_of_files_and_single_file(tmp_path, series):
    d, paths, vol = series
    _assert_same(load_dicom_series(list(reversed(paths))), vol)
    one = load_dicom_series(paths[3])
    np.testing.assert_array_equal(one.array[..., 0], vol.array[..., 3])
    # Single slice: third axis from SliceThickness.
    np.testing.assert_allclose(one.affine[:3, 2], vol.affine[:3, 2], atol=1e-4)
    np.testing.assert_allclose(one.affine[:3, 3], (vol.affine @ [0, 0, 3, 1])[:3], atol=1e-4)


def test_rescale_float(tmp_path):
    rng = np.random.default_rng(2)
    arr = (rng.integers(-2000, 2000, size=(1, *SHAPE)) * 0.25 - 1024.5).astype(np.float32)
    vol = Volume(arr, AFFINES["axial"])
    paths = write_dicom_series(vol, tmp_path, rescale_slope=0.25, rescale_intercept=-1024.5)
    ds = pydicom.dcmread(paths[0])
    assert float(ds.RescaleSlope) == 0.25 and float(ds.RescaleIntercept) == -1024.5
    assert ds.pixel_array.dtype == np.int16
    out = load_dicom_series(tmp_path)
    assert out.array.dtype == np.float32
    _assert_same(out, vol)


def test_rescale_integral_gives_int16(tmp_path):
    vol = _volume(AFFINES["axial"])
    write_dicom_series(vol, tmp_path, rescale_slope=1, rescale_intercept=-1024)
    out = load_dicom_series(tmp_path)
    assert out.array.dtype == np.int16
    _assert_same(out, vol)


def test_rescale_per_slice(series):
    # Each slice carries its own intercept; the reader must apply it per slice.
    d, paths, vol = series
    expect = vol.array.astype(np.float32).copy()
    for k, p in enumerate(paths):
        _edit(p, lambda ds, k=k: setattr(ds, "RescaleIntercept", str(10 * k)))
        expect[..., k] += 10 * k
    out = load_dicom_series(d)
    assert out.array.dtype == np.int16
    np.testing.assert_array_equal(out.array, expect)


def test_uint16_range(tmp_path):
    arr = np.random.default_rng(3).integers(0, 65535, size=(1, *SHAPE)).astype(np.uint16)
    vol = Volume(arr, AFFINES["axial"])
    write_dicom_series(vol, tmp_path, modality="MR")
    out = load_dicom_series(tmp_path)
    assert out.meta["modality"] == "MR" and out.meta["original_dtype"] == "uint16"
    np.testing.assert_array_equal(out.array, arr)  # does not fit int16 -> float32, exact


@pytest.mark.parametrize("modality,per_frame", [("CT", False), ("MR", True)])
def test_enhanced_multiframe_round_trip(tmp_path, modality, per_frame):
    vol = _volume(AFFINES["oblique"])
    p = write_enhanced_multiframe(vol, tmp_path / "mf.dcm", modality=modality,
                                  rescale_intercept=-1024, shuffle_frames=True,
                                  per_frame_measures=per_frame)
    ds = pydicom.dcmread(p, stop_before_pixels=True)
    assert int(ds.NumberOfFrames) == SHAPE[2]
    # Frames really are stored out of order.
    ipp_z = [float(f.PlanePositionSequence[0].ImagePositionPatient[2])
             for f in ds.PerFrameFunctionalGroupsSequence]
    assert ipp_z != sorted(ipp_z) and ipp_z != sorted(ipp_z, reverse=True)
    out = load_dicom_series(p)
    _assert_same(out, vol)
    assert out.meta["n_slices"] == SHAPE[2] and out.meta["modality"] == modality
    _assert_same(load_dicom_series(tmp_path), vol)


def test_rle_lossless_round_trip(tmp_path):
    vol = _volume(AFFINES["sagittal"])
    paths = write_dicom_series(vol, tmp_path, transfer_syntax=RLELossless)
    assert pydicom.dcmread(paths[0]).file_meta.TransferSyntaxUID == RLELossless
    _assert_same(load_dicom_series(tmp_path), vol)


def test_load_volume_dispatches_to_dicom(series):
    d, paths, vol = series
    _assert_same(load_volume(d), vol)
    _assert_same(load_volume(paths[0].parent), vol)
    one = load_volume(paths[0])  # a .dcm file
    assert one.meta["format"] == "dicom" and one.meta["n_slices"] == 1


def test_skips_non_dicom_and_dicomdir(series):
    d, paths, vol = series
    (d / "README.txt").write_text("not dicom")
    # A (minimal) DICOMDIR: valid DICOM, but no image -> skipped in a folder scan.
    meta = pydicom.dcmread(paths[0], stop_before_pixels=True).file_meta
    meta.MediaStorageSOPClassUID = "1.2.840.10008.1.3.10"
    dd = pydicom.Dataset()
    dd.file_meta = meta
    dd.FileSetID = "X"
    dd.save_as(d / "DICOMDIR", enforce_file_format=True)
    _assert_same(load_dicom_series(d), vol)


# --------------------------------------------------------------------------- compressed


def _encapsulated_file(path, ts_uid):
    ds = pydicom.dcmread(path)
    ds.PixelData = encapsulate([b"\xff\x4f\xff\x51 garbage, not a codestream"])
    ds["PixelData"].VR = "OB"
    ds["PixelData"].is_undefined_length = True
    ds.file_meta.TransferSyntaxUID = ts_uid
    ds.save_as(path, enforce_file_format=True)


def test_jpeg2000_without_decoder_names_package(series):
    from pydicom.pixels.decoders.base import get_decoder

    if get_decoder(JPEG2000Lossless).is_available:
        pytest.skip("a JPEG 2000 decoder is installed here")
    d, paths, _ = series
    for p in paths:  # the whole series becomes JPEG 2000
        _encapsulated_file(p, JPEG2000Lossless)
    msg = _err(load_dicom_series, d)
    assert "JPEG 2000" in msg and "pylibjpeg-openjpeg" in msg and "python-gdcm" in msg
    assert str(d) in msg  # the offending file is inside the folder and named


def test_corrupt_rle_data_is_imaging_error(series):
    d, paths, _ = series
    _encapsulated_file(paths[0], RLELossless)
    msg = _err(load_dicom_series, d)
    assert str(paths[0]) in msg and "RLE" in msg


# --------------------------------------------------------------------------- bad input


def test_missing_image_position(series):
    d, paths, _ = series
    _edit(paths[4], lambda ds: delattr(ds, "ImagePositionPatient"))
    msg = _err(load_dicom_series, d)
    assert str(paths[4]) in msg and "ImagePositionPatient" in msg


@pytest.mark.parametrize("keyword", ["ImageOrientationPatient", "PixelSpacing"])
def test_missing_orientation_or_spacing(series, keyword):
    d, paths, _ = series
    _edit(paths[2], lambda ds: delattr(ds, keyword))
    msg = _err(load_dicom_series, d)
    assert str(paths[2]) in msg and keyword in msg


def test_mixed_series(tmp_path):
    a = _volume(AFFINES["axial"], seed=1)
    b = Volume(_volume(AFFINES["sagittal"], seed=2).array[..., :7], AFFINES["sagittal"])
    uid_a, uid_b = generate_uid(), generate_uid()
    write_dicom_series(a, tmp_path, series_uid=uid_a)
    write_dicom_series(b, tmp_path, series_uid=uid_b, modality="MR")
    msg = _err(load_dicom_series, tmp_path)
    assert str(tmp_path) in msg and "series_uid" in msg
    assert f"{uid_a} (12 slices" in msg and f"{uid_b} (7 slices" in msg
    _assert_same(load_dicom_series(tmp_path, series_uid=uid_a), a)
    _assert_same(load_volume(tmp_path, series_uid=uid_b), b)
    msg = _err(load_dicom_series, tmp_path, series_uid="1.2.3.4")
    assert "1.2.3.4" in msg and "not found" in msg and uid_a in msg


def test_duplicate_slice(series):
    d, paths, _ = series
    dup = d / "copy_of_slice.dcm"
    shutil.copy(paths[5], dup)
    _edit(dup, lambda ds: setattr(ds, "SOPInstanceUID", generate_uid()))
    msg = _err(load_dicom_series, d)
    assert "duplicate slice at position" in msg
    assert str(dup) in msg and str(paths[5]) in msg


def test_missing_slice_is_gap(series):
    d, paths, _ = series
    paths[6].unlink()
    msg = _err(load_dicom_series, d)
    assert "gap" in msg and "1 slice(s) missing" in msg
    assert str(paths[5]) in msg and str(paths[7]) in msg


def test_gap_in_short_series(tmp_path):
    # Steps (2s, s): a median would be 1.5s and call both "inconsistent"; the
    # reader takes the step most others agree with (ties: smaller) -> a gap.
    vol = Volume(_volume(AFFINES["axial"]).array[..., :4], AFFINES["axial"])
    paths = write_dicom_series(vol, tmp_path)
    paths[1].unlink()
    msg = _err(load_dicom_series, tmp_path)
    assert "1 slice(s) missing" in msg and str(paths[0]) in msg and str(paths[2]) in msg


def test_inconsistent_spacing(series):
    d, paths, vol = series
    step = vol.affine[:3, 2] * [-1, -1, 1]  # LPS

    def shift(ds):
        ipp = np.array([float(x) for x in ds.ImagePositionPatient]) + 0.4 * step
        ds.ImagePositionPatient = [f"{x:.6f}" for x in ipp]

    _edit(paths[7], shift)
    msg = _err(load_dicom_series, d)
    assert "inconsistent slice spacing" in msg and str(paths[7]) in msg
    assert "gap" not in msg


def test_positions_not_on_a_line(series):
    d, paths, _ = series

    def nudge(ds):
        ipp = [float(x) for x in ds.ImagePositionPatient]
        ds.ImagePositionPatient = [f"{ipp[0] + 5:.6f}", f"{ipp[1]:.6f}", f"{ipp[2]:.6f}"]

    _edit(paths[3], nudge)
    msg = _err(load_dicom_series, d)
    assert "do not lie on a line" in msg and str(paths[3]) in msg


def test_inconsistent_orientation(series):
    d, paths, _ = series
    _edit(paths[8], lambda ds: setattr(ds, "ImageOrientationPatient",
                                       ["1", "0", "0", "0", "0.9950042", "-0.0998334"]))
    msg = _err(load_dicom_series, d)
    assert "inconsistent ImageOrientationPatient" in msg and str(paths[8]) in msg


def test_inconsistent_pixel_spacing(series):
    d, paths, _ = series
    _edit(paths[1], lambda ds: setattr(ds, "PixelSpacing", ["0.5", "0.5"]))
    msg = _err(load_dicom_series, d)
    assert "PixelSpacing" in msg and str(paths[1]) in msg


def test_non_orthonormal_orientation(series):
    d, paths, _ = series
    _edit(paths[0], lambda ds: setattr(ds, "ImageOrientationPatient",
                                       ["1", "0", "0", "0.5", "0.5", "0"]))
    msg = _err(load_dicom_series, paths[0])
    assert "orthogonal" in msg and str(paths[0]) in msg


def test_non_dicom_file(tmp_path):
    p = tmp_path / "scan.dcm"
    p.write_text("hello, I am a text file" * 20)
    msg = _err(load_dicom_series, p)
    assert str(p) in msg and "not a DICOM file" in msg
    msg = _err(load_volume, p)
    assert "not a DICOM file" in msg


def test_empty_dir(tmp_path):
    msg = _err(load_dicom_series, tmp_path)
    assert str(tmp_path) in msg and "no DICOM files found" in msg
    (tmp_path / "notes.txt").write_text("x")
    assert "no DICOM files found" in _err(load_dicom_series, tmp_path)


def test_missing_path(tmp_path):
    assert "not found" in _err(load_dicom_series, tmp_path / "nope")


def test_absurd_dimensions_refused_before_allocation(series, monkeypatch):
    d, paths, _ = series
    p = paths[0]

    def huge(ds):
        ds.Rows = 60000
        ds.Columns = 60000

    _edit(p, huge)
    # Header-only failure: pixels are never decoded, nothing big is allocated.
    monkeypatch.setattr(pydicom.Dataset, "pixel_array",
                        property(lambda self: pytest.fail("pixels decoded")))
    msg = _err(load_dicom_series, p)
    assert str(p) in msg and "absurd" in msg
    assert str(p) in _err(load_dicom_series, d)


def test_truncated_header(series):
    # pydicom reads a cut-off header without complaint; the reader must not
    # silently drop that slice.
    d, paths, _ = series
    paths[4].write_bytes(paths[4].read_bytes()[:300])
    msg = _err(load_dicom_series, d)
    assert str(paths[4]) in msg and "truncated" in msg


def test_truncated_pixel_data(series):
    d, paths, _ = series
    paths[4].write_bytes(paths[4].read_bytes()[:-10])
    msg = _err(load_dicom_series, d)
    assert str(paths[4]) in msg and "pixel data" in msg


def test_writer_rejects_bad_volumes(tmp_path):
    aff = AFFINES["axial"]
    two = Volume(np.zeros((2, 4, 4, 4), np.int16), aff)
    assert "single-channel" in _err(write_dicom_series, two, tmp_path)
    sheared = aff.copy()
    sheared[0, 1] = 0.3
    assert "orthogonal" in _err(write_dicom_series, _volume(sheared), tmp_path)
    big = Volume(np.full((1, 4, 4, 4), 1e6, np.float32), aff)
    assert "16 bits" in _err(write_dicom_series, big, tmp_path)
    assert not list(tmp_path.iterdir())  # nothing half-written
