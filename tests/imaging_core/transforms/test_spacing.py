"""Spacing / resample_to_grid vs MONAI Spacingd / SpatialResampled, plus roundtrips."""
import warnings

import numpy as np
import pytest
import torch
from scipy.spatial.transform import Rotation

from imaging_core.io.volume import Volume
from imaging_core.transforms.crop_pad import CropForeground
from imaging_core.transforms.orientation import Orientation
from imaging_core.transforms.spatial import (Spacing, resample_to_grid, spacing_grid,
                                             to_original_space)

pytest.importorskip("monai")
from monai.data import MetaTensor  # noqa: E402
from monai.transforms import SpatialResample, Spacingd  # noqa: E402


def rand_affine(rng, oblique=0.0, spacing=None, shear=0.0):
    perm = rng.permutation(3)
    flips = rng.choice([-1, 1], 3)
    P = np.zeros((3, 3))
    P[perm, np.arange(3)] = flips
    sp = rng.uniform(0.5, 3.0, 3) if spacing is None else np.asarray(spacing, float)
    S = np.diag(sp)
    if shear:
        S[0, 1] = shear * sp[1]
    M = P @ S
    if oblique:
        M = Rotation.from_rotvec(rng.normal(0, oblique, 3)).as_matrix() @ M
    A = np.eye(4)
    A[:3, :3] = M
    A[:3, 3] = rng.uniform(-80, 80, 3)
    return A


def smooth_image(shape, scale=100.0):
    x = np.stack(np.meshgrid(*[np.linspace(0, 1, s) for s in shape], indexing="ij"))
    return (scale * (np.sin(3 * x[0]) + np.cos(2 * x[1]) * x[2]))[None].astype(np.float32)


def mt(arr, A):
    return MetaTensor(torch.from_numpy(arr.copy()), affine=torch.from_numpy(A))


def monai_spacing(img, lab, A, pixdim):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        d = Spacingd(["image", "label"], pixdim=pixdim, mode=("bilinear", "nearest"))(
            {"image": mt(img, A), "label": mt(lab, A)})
    return d["image"], d["label"]


def _cases():
    rng = np.random.default_rng(42)
    cases = []
    for i in range(24):
        A = rand_affine(rng, oblique=0.12 if i % 2 else 0.0)
        shape = tuple(int(s) for s in rng.integers(20, 41, 3))
        if i % 6 == 4:  # exact integer / half ratios (nearest-neighbour ties)
            pix = tuple(float(s) for s in np.round(np.linalg.norm(A[:3, :3], axis=0) * rng.choice([0.5, 2.0], 3), 6))
        else:
            pix = tuple(float(p) for p in rng.uniform(0.7, 3.5, 3))
        cases.append((A, shape, pix))
    return cases


def test_spacing_matches_monai():
    rng = np.random.default_rng(7)
    worst_val, worst_aff, min_agree = 0.0, 0.0, 1.0
    for A, shape, pix in _cases():
        img = smooth_image(shape)
        lab = rng.integers(0, 4, (1,) + shape).astype(np.uint8)
        img0, lab0 = img.copy(), lab.copy()
        out = Spacing(pix)({"image": Volume(img, A), "label": Volume(lab, A)})
        mi, ml = monai_spacing(img, lab, A, pix)
        assert out["image"].array.shape == tuple(mi.shape)
        assert out["label"].array.shape == tuple(ml.shape)
        assert out["image"].array.dtype == np.float32
        assert out["label"].array.dtype == np.uint8
        np.testing.assert_allclose(out["image"].affine, spacing_grid(A, shape, pix)[0])
        worst_aff = max(worst_aff, np.abs(out["image"].affine - mi.affine.numpy()).max())
        worst_aff = max(worst_aff, np.abs(out["label"].affine - ml.affine.numpy()).max())
        worst_val = max(worst_val, np.abs(out["image"].array - mi.numpy()).max())
        agree = (out["label"].array == ml.numpy().astype(np.uint8)).mean()
        min_agree = min(min_agree, agree)
        assert set(np.unique(out["label"].array)) <= set(np.unique(lab))
        np.testing.assert_array_equal(img, img0)
        np.testing.assert_array_equal(lab, lab0)
    # measured: affines ~1e-13, values ~2e-5 on a +-200 image, labels identical
    assert worst_aff < 1e-6
    assert worst_val < 1e-3
    assert min_agree >= 0.999


def test_spacing_int16_image_and_sheared_affine_fallback():
    rng = np.random.default_rng(3)
    shape = (23, 31, 27)
    for shear in (0.2, -0.3):
        A = rand_affine(rng, oblique=0.1, shear=shear)
        img = (smooth_image(shape) * 5).astype(np.int16)
        lab = (smooth_image(shape) > 50).astype(np.int64)
        pix = (1.3, 2.2, 1.7)
        out = Spacing(pix)({"image": Volume(img, A), "label": Volume(lab, A)})
        mi, ml = monai_spacing(img, lab, A, pix)
        assert out["image"].array.shape == tuple(mi.shape)
        np.testing.assert_allclose(out["image"].affine, mi.affine.numpy(), atol=1e-6)
        np.testing.assert_allclose(out["image"].array, mi.numpy(), atol=0.05, rtol=1e-4)
        assert (out["label"].array == ml.numpy().astype(np.int64)).mean() >= 0.998  # nearest-neighbour ties at exact half-voxels may round either way
        assert out["label"].array.dtype == np.int64


def test_spacing_keeps_near_equal_spacing():
    A = np.diag([1.0, 1.0005, 2.0, 1.0])
    img = smooth_image((10, 12, 14))
    out = Spacing((1.0, 1.0, 2.0))({"image": Volume(img, A)})
    assert out["image"].array.shape == (1, 10, 12, 14)
    np.testing.assert_allclose(out["image"].affine, A)
    np.testing.assert_array_equal(out["image"].array, img)
    assert not np.shares_memory(out["image"].array, img)


def test_resample_to_grid_matches_monai_oblique():
    rng = np.random.default_rng(11)
    for _ in range(6):
        A = rand_affine(rng, oblique=0.1)
        B = rand_affine(rng, oblique=0.3)
        B[:3, 3] = A[:3, 3] + rng.normal(0, 3, 3)
        shape = (21, 25, 23)
        out_shape = (19, 22, 24)
        img = smooth_image(shape)
        lab = rng.integers(0, 3, (1,) + shape).astype(np.uint8)
        sr = SpatialResample(mode="bilinear", padding_mode="border", align_corners=False)
        mi = sr(mt(img, A), dst_affine=torch.from_numpy(B), spatial_size=out_shape)
        ml = SpatialResample(mode="nearest", padding_mode="border", align_corners=False)(
            mt(lab, A), dst_affine=torch.from_numpy(B), spatial_size=out_shape)
        oi = resample_to_grid(Volume(img, A), B, out_shape, "linear")
        ol = resample_to_grid(Volume(lab, A), B, out_shape, "nearest")
        assert oi.array.shape == (1,) + out_shape
        np.testing.assert_allclose(oi.affine, B)
        np.testing.assert_allclose(oi.array, mi.numpy(), atol=0.05)
        assert ol.array.dtype == np.uint8
        assert (ol.array == ml.numpy().astype(np.uint8)).mean() >= 0.995


def _sphere_volume():
    rng = np.random.default_rng(5)
    shape = (40, 36, 30)
    # LPS-like, oblique, anisotropic "scanner" geometry
    A = rand_affine(rng, oblique=0.08, spacing=(0.9, 0.8, 2.2))
    idx = np.stack(np.meshgrid(*[np.arange(s) for s in shape], indexing="ij")).reshape(3, -1)
    world = A[:3, :3] @ idx + A[:3, 3:4]
    centre = A[:3, :3] @ (np.array(shape) / 2) + A[:3, 3]
    r = np.linalg.norm(world - centre[:, None], axis=0).reshape(shape)
    lab = ((r < 12).astype(np.uint8) + (r < 6)).astype(np.uint8)[None]
    img = (np.exp(-r / 20) * 1000).astype(np.int16)[None]
    meta = {"original_affine": A.copy(), "original_shape": shape}
    return {"image": Volume(img, A, dict(meta)), "label": Volume(lab, A, dict(meta))}


def test_roundtrip_orientation_exact():
    for codes in ("RAS", "LPS", "PLI"):
        data = _sphere_volume()
        out = Orientation(codes)(data)
        back = to_original_space(out["label"])
        np.testing.assert_array_equal(back.array, data["label"].array)
        np.testing.assert_allclose(back.affine, data["label"].affine)


def test_roundtrip_spacing_crop_dice():
    data = _sphere_volume()
    out = Orientation("RAS")(data)
    out = Spacing((1.5, 1.5, 2.0))(out)
    out = CropForeground("image", threshold=200, margin=2)(out)
    assert out["label"].spatial_shape != data["label"].spatial_shape
    back = to_original_space(out["label"])
    assert back.array.shape == data["label"].array.shape
    assert back.array.dtype == np.uint8
    orig = data["label"].array
    for c in (1, 2):
        a, b = orig >= c, back.array >= c
        dice = 2 * (a & b).sum() / (a.sum() + b.sum())
        assert dice > 0.9, (c, dice)
    # probabilities (float) go back with linear interpolation
    prob = out["image"].replace(array=(out["label"].array > 0).astype(np.float32))
    pb = to_original_space(prob)
    assert pb.array.dtype == np.float32
    a, b = orig > 0, pb.array > 0.5
    assert 2 * (a & b).sum() / (a.sum() + b.sum()) > 0.9


def test_to_original_space_requires_meta():
    with pytest.raises(ValueError):
        to_original_space(Volume(np.zeros((1, 2, 2, 2), np.uint8), np.eye(4)))


@pytest.mark.parametrize("dtype", [np.int16, np.uint8, np.uint16, np.float32, np.bool_])
def test_spacing_same_values_for_any_memory_layout(dtype):
    """C order, x-fastest (a NIfTI file's layout), flipped and permuted views
    (what Orientation returns) give bit-identical resampled arrays, C-contiguous."""
    rng = np.random.default_rng(5)
    base = rng.integers(0, 300, size=(1, 41, 37, 19)).astype(dtype)
    A = np.diag([0.8, 0.9, 2.5, 1.0])
    views = {"C": base, "F": np.asfortranarray(base),
             "F flipped": np.asfortranarray(base[:, ::-1, ::-1])[:, ::-1, ::-1],
             "C flipped": np.ascontiguousarray(base[:, :, ::-1])[:, :, ::-1],
             "permuted": np.ascontiguousarray(base.transpose(0, 3, 1, 2)).transpose(0, 2, 3, 1)}
    for key in ("image", "label"):
        outs = {}
        for name, arr in views.items():
            assert np.array_equal(arr, base)
            out = Spacing((1.5, 1.3, 2.0), keys=(key,))({key: Volume(arr, A)})[key].array
            assert out.flags.c_contiguous and not np.shares_memory(out, arr)
            outs[name] = out
        for name, out in outs.items():
            assert out.dtype == outs["C"].dtype
            np.testing.assert_array_equal(out, outs["C"], err_msg=f"{key}, {name} layout")


def test_a_spacing_far_finer_than_the_image_is_one_error_naming_the_file_not_an_allocation():
    """A plan or table asking 0.05 mm of a 1 mm scan would make 10^10 voxels; the case
    is refused (the site's cache skips and reports it) before anything is allocated."""
    from imaging_core.errors import ImagingError
    vol = Volume(np.zeros((1, 64, 64, 64), np.float32), np.eye(4), meta={"source": "/data/site/case7.nii.gz"})
    with pytest.raises(ImagingError, match=r"case7\.nii\.gz: resampling image \(64, 64, 64\) to \(0\.05,\) mm "
                                           r"would make \(1261, 1261, 1261\) voxels"):
        Spacing(0.05, keys=("image",))({"image": vol})
    out = Spacing(0.5, keys=("image",))({"image": vol})  # 8x the voxels: well within the bound
    assert out["image"].spatial_shape == (127, 127, 127)
