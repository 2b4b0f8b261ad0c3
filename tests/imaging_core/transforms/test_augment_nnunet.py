"""nnU-Net v2's augmentation set: each transform against MONAI's equivalent (same drawn
parameters -> same output; same distribution where the RNGs differ), labels nearest,
one resampling for the combined warp, seeded reproducibility."""
import warnings

import numpy as np
import pytest
import torch

from imaging_core.io.volume import Volume
from imaging_core.transforms.augment import (RandAdjustContrast, RandContrast, RandGaussianNoise,
                                             RandGaussianSmooth, RandSimulateLowResolution, RandSpatial,
                                             adjust_contrast, affine_index_map, draw_around_one, elastic_field,
                                             gaussian_smooth, scale_about_mean, simulate_low_resolution,
                                             warp_array)

pytest.importorskip("monai")
from monai.transforms import (Affine, AdjustContrast, GaussianSmooth, RandGaussianNoise as MRandGaussianNoise,  # noqa: E402
                              RandSimulateLowResolution as MRandSimulateLowResolution, Resample,
                              ScaleIntensityFixedMean)


def mon(t, arr):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return np.asarray(t(torch.from_numpy(np.array(arr))))


def item(shape=(14, 12, 10), seed=0):
    """A smooth image in [0, 1] plus a 3-class label made from it."""
    rng = np.random.default_rng(seed)
    g = np.stack(np.meshgrid(*[np.linspace(-1, 1, n) for n in shape], indexing="ij"))
    c = rng.uniform(-0.3, 0.3, 3)
    img = np.exp(-((g - c[:, None, None, None]) ** 2).sum(0) * 2.0)[None].astype(np.float32)
    img += 0.05 * rng.standard_normal(img.shape, dtype=np.float32)
    lab = np.digitize(img, [0.3, 0.7]).astype(np.uint8)
    return {"image": Volume(img, np.eye(4)), "label": Volume(lab, np.eye(4))}


IMG = item()["image"].array


@pytest.mark.parametrize("angles,scale", [((0.3, -0.2, 0.1), 1.0), ((0.0, 0.0, 0.0), 1.3), ((0.5, 0.2, -0.4), 0.8)])
def test_rotation_and_scale_match_monai_affine(angles, scale):
    ours = warp_array(IMG, affine_index_map(IMG.shape[1:], angles, (scale,) * 3), "linear", "border")
    ref = mon(Affine(rotate_params=angles, scale_params=(scale,) * 3, padding_mode="border", mode="bilinear",
                     image_only=True), IMG)
    np.testing.assert_allclose(ours, ref, atol=1e-5)


def test_elastic_warp_matches_monai_resample_of_the_same_grid():
    """The combined warp (affine + displacement) is the single resampling MONAI's Resample
    makes from the same sampling grid (MONAI's grid is centred voxel coordinates)."""
    rng = np.random.default_rng(1)
    shape = IMG.shape[1:]
    t = affine_index_map(shape, (0.2, 0.1, -0.3), (1.1,) * 3)
    d = elastic_field(shape, 5.0, 2.0, rng)
    ours = warp_array(IMG, t, "linear", "border", d)
    ijk = np.stack(np.meshgrid(*[np.arange(n) for n in shape], indexing="ij")).astype(np.float64)
    src = np.einsum("ab,bxyz->axyz", t[:3, :3], ijk) + t[:3, 3, None, None, None] + d
    c = (np.asarray(shape) - 1) / 2
    grid = np.concatenate([src - c[:, None, None, None], np.ones((1, *shape))]).astype(np.float32)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ref = Resample(mode="bilinear", padding_mode="border")(torch.from_numpy(IMG), torch.from_numpy(grid))
    np.testing.assert_allclose(ours, np.asarray(ref), atol=1e-5)


def test_elastic_field_is_smooth_and_bounded():
    rng = np.random.default_rng(2)
    d = elastic_field((24, 20, 16), 8.0, 3.0, rng)
    assert d.shape == (3, 24, 20, 16)
    assert np.isclose(np.abs(d).max(), 3.0, atol=1e-5)
    # neighbouring voxels move almost together (white noise would differ by ~2x the peak)
    for ax in (1, 2, 3):
        assert np.abs(np.diff(d, axis=ax)).max() < 3.0 / 2


def test_rand_spatial_labels_nearest_and_in_step():
    it = item()
    t = RandSpatial(rotate_prob=1.0, scale_prob=1.0, elastic_prob=1.0, elastic_magnitude=(2.0, 2.0))
    out = t(it, np.random.default_rng(3))
    lab = out["label"].array
    assert lab.dtype == np.uint8 and set(np.unique(lab)) <= {0, 1, 2}
    assert not np.array_equal(out["image"].array, it["image"].array)
    # label warped by the same draw: its class-2 region still sits on the bright image voxels
    img = out["image"].array
    assert img[lab == 2].mean() > 0.65 > img[lab == 0].mean()
    np.testing.assert_array_equal(out["image"].affine, out["label"].affine)


def test_rand_spatial_nothing_drawn_returns_input_untouched():
    it = item()
    t = RandSpatial(rotate_prob=0.0, scale_prob=0.0, elastic_prob=0.0)
    assert t(it, np.random.default_rng(0)) is it


def test_draw_around_one_is_half_below_half_above():
    rng = np.random.default_rng(0)
    v = np.array([draw_around_one(rng, 0.7, 1.5) for _ in range(4000)])
    assert v.min() >= 0.7 and v.max() <= 1.5
    assert abs((v < 1).mean() - 0.5) < 0.03   # uniform over (0.7, 1.5) would give 0.375


@pytest.mark.parametrize("invert,retain", [(False, False), (True, False), (False, True), (True, True)])
@pytest.mark.parametrize("gamma", [0.7, 1.4])
def test_gamma_matches_monai_adjust_contrast(gamma, invert, retain):
    ours = adjust_contrast(IMG, gamma, invert_image=invert, retain_stats=retain)
    ref = mon(AdjustContrast(gamma, invert_image=invert, retain_stats=retain), IMG)
    np.testing.assert_allclose(ours, ref, atol=2e-5)
    if retain:
        assert np.isclose(ours.mean(), IMG.mean(), atol=1e-4) and np.isclose(ours.std(), IMG.std(), rtol=1e-3)


@pytest.mark.parametrize("factor", [0.75, 1.2])
def test_contrast_matches_monai_scale_fixed_mean(factor):
    ours = scale_about_mean(IMG, factor)
    ref = mon(ScaleIntensityFixedMean(factor=factor - 1.0, preserve_range=True, fixed_mean=True), IMG)
    np.testing.assert_allclose(ours, ref, atol=1e-5)
    assert ours.min() >= IMG.min() - 1e-6 and ours.max() <= IMG.max() + 1e-6


@pytest.mark.parametrize("sigmas", [(0.5, 0.5, 0.5), (0.6, 1.0, 0.8)])
def test_blur_matches_monai_gaussian_smooth_inside(sigmas):
    ours = gaussian_smooth(IMG, sigmas)
    ref = mon(GaussianSmooth(sigma=list(sigmas), approx="erf"), IMG)
    r = 5  # MONAI pads zeros, we replicate the border: compare beyond the kernel radius
    np.testing.assert_allclose(ours[:, r:-r, r:-r, r:-r], ref[:, r:-r, r:-r, r:-r], atol=1e-4)
    flat = np.full((1, 8, 8, 8), 3.0, np.float32)
    np.testing.assert_allclose(gaussian_smooth(flat, sigmas), flat, atol=1e-5)  # no dark rim


@pytest.mark.parametrize("zoom", [0.5, 0.73, 1.0])
def test_low_resolution_matches_monai(zoom):
    ours = simulate_low_resolution(IMG, zoom)
    ref = mon(MRandSimulateLowResolution(prob=1.0, zoom_range=(zoom, zoom)), IMG)
    np.testing.assert_allclose(ours, ref, atol=1e-5)
    assert ours.shape == IMG.shape


def test_noise_has_monai_distribution():
    """RNGs differ: compare the noise power over many draws (sigma ~ U(0, std))."""
    x = np.zeros((1, 16, 16, 16), np.float32)
    ours_t = RandGaussianNoise(prob=1.0, std=0.1)
    ref_t = MRandGaussianNoise(prob=1.0, std=0.1)
    ref_t.set_random_state(0)
    rng = np.random.default_rng(0)
    ours = [ours_t({"image": Volume(x, np.eye(4))}, rng)["image"].array.var() for _ in range(300)]
    ref = [mon(ref_t, x).var() for _ in range(300)]
    # E[sigma^2] = std^2 / 3
    assert abs(np.mean(ours) - 0.01 / 3) < 0.0006 and abs(np.mean(ref) - 0.01 / 3) < 0.0006
    assert abs(np.mean(ours) - np.mean(ref)) < 0.0008


def test_random_wrappers_draw_within_ranges():
    rng = np.random.default_rng(0)
    sig = RandGaussianSmooth(prob=1.0, sigma=(0.5, 1.0))._draw(rng)
    assert len(sig) == 3 and all(0.5 <= s <= 1.0 for s in sig)
    assert 0.5 <= RandSimulateLowResolution(prob=1.0)._draw(rng) <= 1.0
    assert 0.75 <= RandContrast(prob=1.0)._draw(rng) <= 1.25
    assert 0.7 <= RandAdjustContrast(prob=1.0, gamma=(0.7, 1.5), around_one=True)._draw(rng) <= 1.5


def test_intensity_transforms_leave_label_alone():
    it = item()
    for t in (RandGaussianSmooth(prob=1.0), RandSimulateLowResolution(prob=1.0, zoom_range=(0.5, 0.5)),
              RandContrast(prob=1.0), RandAdjustContrast(prob=1.0, gamma=(0.7, 1.5), invert_image=True)):
        out = t(it, np.random.default_rng(0))
        assert out["label"] is it["label"]
        assert out["image"].array.shape == it["image"].array.shape
        assert not np.array_equal(out["image"].array, it["image"].array)


def test_bad_arguments_are_clear():
    with pytest.raises(ValueError, match="zoom_range"):
        RandSimulateLowResolution(zoom_range=(0.5, 1.5))
    with pytest.raises(ValueError, match="scale_range"):
        RandSpatial(scale_range=(1.4, 0.7))
    with pytest.raises(ValueError, match="padding_mode"):
        RandSpatial(padding_mode="wrap")


def test_rand_spatial_affine_claims_the_world_point_sampled():
    """Quarter turns about two axes land on voxel centres: every output voxel's value is
    the input voxel its new affine points at (image linear, label nearest)."""
    shape = (7, 7, 7)
    arr = np.arange(np.prod(shape), dtype=np.float32).reshape((1, *shape))
    A = np.diag([2.0, 1.5, 3.0, 1.0])
    A[:3, 3] = (10, -4, 7)
    it = {"image": Volume(arr, A), "label": Volume((arr % 3).astype(np.uint8), A)}
    out = RandSpatial().warp(it, (np.pi / 2, 0.0, -np.pi / 2), (1.0, 1.0, 1.0))
    ijk = np.stack(np.meshgrid(*[np.arange(n) for n in shape], indexing="ij")).reshape(3, -1)
    m = np.linalg.solve(A, out["image"].affine)
    src = m[:3, :3] @ ijk + m[:3, 3:]
    assert np.allclose(src, np.rint(src), atol=1e-6)
    flat = np.ravel_multi_index(tuple(np.rint(src).astype(int)), shape)
    np.testing.assert_allclose(out["image"].array.reshape(-1), flat, atol=1e-3)
    np.testing.assert_array_equal(out["label"].array.reshape(-1), flat % 3)
