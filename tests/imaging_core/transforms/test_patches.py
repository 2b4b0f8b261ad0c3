"""Patch samplers (class-balanced, pos/neg) and the preset pipelines end to end."""
import warnings

import numpy as np
import pytest

from imaging_core.data.cache import class_index
from imaging_core.io.volume import Volume
from imaging_core.transforms.base import Compose
from imaging_core.transforms.patches import RandCropByLabelClasses, RandCropByPosNeg, patch_start
from imaging_core.config import AugmentTable, PreprocessTable, SamplingTable
from imaging_core.transforms.presets import build_preprocess, build_train_transforms


def case(shape=(20, 18, 16), seed=0, with_index=True, num_classes=3, affine=None):
    """Image = ramp + noise, label with a big class 1 block and a small class 2 block."""
    rng = np.random.default_rng(seed)
    img = rng.uniform(0.1, 1.0, size=(1,) + shape).astype(np.float32)
    img[:, :3] = 0.0  # "air" slab: below the background threshold
    lab = np.zeros((1,) + shape, np.uint8)
    lab[0, 5:12, 4:12, 3:10] = 1
    lab[0, 13:15, 12:14, 10:12] = 2
    A = np.eye(4) if affine is None else affine
    d = {"image": Volume(img, A), "label": Volume(lab, A), "case_id": "case-7"}
    if with_index:
        d["label_index"] = class_index(lab, num_classes)
    return d


def label_at(d, v):
    return int(d["label"].array[(0,) + tuple(v)])


# ----------------------------------------------------------------------------
# class-balanced
# ----------------------------------------------------------------------------
@pytest.mark.parametrize("with_index", [True, False])
def test_class_frequencies_follow_ratios_and_centres_lie_on_class(with_index):
    d = case(with_index=with_index)
    t = RandCropByLabelClasses((8, 8, 8), num_classes=3, ratios=[1, 2, 1], num_samples=50)
    rng = np.random.default_rng(0)
    picks = [p for _ in range(60) for p in t.centres(d, rng)]
    classes = np.array([c for _, c in picks])
    np.testing.assert_allclose(np.bincount(classes, minlength=3) / len(classes), [0.25, 0.5, 0.25],
                               atol=0.03)
    assert all(label_at(d, v) == c for v, c in picks)
    # within a class the centre is uniform over its voxels: class 2 has 8 voxels, all hit
    assert len({v for v, c in picks if c == 2}) == 8


def test_absent_class_is_skipped_with_warning():
    d = case(with_index=True, num_classes=4)  # class 3 never occurs
    t = RandCropByLabelClasses((6, 6, 6), num_classes=4, num_samples=200)
    with pytest.warns(RuntimeWarning, match=r"\[3\]"):
        picks = t.centres(d, np.random.default_rng(1))
    classes = np.array([c for _, c in picks])
    assert 3 not in classes
    np.testing.assert_allclose(np.bincount(classes, minlength=4)[:3] / 200, 1 / 3, atol=0.08)
    with pytest.raises(ValueError), pytest.warns(RuntimeWarning):
        RandCropByLabelClasses((6, 6, 6), num_classes=4, ratios=[0, 0, 0, 1])(d, np.random.default_rng(0))
    with pytest.raises(ValueError):
        RandCropByLabelClasses((6, 6, 6), num_classes=3, ratios=[1, 1])


def test_patches_have_size_content_and_shifted_affine():
    A = np.diag([0.8, 0.8, 2.5, 1.0])
    A[:3, 3] = [-30.0, 12.0, 5.0]
    d = case(affine=A)
    t = RandCropByLabelClasses((8, 6, 10), num_classes=3, num_samples=12)
    rng = np.random.default_rng(2)
    out = t(d, rng)
    assert len(out) == 12
    for p in out:
        assert p["image"].spatial_shape == (8, 6, 10) == p["label"].spatial_shape
        assert p["case_id"] == "case-7" and "label_index" not in p
        start = np.rint(np.linalg.solve(A, p["image"].affine)[:3, 3]).astype(int)
        np.testing.assert_allclose(p["label"].affine, p["image"].affine)
        assert np.all(start >= 0) and np.all(start + [8, 6, 10] <= d["image"].spatial_shape)
        sl = (slice(None),) + tuple(slice(s, s + n) for s, n in zip(start, (8, 6, 10)))
        np.testing.assert_array_equal(p["image"].array, d["image"].array[sl])
        np.testing.assert_array_equal(p["label"].array, d["label"].array[sl])
        assert p["image"].meta["patch_start"] == tuple(start)


def test_centre_clamping_matches_monai():
    from monai.transforms.utils import correct_crop_centers
    rng = np.random.default_rng(3)
    for _ in range(200):
        shape = rng.integers(4, 30, 3)
        size = np.minimum(rng.integers(1, 30, 3), shape)
        c = [int(rng.integers(n)) for n in shape]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            mc = [int(x) for x in correct_crop_centers(c, tuple(int(s) for s in size), tuple(int(n) for n in shape))]
        np.testing.assert_array_equal(patch_start(c, size, shape), np.asarray(mc) - size // 2)


def small_case():
    d = case((5, 6, 16))
    lab = np.zeros((1, 5, 6, 16), np.uint8)
    lab[0, 1:4, 2:5, 3:6] = 1
    lab[0, 4, 5, 15] = 2  # in a corner: its patches need padding on every side
    d["label"] = d["label"].replace(array=lab)
    d["label_index"] = class_index(lab, 3)
    return d


def test_small_volume_is_padded_symmetrically():
    d = small_case()
    t = RandCropByLabelClasses((8, 8, 8), num_classes=3, num_samples=4)
    for p in t(d, np.random.default_rng(4)):
        assert p["image"].spatial_shape == (8, 8, 8)
        img, lab = p["image"].array[0], p["label"].array[0]
        # axis 0: 5 -> 8 pads 1 before, 2 after; axis 1: 6 -> 8 pads 1 and 1
        assert not img[0].any() and not img[6:].any() and not img[:, 0].any() and not img[:, 7].any()
        assert not lab[0].any() and not lab[6:].any()
        start = np.rint(p["image"].affine[:3, 3]).astype(int)
        assert tuple(start[:2]) == (-1, -1)
        np.testing.assert_array_equal(lab[1:6, 1:7], d["label"].array[0, :, :, start[2]:start[2] + 8])


def test_pad_value_min():
    d = small_case()
    d["image"] = d["image"].replace(array=d["image"].array - 3.0)
    p = RandCropByLabelClasses((8, 8, 8), num_classes=3, num_samples=1, pad_value="min")(
        d, np.random.default_rng(0))[0]
    assert p["image"].array[0, 0, 0, 0] == p["image"].array[0, 1:6, 1:7].min() < -2.0
    assert p["label"].array[0, 0, 0, 0] == 0


def test_stale_label_index_is_detected():
    d = case()
    d["label"] = d["label"].replace(array=np.ascontiguousarray(d["label"].array[:, ::-1]))  # flipped after indexing
    t = RandCropByLabelClasses((6, 6, 6), num_classes=3, ratios=[0, 0, 1], num_samples=5)
    with pytest.warns(RuntimeWarning, match="label_index"):
        picks = t.centres(d, np.random.default_rng(5))
    assert all(label_at(d, v) == 2 for v, _ in picks)


# ----------------------------------------------------------------------------
# pos / neg
# ----------------------------------------------------------------------------
@pytest.mark.parametrize("with_index", [True, False])
def test_pos_neg_ratio_and_pools(with_index):
    d = case(with_index=with_index)
    t = RandCropByPosNeg((8, 8, 8), pos=1, neg=3, num_samples=40, image_threshold=0.0)
    rng = np.random.default_rng(6)
    picks = [p for _ in range(40) for p in t.centres(d, rng)]
    kinds = np.array([k for _, k in picks])
    assert abs(kinds.mean() - 0.25) < 0.03
    img = d["image"].array[0]
    for v, k in picks:
        if k:
            assert label_at(d, v) > 0
        else:
            assert label_at(d, v) == 0 and img[v] > 0.0  # never in the air slab
    assert len({v for v, k in picks if k}) > 100  # spread over the foreground


def test_pos_neg_one_sided_and_empty_pools():
    d = case()
    assert all(k == 1 for _, k in RandCropByPosNeg(6, pos=1, neg=0, num_samples=20).centres(
        d, np.random.default_rng(0)))
    assert all(k == 0 for _, k in RandCropByPosNeg(6, pos=0, neg=1, num_samples=20).centres(
        d, np.random.default_rng(0)))
    empty = case()
    empty["label"] = empty["label"].replace(array=np.zeros_like(empty["label"].array))
    empty.pop("label_index")
    with pytest.warns(RuntimeWarning, match="no foreground"):
        picks = RandCropByPosNeg(6, pos=1, neg=0, num_samples=5).centres(empty, np.random.default_rng(0))
    assert all(k == 0 for _, k in picks)
    # background entirely below the threshold: the full pool is computed, found empty -> foreground
    with pytest.warns(RuntimeWarning, match="no background"):
        picks = RandCropByPosNeg(6, pos=0, neg=1, num_samples=3, image_threshold=5.0).centres(
            d, np.random.default_rng(0))
    assert all(k == 1 for _, k in picks)


def test_read_only_memmap_reproducible_and_compose(tmp_path):
    d = case()
    np.save(tmp_path / "image.npy", d["image"].array)
    np.save(tmp_path / "label.npy", d["label"].array)
    mm = dict(d, image=Volume(np.load(tmp_path / "image.npy", mmap_mode="r"), np.eye(4)),
              label=Volume(np.load(tmp_path / "label.npy", mmap_mode="r"), np.eye(4)))
    for t in (RandCropByPosNeg((8, 8, 8), num_samples=3), RandCropByLabelClasses((8, 8, 8), 3, num_samples=3)):
        a = t(mm, np.random.default_rng(11))
        b = t(mm, np.random.default_rng(11))
        for pa, pb in zip(a, b):
            for k in ("image", "label"):
                assert type(pa[k].array) is np.ndarray and pa[k].array.flags.writeable
                np.testing.assert_array_equal(pa[k].array, pb[k].array)
    np.testing.assert_array_equal(mm["image"].array, d["image"].array)
    c = Compose([RandCropByPosNeg((8, 8, 8), num_samples=3)])
    assert c.deterministic_prefix().transforms == []
    assert len(c(mm, np.random.default_rng(0))) == 3


# ----------------------------------------------------------------------------
# presets end to end
# ----------------------------------------------------------------------------
def synthetic_pair(shape=(24, 22, 10)):
    rng = np.random.default_rng(12)
    A = np.diag([-0.8, -0.8, 2.5, 1.0])  # LPS, anisotropic, like a CT series
    A[:3, 3] = [100.0, 80.0, -40.0]
    g = np.stack(np.meshgrid(*[np.linspace(-1, 1, n) for n in shape], indexing="ij"))
    body = (g ** 2).sum(0) < 0.7
    organ = ((g - 0.1) ** 2).sum(0) < 0.15
    hu = np.where(body, 40.0, -1000.0) + np.where(organ, 60.0, 0.0) + rng.normal(0, 10, shape)
    lab = organ.astype(np.uint8)
    lab[((g + 0.3) ** 2).sum(0) < 0.03] = 2
    return {"image": Volume(hu.astype(np.int16)[None], A), "label": Volume(lab[None], A)}


@pytest.mark.parametrize("kind", [
    {"kind": "window", "a_min": -200, "a_max": 300},
    {"kind": "zscore"},
    {"kind": "percentile", "lower": 1, "upper": 99},
])
@pytest.mark.parametrize("mode", ["classes", "posneg"])
def test_presets_end_to_end(kind, mode):
    pre = build_preprocess(PreprocessTable(pixdim=[1.5, 1.5, 2.0], intensity={"CT": kind}), "CT")
    item = pre(synthetic_pair())
    assert item["image"].orientation == ("R", "A", "S") and item["image"].array.dtype == np.float32
    assert item["label"].spatial_shape == item["image"].spatial_shape
    item["label_index"] = class_index(np.asarray(item["label"].array), 3)
    train = build_train_transforms(SamplingTable(patch_size=[16, 16, 8], samples_per_case=3, mode=mode),
                                   AugmentTable(flip_prob=0.5, rot90_prob=0.5, affine_prob=0.5,
                                                intensity_prob=0.5, noise_prob=0.5), num_classes=3)
    assert len(train.deterministic_prefix().transforms) == 0
    a = train(item, np.random.default_rng(0))
    b = train(item, np.random.default_rng(0))
    assert len(a) == 3
    for pa, pb in zip(a, b):
        assert pa["image"].spatial_shape == (16, 16, 8) == pa["label"].spatial_shape
        assert pa["image"].array.dtype == np.float32 and np.isfinite(pa["image"].array).all()
        assert set(np.unique(pa["label"].array)) <= {0, 1, 2}
        np.testing.assert_array_equal(pa["image"].array, pb["image"].array)
