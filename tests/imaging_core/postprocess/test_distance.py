import numpy as np
import pytest
import scipy.ndimage as ndi
import torch

from imaging_core.postprocess import distance_transform


def _cases():
    rng = np.random.default_rng(0)
    for shape in [(20, 21, 22), (1, 30, 31), (33, 1, 9), (5, 6, 1), (64, 3, 40)]:
        for density in (0.02, 0.5, 0.97):
            yield f"{shape}-{density}", rng.random(shape) > density  # nonzero = foreground
    g = np.indices((31, 29, 27)).astype(float)
    yield "sphere", ((g - 15) ** 2).sum(0) < 120
    single = np.ones((17, 18, 19), bool)
    single[3, 15, 9] = False  # one background voxel: distances up to the far corner
    yield "one-zero", single


CASES = list(_cases())


@pytest.mark.parametrize("spacing", [(1.0, 1.0, 1.0), (0.8, 1.3, 2.5), (3.0, 0.5, 0.7)])
@pytest.mark.parametrize("name, vol", CASES, ids=[n for n, _ in CASES])
def test_matches_scipy_edt(ops, name, vol, spacing):
    ref = ndi.distance_transform_edt(vol, sampling=spacing)
    d64 = distance_transform(torch.from_numpy(vol), spacing, dtype=torch.float64)
    assert d64.dtype == torch.float64 and d64.shape == vol.shape
    np.testing.assert_allclose(d64.numpy(), ref, rtol=1e-12, atol=1e-12)
    d32 = distance_transform(vol, spacing)
    assert isinstance(d32, np.ndarray) and d32.dtype == np.float32
    np.testing.assert_allclose(d32, ref, rtol=1e-5, atol=1e-6)


def test_2d_and_scalar_spacing(ops):
    rng = np.random.default_rng(1)
    img = rng.random((50, 61)) > 0.1
    np.testing.assert_allclose(distance_transform(img, (0.7, 1.9), dtype=torch.float64),
                               ndi.distance_transform_edt(img, sampling=(0.7, 1.9)), rtol=1e-12)
    vol = rng.random((10, 11, 12)) > 0.2
    np.testing.assert_allclose(distance_transform(vol, 2.0, dtype=torch.float64),
                               ndi.distance_transform_edt(vol, sampling=2.0), rtol=1e-12)


def test_no_background_is_inf_and_all_background_is_zero(ops):
    assert torch.isinf(distance_transform(torch.ones(4, 5, 6, dtype=torch.bool))).all()
    assert (distance_transform(torch.zeros(4, 5, 6, dtype=torch.uint8)) == 0).all()


def test_integer_mask(ops):
    lm = np.zeros((9, 9, 9), np.int64)
    lm[2:7, 2:7, 2:7] = 3
    np.testing.assert_allclose(distance_transform(lm, dtype=torch.float64),
                               ndi.distance_transform_edt(lm))


@pytest.mark.parametrize("kwargs, match", [
    (dict(mask=np.zeros((4, 4, 4), np.float32)), "bool or integer"),
    (dict(mask=np.zeros((4, 4), bool), spacing=(1, 1, 1)), "spacing"),
    (dict(mask=np.zeros((4, 4, 4), bool), spacing=(1, 0, 1)), "spacing"),
    (dict(mask=np.zeros((4, 4, 4), bool), spacing=(1, float("nan"), 1)), "spacing"),
    (dict(mask=np.zeros((2, 4, 4, 4), bool)), "2-D or 3-D"),
    (dict(mask=np.zeros((4, 4, 4), bool), dtype=torch.float16), "dtype"),
    (dict(mask=torch.zeros(4, 4, 4, dtype=torch.bool, device="meta")), "device"),
])
def test_bad_input(ops, kwargs, match):
    with pytest.raises(ValueError, match=match):
        distance_transform(**kwargs)
