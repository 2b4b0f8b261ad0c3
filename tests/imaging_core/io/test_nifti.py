import gzip

import nibabel as nib
import numpy as np
import pytest

from imaging_core.errors import ImagingError
from imaging_core.io import Volume, load_volume, save_volume


def test_roundtrip_keeps_array_affine_dtype(write_nifti, tmp_path):
    rng = np.random.default_rng(0)
    arr = rng.integers(-1000, 1000, (20, 18, 9)).astype(np.int16)
    p = write_nifti("ct.nii.gz", arr)
    vol = load_volume(p)
    assert vol.array.shape == (1, 20, 18, 9) and vol.array.dtype == np.int16
    np.testing.assert_array_equal(vol.array[0], arr)
    assert vol.orientation == ("L", "P", "S")
    np.testing.assert_allclose(vol.spacing, [0.8, 0.8, 2.5], rtol=1e-6)
    assert vol.meta["original_shape"] == (20, 18, 9)
    out = save_volume(vol, tmp_path / "out" / "copy.nii")
    back = load_volume(out)
    np.testing.assert_array_equal(back.array, vol.array)
    np.testing.assert_allclose(back.affine, vol.affine, atol=1e-5)


def test_scl_slope_applied(tmp_path):
    img = nib.Nifti1Image(np.arange(24, dtype=np.int16).reshape(2, 3, 4), np.eye(4))
    img.header.set_slope_inter(2.0, -5.0)
    nib.save(img, tmp_path / "s.nii")
    vol = load_volume(tmp_path / "s.nii")
    np.testing.assert_allclose(vol.array[0], np.arange(24).reshape(2, 3, 4) * 2.0 - 5.0)


def test_nrrd_roundtrip_lps(tmp_path):
    aff = np.array([[-0.7, 0, 0, 10], [0, -0.7, 0, 20], [0, 0, 3.0, -5], [0, 0, 0, 1]])
    vol = Volume(np.arange(60, dtype=np.int16).reshape(1, 5, 4, 3), aff)
    p = save_volume(vol, tmp_path / "x.nrrd")
    back = load_volume(p)
    np.testing.assert_array_equal(back.array, vol.array)
    np.testing.assert_allclose(back.affine, aff)


def test_4d_multichannel_only_when_allowed(write_nifti):
    p = write_nifti("mc.nii.gz", np.zeros((4, 4, 4, 3), np.float32))
    with pytest.raises(ImagingError, match="4D image .* where a 3D volume is expected"):
        load_volume(p)
    from imaging_core.io import load_nifti
    assert load_nifti(p, expect_3d=False).array.shape == (3, 4, 4, 4)


# --- bad input: each one error naming the file and the problem ---------------

def _assert_names(err, path, fragment):
    msg = str(err.value)
    assert str(path) in msg and fragment in msg and "\n" not in msg


def test_truncated_gz(write_nifti):
    p = write_nifti("t.nii.gz", np.random.default_rng(1).normal(size=(30, 30, 30)).astype(np.float32))
    data = p.read_bytes()
    p.write_bytes(data[: len(data) // 2])
    with pytest.raises(ImagingError) as e:
        load_volume(p)
    _assert_names(e, p, "truncated")


def test_truncated_plain(write_nifti):
    p = write_nifti("t.nii", np.zeros((30, 30, 30), np.float32))
    p.write_bytes(p.read_bytes()[:5000])
    with pytest.raises(ImagingError) as e:
        load_volume(p)
    _assert_names(e, p, "truncated")


def test_wrong_magic(tmp_path):
    p = tmp_path / "junk.nii"
    p.write_bytes(b"\x00" * 600)
    with pytest.raises(ImagingError) as e:
        load_volume(p)
    _assert_names(e, p, "not a NIfTI file")
    q = tmp_path / "junk.nii.gz"
    q.write_bytes(b"this is text")
    with pytest.raises(ImagingError) as e:
        load_volume(q)
    _assert_names(e, q, "not a gzip file")
    r = tmp_path / "gz_of_text.nii.gz"
    r.write_bytes(gzip.compress(b"hello" * 200))
    with pytest.raises(ImagingError) as e:
        load_volume(r)
    _assert_names(e, r, "not a NIfTI file")


def test_nan_voxels(write_nifti):
    a = np.zeros((5, 5, 5), np.float32)
    a[2, 2, 2] = np.nan
    p = write_nifti("nan.nii.gz", a)
    with pytest.raises(ImagingError) as e:
        load_volume(p)
    _assert_names(e, p, "NaN or inf")
    a[2, 2, 2] = np.inf
    p = write_nifti("inf.nii.gz", a)
    with pytest.raises(ImagingError, match="NaN or inf"):
        load_volume(p)


def _with_sform(tmp_path, name, aff):
    img = nib.Nifti1Image(np.zeros((4, 4, 4), np.int16), None)
    img.header.set_sform(aff, code=1)
    img.header.set_qform(None, code=0)
    p = tmp_path / name
    nib.save(img, p)
    return p


def test_zero_and_negative_spacing(tmp_path):
    p = _with_sform(tmp_path, "zero.nii", np.diag([1.0, 0.0, 1.0, 1.0]))
    with pytest.raises(ImagingError) as e:
        load_volume(p)
    _assert_names(e, p, "spacing")


def test_singular_affine(tmp_path):
    aff = np.eye(4)
    aff[:3, :3] = [[1, 1, 0], [0, 0, 0], [0, 0, 1]]  # first two axes collinear
    p = _with_sform(tmp_path, "sing.nii", aff)
    with pytest.raises(ImagingError) as e:
        load_volume(p)
    _assert_names(e, p, "singular affine")


def test_absurd_dimensions_refused_before_allocation(tmp_path):
    hdr = nib.Nifti1Header()
    hdr.set_data_dtype(np.float32)
    hdr.set_data_shape((30000, 30000, 30000))
    p = tmp_path / "huge.nii"
    with open(p, "wb") as f:
        hdr.write_to(f)
        f.write(b"\x00" * 64)
    with pytest.raises(ImagingError) as e:
        load_volume(p)
    _assert_names(e, p, "absurd dimensions")


def test_missing_and_unknown(tmp_path):
    with pytest.raises(ImagingError, match="file not found"):
        load_volume(tmp_path / "nope.nii.gz")
    (tmp_path / "a.txt").write_text("x")
    with pytest.raises(ImagingError, match="unknown image format"):
        load_volume(tmp_path / "a.txt")


def test_save_is_atomic_on_failure(tmp_path, monkeypatch):
    vol = Volume(np.zeros((1, 3, 3, 3), np.float32), np.eye(4))
    target = tmp_path / "o.nii.gz"

    def boom(*a, **k):
        raise OSError("disk full")
    monkeypatch.setattr(nib, "save", boom)
    with pytest.raises(OSError):
        save_volume(vol, target)
    assert list(tmp_path.iterdir()) == []


@pytest.fixture(params=["isal", "zlib"])
def inflate(request, monkeypatch):
    """Runs a test with ISA-L's inflate (where installed) and with plain zlib."""
    from imaging_core.io import nifti
    if request.param == "isal" and nifti._isal_zlib is None:
        pytest.skip("isal is not installed here (the zlib path is tested)")
    if request.param == "zlib":
        monkeypatch.setattr(nifti, "_isal_zlib", None)
    return request.param


def test_gz_same_array_either_inflate_and_writable(write_nifti, inflate):
    """Both inflaters give nibabel's array; the array is the caller's to write
    (kept in the file's x-fastest layout: no transposing copy)."""
    rng = np.random.default_rng(3)
    a = rng.integers(-1000, 2000, size=(23, 17, 11)).astype(np.int16)
    p = write_nifti("ct.nii.gz", a)
    vol = load_volume(p)
    np.testing.assert_array_equal(vol.array[0], np.asanyarray(nib.load(p).dataobj))
    assert vol.array.flags.writeable and vol.array.flags.f_contiguous
    vol.array[0, 0, 0, 0] = 7  # the caller's own copy
    assert load_volume(p).array[0, 0, 0, 0] == a[0, 0, 0]


def test_truncated_gz_either_inflate(write_nifti, inflate):
    p = write_nifti("t.nii.gz", np.random.default_rng(1).normal(size=(20, 20, 20)).astype(np.float32))
    p.write_bytes(p.read_bytes()[:-300])
    with pytest.raises(ImagingError) as e:
        load_volume(p)
    _assert_names(e, p, "truncated")
