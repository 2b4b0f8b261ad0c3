"""Intensity normalisation vs MONAI's dictionary transforms (values within 1e-5)."""
import warnings

import numpy as np
import pytest
import torch

from imaging_core.io.volume import Volume
from imaging_core.transforms.base import Compose
from imaging_core.transforms.intensity import (NormalizeIntensity, ScaleIntensityRange,
                                               ScaleIntensityRangePercentiles)

pytest.importorskip("monai")
from monai.transforms import (NormalizeIntensityd, ScaleIntensityRanged,  # noqa: E402
                              ScaleIntensityRangePercentilesd)


def monai_image(t, arr):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return t({"image": torch.from_numpy(np.array(arr))})["image"].numpy()


def item(arr, lab=None):
    d = {"image": Volume(arr, np.eye(4)), "case_id": "c0"}
    if lab is not None:
        d["label"] = Volume(lab, np.eye(4))
    return d


def ct_like(rng, shape=(1, 9, 8, 7), dtype=np.int16):
    return rng.integers(-1100, 1600, size=shape).astype(dtype)


@pytest.mark.parametrize("dtype", [np.int16, np.float32, np.float64])
@pytest.mark.parametrize("a_min,a_max,b_min,b_max,clip", [
    (-200.0, 300.0, 0.0, 1.0, True),
    (-1000.0, 1000.0, -1.0, 1.0, False),
    (40.0, 400.0, 0.0, 255.0, True),
    (-175.0, 250.0, None, None, False),
])
def test_scale_intensity_range_matches_monai(dtype, a_min, a_max, b_min, b_max, clip):
    arr = ct_like(np.random.default_rng(0), dtype=dtype)
    lab = (arr > 0).astype(np.uint8)
    arr0 = arr.copy()
    out = ScaleIntensityRange(a_min, a_max, b_min, b_max, clip=clip)(item(arr, lab))
    ref = monai_image(ScaleIntensityRanged("image", a_min, a_max, b_min, b_max, clip=clip), arr)
    assert out["image"].array.dtype == np.float32
    np.testing.assert_allclose(out["image"].array, ref, atol=1e-5, rtol=1e-6)
    np.testing.assert_array_equal(arr, arr0)  # input untouched
    assert out["label"].array is lab and out["case_id"] == "c0"


def test_scale_intensity_range_equal_bounds_shifts():
    arr = np.arange(8, dtype=np.float32).reshape(1, 2, 2, 2)
    with pytest.warns(RuntimeWarning):
        out = ScaleIntensityRange(3.0, 3.0, 1.0, 2.0)(item(arr))
    np.testing.assert_allclose(out["image"].array, arr - 3.0 + 1.0)


def make_mr(rng, shape=(2, 10, 9, 8)):
    arr = rng.normal(300.0, 80.0, size=shape).astype(np.float32)
    arr[:, :3] = 0.0  # background, as in skull-stripped MR
    arr[1, :, :2] = 0.0
    return arr


@pytest.mark.parametrize("nonzero,channel_wise", [(True, True), (False, True), (True, False),
                                                  (False, False)])
def test_normalize_intensity_matches_monai(nonzero, channel_wise):
    arr = make_mr(np.random.default_rng(1))
    mask = "nonzero" if nonzero else "all"  # fedvox's mask names for MONAI's two semantics
    out = NormalizeIntensity(mask=mask, channel_wise=channel_wise)(item(arr))["image"].array
    ref = monai_image(NormalizeIntensityd("image", nonzero=nonzero, channel_wise=channel_wise), arr)
    assert out.dtype == np.float32
    np.testing.assert_allclose(out, ref, atol=1e-5, rtol=1e-5)
    if nonzero:
        np.testing.assert_array_equal(out[arr == 0], 0.0)  # background stays zero
        if channel_wise:
            for c in range(2):
                fg = out[c][arr[c] != 0]
                assert abs(fg.mean()) < 1e-5 and abs(fg.std() - 1) < 1e-5


def test_normalize_intensity_edge_channels_match_monai():
    arr = np.zeros((3, 5, 4, 3), np.float32)
    arr[1, 1:3] = 7.0  # constant non-zero: std 0 is treated as 1
    arr[2] = np.random.default_rng(2).normal(size=(5, 4, 3))  # channel 0 all zero: left alone
    out = NormalizeIntensity(mask="nonzero")(item(arr))["image"].array
    ref = monai_image(NormalizeIntensityd("image", nonzero=True, channel_wise=True), arr)
    np.testing.assert_allclose(out, ref, atol=1e-5)
    np.testing.assert_array_equal(out[0], 0.0)
    np.testing.assert_array_equal(out[1], 0.0)


@pytest.mark.parametrize("lower,upper,b_min,b_max,clip,relative,channel_wise", [
    (0.5, 99.5, 0.0, 1.0, True, False, False),
    (5.0, 95.0, -1.0, 1.0, False, False, False),
    (1.0, 99.0, 0.0, 1.0, True, False, True),
    (10.0, 90.0, 0.0, 1.0, False, True, False),
])
def test_percentiles_match_monai(lower, upper, b_min, b_max, clip, relative, channel_wise):
    arr = make_mr(np.random.default_rng(3))
    t = ScaleIntensityRangePercentiles(lower, upper, b_min, b_max, clip=clip, relative=relative,
                                       channel_wise=channel_wise)
    out = t(item(arr))["image"].array
    ref = monai_image(ScaleIntensityRangePercentilesd("image", lower, upper, b_min, b_max, clip=clip,
                                                      relative=relative, channel_wise=channel_wise), arr)
    assert out.dtype == np.float32 and out.shape == arr.shape
    np.testing.assert_allclose(out, ref, atol=1e-5, rtol=1e-5)


def test_percentiles_reject_bad_range():
    with pytest.raises(ValueError):
        ScaleIntensityRangePercentiles(-1.0, 99.0, 0.0, 1.0)


def test_read_only_memmap_input(tmp_path):
    rng = np.random.default_rng(4)
    np.save(tmp_path / "img.npy", make_mr(rng))
    mm = np.load(tmp_path / "img.npy", mmap_mode="r")
    before = np.array(mm)
    for t in (ScaleIntensityRange(0.0, 500.0), NormalizeIntensity(),
              ScaleIntensityRangePercentiles(1.0, 99.0, 0.0, 1.0)):
        out = t(item(mm))["image"].array
        assert not isinstance(out, np.memmap) and out.flags.writeable and out.dtype == np.float32
    np.testing.assert_array_equal(mm, before)


def test_deterministic_and_in_cached_prefix():
    ts = [ScaleIntensityRange(-200, 300), NormalizeIntensity(mask="nonzero"), ScaleIntensityRangePercentiles(1, 99)]
    c = Compose(ts)
    assert len(c.deterministic_prefix().transforms) == 3
    # repr is what cache keys are built from: stable and parameter-bearing
    assert repr(ts[0]) == repr(ScaleIntensityRange(-200, 300))
    assert repr(ts[0]) != repr(ScaleIntensityRange(-200, 301))
    assert "mask='nonzero'" in repr(ts[1])
    assert repr(NormalizeIntensity(mask="head", outside=-3.0)) != repr(NormalizeIntensity(mask="head", outside=-2.0))
