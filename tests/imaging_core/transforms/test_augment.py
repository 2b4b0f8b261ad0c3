"""Augmentation: MONAI agreement where semantics match, image/label in step, affines, seeds."""
import warnings

import numpy as np
import pytest
import torch

from imaging_core.io.volume import Volume
from imaging_core.transforms.augment import (RandAdjustContrast, RandAffine, RandFlip,
                                             RandGaussianNoise, RandRotate90, RandScaleIntensity,
                                             RandShiftIntensity, affine_index_map, rot90_index_map)
from imaging_core.transforms.base import Compose

pytest.importorskip("monai")
from monai.data import MetaTensor  # noqa: E402
from monai.transforms import AdjustContrast, Flipd, Rotate90d, ScaleIntensity, ShiftIntensity  # noqa: E402


def rand_affine(rng):
    A = np.eye(4)
    A[:3, :3] = np.linalg.qr(rng.normal(size=(3, 3)))[0] @ np.diag(rng.uniform(0.5, 3, 3))
    A[:3, 3] = rng.uniform(-50, 50, 3)
    return A


def smooth_pair(shape=(12, 12, 10), seed=0, affine=None):
    """A smooth image and the label made by thresholding it."""
    rng = np.random.default_rng(seed)
    g = np.stack(np.meshgrid(*[np.linspace(-1, 1, n) for n in shape], indexing="ij"))
    c = rng.uniform(-0.3, 0.3, 3)
    img = np.exp(-((g - c[:, None, None, None]) ** 2).sum(0) * 3.0)[None].astype(np.float32)
    lab = (img > 0.5).astype(np.uint8)
    A = np.eye(4) if affine is None else affine
    return {"image": Volume(img, A), "label": Volume(lab, A), "case_id": "c"}


def index_item(shape=(6, 6, 5), affine=None):
    """Image voxels hold their own flat index: lets a test trace every voxel to its source."""
    arr = np.arange(int(np.prod(shape)), dtype=np.float32).reshape((1,) + shape)
    A = np.eye(4) if affine is None else affine
    return {"image": Volume(arr, A), "label": Volume((arr % 3).astype(np.uint8), A)}


def assert_world_consistent(src, out):
    """Each output voxel's world position (new affine) is where its value came from (old affine)."""
    shape_in = src["image"].spatial_shape
    shape_out = out["image"].spatial_shape
    ijk = np.stack(np.meshgrid(*[np.arange(n) for n in shape_out], indexing="ij")).reshape(3, -1)
    m = np.linalg.solve(src["image"].affine, out["image"].affine)
    old = np.rint(m[:3, :3] @ ijk + m[:3, 3:]).astype(int)
    flat = np.ravel_multi_index(tuple(old), shape_in)
    np.testing.assert_array_equal(out["image"].array.reshape(-1), flat.astype(np.float32))
    np.testing.assert_array_equal(out["label"].array.reshape(-1), (flat % 3).astype(np.uint8))


def monai_run(t, arr, A):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return t({"image": MetaTensor(torch.from_numpy(arr.copy()), affine=torch.from_numpy(A))})["image"]


# ----------------------------------------------------------------------------
# flips / rot90
# ----------------------------------------------------------------------------
@pytest.mark.parametrize("axes", [(0,), (1,), (2,), (0, 2), (0, 1, 2)])
def test_flip_matches_monai(axes):
    rng = np.random.default_rng(0)
    A = rand_affine(rng)
    img = rng.normal(size=(2, 5, 4, 3)).astype(np.float32)
    out = RandFlip().flip({"image": Volume(img, A)}, axes)["image"]
    ref = monai_run(Flipd("image", spatial_axis=list(axes)), img, A)
    np.testing.assert_array_equal(out.array, ref.numpy())
    np.testing.assert_allclose(out.affine, ref.affine.numpy(), atol=1e-9)


@pytest.mark.parametrize("k", [1, 2, 3])
@pytest.mark.parametrize("plane", [(0, 1), (0, 2), (1, 2)])
def test_rot90_matches_monai(k, plane):
    rng = np.random.default_rng(1)
    A = rand_affine(rng)
    img = rng.normal(size=(1, 4, 4, 4)).astype(np.float32)
    out = RandRotate90().rotate({"image": Volume(img, A)}, k, plane)["image"]
    ref = monai_run(Rotate90d("image", k=k, spatial_axes=plane), img, A)
    np.testing.assert_array_equal(out.array, ref.numpy())
    np.testing.assert_allclose(out.affine, ref.affine.numpy(), atol=1e-9)


def test_rot90_index_map_traces_voxels():
    a = np.arange(27).reshape(3, 3, 3)
    for k in (1, 2, 3):
        r = np.rot90(a, k, axes=(0, 2))
        t = rot90_index_map(k, (0, 2), 3)
        for idx in [(0, 1, 2), (2, 0, 1), (1, 1, 1)]:
            old = np.rint(t @ np.array([*idx, 1.0]))[:3].astype(int)
            assert r[idx] == a[tuple(old)]


def test_random_flip_and_rot90_keep_image_label_world_in_step():
    rng = np.random.default_rng(2)
    A = rand_affine(rng)
    src = index_item((6, 6, 6), A)
    t = Compose([RandFlip(prob=0.5), RandRotate90(prob=1.0)])
    for s in range(8):
        assert_world_consistent(src, t(src, np.random.default_rng(s)))


def test_rot90_only_square_planes():
    src = index_item((6, 5, 6))  # only plane (0, 2) has equal sides
    t = RandRotate90(prob=1.0)
    for s in range(10):
        out = t(src, np.random.default_rng(s))
        assert out["image"].spatial_shape == (6, 5, 6)
        assert_world_consistent(src, out)
    assert RandRotate90(prob=1.0, planes=[(0, 1)])(src, np.random.default_rng(0)) is src


def test_flip_axes_drawn_independently():
    src = index_item((3, 3, 3))
    t = RandFlip(prob=0.3)
    counts = np.zeros(3)
    n = 400
    rng = np.random.default_rng(3)
    for _ in range(n):
        out = t(src, rng)["image"].array[0]
        # the index image increases along every axis; a flipped axis decreases
        counts += [out[2, 1, 1] < out[0, 1, 1], out[1, 2, 1] < out[1, 0, 1], out[1, 1, 2] < out[1, 1, 0]]
    np.testing.assert_allclose(counts / n, 0.3, atol=0.07)


# ----------------------------------------------------------------------------
# affine
# ----------------------------------------------------------------------------
def test_affine_identity_is_exact():
    src = smooth_pair()
    out = RandAffine(prob=1.0)(src, np.random.default_rng(0))
    np.testing.assert_allclose(out["image"].array, src["image"].array, atol=1e-6)
    np.testing.assert_array_equal(out["label"].array, src["label"].array)
    np.testing.assert_allclose(out["image"].affine, src["image"].affine, atol=1e-12)


def test_affine_samples_the_world_point_it_claims():
    """A linear function of world position is reproduced exactly by trilinear sampling."""
    A = np.diag([1.5, 1.0, 2.0, 1.0])
    A[:3, 3] = [10.0, -5.0, 3.0]
    shape = (14, 12, 10)
    ijk = np.stack(np.meshgrid(*[np.arange(n) for n in shape], indexing="ij")).reshape(3, -1)
    grad = np.array([0.3, -0.2, 0.5])
    img = (grad @ (A[:3, :3] @ ijk + A[:3, 3:])).reshape((1,) + shape).astype(np.float32)
    out = RandAffine(prob=1.0).warp({"image": Volume(img, A)}, (0.2, -0.1, 0.25), (1.1, 0.9, 1.05))
    B = out["image"].affine
    expect = (grad @ (B[:3, :3] @ ijk + B[:3, 3:])).reshape(shape)
    m = np.linalg.solve(A, B)
    q = m[:3, :3] @ ijk + m[:3, 3:]
    inside = np.all((q >= 0) & (q <= np.array(shape)[:, None] - 1), 0).reshape(shape)
    assert inside.mean() > 0.5
    np.testing.assert_allclose(out["image"].array[0][inside], expect[inside], atol=1e-4)


def test_affine_label_follows_image():
    src = smooth_pair((16, 16, 16), seed=4)
    t = RandAffine(prob=1.0, rotate_range=(0.3, 0.3, 0.3), scale_range=(0.15, 0.15, 0.15))
    for s in range(4):
        out = t(src, np.random.default_rng(s))
        img, lab = out["image"].array, out["label"].array
        assert img.shape == lab.shape == (1, 16, 16, 16)
        assert img.dtype == np.float32 and lab.dtype == np.uint8
        assert set(np.unique(lab)) <= {0, 1}
        # nearest vs trilinear only disagree on a thin shell around the 0.5 level set
        assert np.mean((img > 0.5) == (lab == 1)) > 0.97


def test_affine_index_map_rotates_about_centre():
    t = affine_index_map((9, 9, 9), (0.0, 0.0, np.pi / 2), (1.0, 1.0, 1.0))
    np.testing.assert_allclose(t @ [4.0, 4.0, 4.0, 1.0], [4.0, 4.0, 4.0, 1.0], atol=1e-12)


def test_affine_zero_padding_mode():
    src = smooth_pair((10, 10, 10))
    src["image"] = src["image"].replace(array=src["image"].array + 5.0)
    out = RandAffine(prob=1.0, padding_mode="zeros").warp(src, (0.0, 0.0, 0.0), (1.5, 1.5, 1.5))
    assert out["image"].array[0, 0, 0, 0] == 0.0  # corner samples fall outside the input
    with pytest.raises(ValueError):
        RandAffine(padding_mode="wrap")


# ----------------------------------------------------------------------------
# intensity
# ----------------------------------------------------------------------------
def image_item(seed=5):
    rng = np.random.default_rng(seed)
    img = rng.uniform(-1, 2, size=(2, 6, 5, 4)).astype(np.float32)
    return {"image": Volume(img, np.eye(4)), "label": Volume((img[:1] > 0).astype(np.uint8), np.eye(4))}


@pytest.mark.parametrize("t,bounds,ref", [
    (RandScaleIntensity(prob=1.0, factors=0.2), (-0.2, 0.2),
     lambda v: ScaleIntensity(minv=None, maxv=None, factor=v)),
    (RandShiftIntensity(prob=1.0, offsets=0.3), (-0.3, 0.3), lambda v: ShiftIntensity(offset=v)),
    (RandAdjustContrast(prob=1.0, gamma=(0.7, 1.5)), (0.7, 1.5), lambda v: AdjustContrast(gamma=v)),
])
def test_intensity_math_matches_monai(t, bounds, ref):
    d = image_item()
    v = np.random.default_rng(7).uniform(*bounds)  # the one draw t makes when prob=1
    out = t(d, np.random.default_rng(7))
    expect = ref(float(v))(torch.from_numpy(d["image"].array.copy())).numpy()
    np.testing.assert_allclose(out["image"].array, expect, atol=1e-5, rtol=1e-5)
    assert out["image"].array.dtype == np.float32
    assert out["label"] is d["label"]


def test_gaussian_noise_statistics_and_label_untouched():
    rng = np.random.default_rng(8)
    img = np.zeros((1, 40, 40, 20), np.float32)
    d = {"image": Volume(img, np.eye(4)), "label": Volume(np.ones_like(img, dtype=np.uint8), np.eye(4))}
    out = RandGaussianNoise(prob=1.0, std=0.5, sample_std=False)(d, rng)
    noise = out["image"].array
    assert abs(noise.mean()) < 0.02 and abs(noise.std() - 0.5) < 0.02
    assert out["label"] is d["label"] and not img.any()
    sampled = RandGaussianNoise(prob=1.0, std=0.5)(d, np.random.default_rng(9))["image"].array
    assert sampled.std() < 0.5


def test_prob_zero_and_one():
    d = image_item()
    for t in (RandFlip(prob=0.0), RandRotate90(prob=0.0), RandAffine(prob=0.0, rotate_range=0.2),
              RandScaleIntensity(prob=0.0), RandShiftIntensity(prob=0.0), RandAdjustContrast(prob=0.0),
              RandGaussianNoise(prob=0.0)):
        assert t(d, np.random.default_rng(0)) is d


def full_augment():
    return Compose([RandFlip(prob=0.5), RandRotate90(prob=0.5),
                    RandAffine(prob=0.5, rotate_range=0.2, scale_range=0.1),
                    RandScaleIntensity(prob=0.5, factors=0.1), RandShiftIntensity(prob=0.5, offsets=0.1),
                    RandAdjustContrast(prob=0.5, gamma=(0.8, 1.25)), RandGaussianNoise(prob=0.5, std=0.05)])


def test_reproducible_with_seed_and_input_untouched(tmp_path):
    d = smooth_pair((8, 8, 8))
    np.save(tmp_path / "img.npy", d["image"].array)
    np.save(tmp_path / "lab.npy", d["label"].array)
    mm = {"image": Volume(np.load(tmp_path / "img.npy", mmap_mode="r"), np.eye(4)),
          "label": Volume(np.load(tmp_path / "lab.npy", mmap_mode="r"), np.eye(4))}
    t = full_augment()
    assert t.deterministic_prefix().transforms == []
    runs = [[t(mm, np.random.default_rng(s)) for s in range(6)] for _ in range(2)]
    for a, b in zip(*runs):
        np.testing.assert_array_equal(a["image"].array, b["image"].array)
        np.testing.assert_array_equal(a["label"].array, b["label"].array)
        np.testing.assert_array_equal(a["image"].affine, b["image"].affine)
    assert any(not np.array_equal(runs[0][0]["image"].array, r["image"].array) for r in runs[0][1:])
    np.testing.assert_array_equal(mm["image"].array, d["image"].array)
    np.testing.assert_array_equal(mm["label"].array, d["label"].array)


def test_bad_arguments():
    with pytest.raises(ValueError):
        RandFlip(spatial_axes=(3,))
    with pytest.raises(ValueError):
        RandRotate90(planes=[(0, 0)])
    with pytest.raises(ValueError):
        RandAdjustContrast(gamma=0.4)
    with pytest.raises(ValueError):
        RandGaussianNoise(std=-1.0)
