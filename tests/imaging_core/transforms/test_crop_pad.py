"""Crop / pad transforms vs MONAI (boxes, shapes, values, affines), crop_or_pad."""
import warnings

import numpy as np
import pytest
import torch

from imaging_core.io.volume import Volume
from imaging_core.transforms.crop_pad import (CenterSpatialCrop, CropForeground, DivisiblePad,
                                              SpatialPad, crop_or_pad, foreground_box)

pytest.importorskip("monai")
from monai.data import MetaTensor  # noqa: E402
from monai.transforms import (CenterSpatialCropd, CropForegroundd, DivisiblePadd,  # noqa: E402
                              SpatialPadd)


def rand_affine(rng):
    A = np.eye(4)
    A[:3, :3] = np.linalg.qr(rng.normal(size=(3, 3)))[0] @ np.diag(rng.uniform(0.5, 3, 3))
    A[:3, 3] = rng.uniform(-50, 50, 3)
    return A


def mt(arr, A):
    return MetaTensor(torch.from_numpy(arr.copy()), affine=torch.from_numpy(A))


def run_monai(t, img, lab, A):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        d = t({"image": mt(img, A), "label": mt(lab, A)})
    return d["image"], d["label"]


def check_same(out, m_img, m_lab, img, lab, img0, lab0):
    np.testing.assert_array_equal(out["image"].array, m_img.numpy())
    np.testing.assert_array_equal(out["label"].array, m_lab.numpy().astype(lab.dtype))
    np.testing.assert_allclose(out["image"].affine, m_img.affine.numpy(), atol=1e-9)
    np.testing.assert_allclose(out["label"].affine, m_lab.affine.numpy(), atol=1e-9)
    assert out["label"].array.dtype == lab.dtype
    assert out["image"].array.dtype == img.dtype
    np.testing.assert_array_equal(img, img0)
    np.testing.assert_array_equal(lab, lab0)


def random_blob(rng, shape):
    img = np.zeros((2,) + shape, np.float32)
    lo = [int(rng.integers(0, s - 2)) for s in shape]
    hi = [int(rng.integers(l + 1, s + 1)) for l, s in zip(lo, shape)]
    img[int(rng.integers(0, 2)), lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]] = rng.uniform(0.1, 5, 1)[0]
    img += rng.normal(0, 0.01, img.shape).astype(np.float32) * (img > 0)
    return img


def test_crop_foreground_matches_monai():
    rng = np.random.default_rng(0)
    for i in range(25):
        shape = tuple(int(s) for s in rng.integers(8, 25, 3))
        A = rand_affine(rng)
        img = random_blob(rng, shape)
        lab = rng.integers(0, 3, (1,) + shape).astype(np.uint8)
        img0, lab0 = img.copy(), lab.copy()
        margin = [0, 2, (1, 3, 0)][i % 3]
        k = [1, 4][i % 2]
        thr = [None, 1.0][i % 2]
        select = (lambda a: a > 0) if thr is None else (lambda a, t=thr: a > t)
        if not select(img).any():
            continue
        m_img, m_lab = run_monai(CropForegroundd(["image", "label"], source_key="image",
                                                 select_fn=select, margin=margin, k_divisible=k), img, lab, A)
        out = CropForeground("image", threshold=thr, margin=margin, k_divisible=k)(
            {"image": Volume(img, A), "label": Volume(lab, A)})
        check_same(out, m_img, m_lab, img, lab, img0, lab0)


def test_crop_foreground_select_fn_and_allow_smaller():
    rng = np.random.default_rng(1)
    A = rand_affine(rng)
    img = np.zeros((1, 10, 12, 14), np.float32)
    img[0, 0:3, 5:7, 10:14] = 3.0
    lab = (img > 0).astype(np.int64)
    for allow in (False, True):
        m_img, m_lab = run_monai(CropForegroundd(["image", "label"], "image", select_fn=lambda a: a > 2,
                                                 margin=2, allow_smaller=allow), img, lab, A)
        out = CropForeground("image", select_fn=lambda a: a > 2, margin=2, allow_smaller=allow)(
            {"image": Volume(img, A), "label": Volume(lab, A)})
        check_same(out, m_img, m_lab, img, lab, img.copy(), lab.copy())
    assert foreground_box(np.zeros((3, 3, 3), bool)) is None
    # empty foreground: volumes left uncropped
    out = CropForeground()({"image": Volume(np.zeros((1, 4, 4, 4), np.float32), A)})
    assert out["image"].spatial_shape == (4, 4, 4)
    with pytest.raises(ValueError):
        CropForeground(margin=-1)
    with pytest.raises(KeyError):
        CropForeground(source_key="ct")({"image": Volume(img, A)})


@pytest.mark.parametrize("mode", ["constant", "edge"])
def test_spatial_pad_matches_monai(mode):
    rng = np.random.default_rng(2)
    for _ in range(10):
        shape = tuple(int(s) for s in rng.integers(5, 15, 3))
        size = tuple(int(s) for s in rng.integers(-1, 18, 3))
        A = rand_affine(rng)
        img = rng.normal(size=(2,) + shape).astype(np.float32)
        lab = rng.integers(0, 4, (1,) + shape).astype(np.uint8)
        m_img, m_lab = run_monai(SpatialPadd(["image", "label"], spatial_size=size,
                                             mode="constant" if mode == "constant" else "replicate"),
                                 img, lab, A)
        out = SpatialPad(size, mode=mode)({"image": Volume(img, A), "label": Volume(lab, A)})
        check_same(out, m_img, m_lab, img, lab, img.copy(), lab.copy())
        assert all(o >= max(s, 0) for o, s in zip(out["image"].spatial_shape, size))


def test_spatial_pad_value_and_noop():
    A = np.eye(4)
    img = np.ones((1, 3, 4, 5), np.float32)
    lab = np.ones((1, 3, 4, 5), np.uint8)
    out = SpatialPad((5, 4, 2), value=-7)({"image": Volume(img, A), "label": Volume(lab, A)})
    assert out["image"].spatial_shape == (5, 4, 5)
    assert out["image"].array[0, 0, 0, 0] == -7 and out["image"].array[0, 4, 0, 0] == -7
    assert out["label"].array[0, 0, 0, 0] == 0  # labels padded with label_value=0
    np.testing.assert_allclose(out["image"].affine[:3, 3], [-1, 0, 0])
    same = SpatialPad((2, 2, 2))({"image": Volume(img, A)})
    assert same["image"].array is img


def test_divisible_pad_matches_monai():
    rng = np.random.default_rng(3)
    for _ in range(10):
        shape = tuple(int(s) for s in rng.integers(5, 40, 3))
        k = [16, (8, 4, 1), 5][int(rng.integers(0, 3))]
        A = rand_affine(rng)
        img = rng.normal(size=(1,) + shape).astype(np.float32)
        lab = rng.integers(0, 4, (1,) + shape).astype(np.int32)
        m_img, m_lab = run_monai(DivisiblePadd(["image", "label"], k=k), img, lab, A)
        out = DivisiblePad(k)({"image": Volume(img, A), "label": Volume(lab, A)})
        check_same(out, m_img, m_lab, img, lab, img.copy(), lab.copy())


def test_center_crop_matches_monai():
    rng = np.random.default_rng(4)
    for _ in range(10):
        shape = tuple(int(s) for s in rng.integers(5, 20, 3))
        size = tuple(int(s) for s in rng.integers(-1, 25, 3))
        A = rand_affine(rng)
        img = rng.normal(size=(1,) + shape).astype(np.float32)
        lab = rng.integers(0, 4, (1,) + shape).astype(np.uint8)
        m_img, m_lab = run_monai(CenterSpatialCropd(["image", "label"], roi_size=size), img, lab, A)
        out = CenterSpatialCrop(size)({"image": Volume(img, A), "label": Volume(lab, A)})
        check_same(out, m_img, m_lab, img, lab, img.copy(), lab.copy())
        assert np.shares_memory(out["image"].array, img)


def test_crop_or_pad_box_outside_and_world_coords():
    rng = np.random.default_rng(5)
    A = rand_affine(rng)
    shape = (6, 7, 8)
    arr = np.arange(np.prod(shape), dtype=np.int32).reshape((1,) + shape) + 1
    v = Volume(arr, A, {"source": "x"})
    for _ in range(20):
        start = rng.integers(-5, 8, 3)
        size = rng.integers(1, 10, 3)
        out = crop_or_pad(v, start, size, pad_value=-1)
        assert out.array.shape == (1,) + tuple(size)
        assert out.meta == {"source": "x"}
        for idx in np.ndindex(*size):
            src = np.asarray(idx) + start
            inside = np.all(src >= 0) and np.all(src < shape)
            val = out.array[(0,) + idx]
            assert val == (arr[(0,) + tuple(src)] if inside else -1)
        # world coordinates: output voxel j == input voxel j + start
        j = np.array([0, 0, 0, 1.0])
        np.testing.assert_allclose(out.affine @ j, A @ np.r_[start, 1.0], atol=1e-9)
    # fully outside: all padding
    out = crop_or_pad(v, (20, 20, 20), (2, 2, 2), pad_value=0)
    assert np.all(out.array == 0)
    # edge mode replicates border voxels
    out = crop_or_pad(v, (-2, 0, 0), (3, 1, 1), mode="edge")
    assert np.all(out.array[0, :, 0, 0] == arr[0, 0, 0, 0])
    # in-bounds crops are views
    assert np.shares_memory(crop_or_pad(v, (1, 1, 1), (2, 2, 2)).array, arr)
    np.testing.assert_array_equal(arr, np.arange(np.prod(shape)).reshape((1,) + shape) + 1)
