import numpy as np
import pytest
import torch

from imaging_core.postprocess import bilateral_filter, gaussian_filter


def _image(shape, seed=0):
    rng = np.random.default_rng(seed)
    img = rng.random(shape)
    img[..., : shape[-1] // 2] += 1.0  # an edge for the range term to respect
    return img.astype(np.float32)


@pytest.mark.parametrize("ss, rs, spacing", [
    (1.5, 0.2, (1.0, 1.0, 1.0)),
    (1.0, 0.5, (1.0, 1.0, 1.0)),
    (2.0, 0.1, (0.8, 1.2, 2.5)),          # anisotropic: radius 8, 5, 3 voxels
    ((1.0, 2.0, 1.5), 0.3, (1.0, 1.0, 1.0)),
])
def test_bilateral_matches_brute_force(ops, brute_filter, ss, rs, spacing):
    img = _image((1, 1, 12, 12, 12))
    out = bilateral_filter(torch.from_numpy(img), ss, rs, spacing)
    ref = brute_filter(img[0], img[0], ss, rs, spacing)
    assert out.shape == img.shape and out.dtype == torch.float32
    np.testing.assert_allclose(out[0].numpy(), ref, rtol=1e-5, atol=1e-5)


def test_bilateral_multichannel_batch_and_layouts(ops, brute_filter):
    img = _image((2, 3, 12, 11, 10), seed=1)
    out = bilateral_filter(img, 1.2, 0.4)  # numpy in, numpy out
    assert isinstance(out, np.ndarray) and out.shape == img.shape
    for b in range(2):  # range distance over all 3 channels
        np.testing.assert_allclose(out[b], brute_filter(img[b], img[b], 1.2, 0.4),
                                   rtol=1e-5, atol=1e-5)
    # (X,Y,Z) and (C,X,Y,Z) faces, float64 in -> float64 out
    vol = img[0, 0].astype(np.float64)
    o3 = bilateral_filter(torch.from_numpy(vol), 1.2, 0.4)
    assert o3.dtype == torch.float64 and o3.shape == vol.shape
    np.testing.assert_allclose(o3.numpy(), brute_filter(vol[None], vol[None], 1.2, 0.4)[0],
                               rtol=1e-5, atol=1e-5)
    o4 = bilateral_filter(torch.from_numpy(img[0]), 1.2, 0.4)
    np.testing.assert_allclose(o4.numpy(), out[0], rtol=1e-6, atol=1e-6)


def test_bilateral_preserves_edges_and_constant(ops):
    step = np.zeros((16, 16, 16), np.float32)
    step[8:] = 1.0
    out = bilateral_filter(step, 2.0, 0.05)
    np.testing.assert_allclose(out, step, atol=1e-6)  # edge kept
    const = np.full((9, 9, 9), 0.3, np.float32)
    np.testing.assert_allclose(bilateral_filter(const, 3.0, 0.1), const, rtol=1e-5)


@pytest.mark.parametrize("sigma, spacing", [(1.5, (1, 1, 1)), ((1.0, 2.0, 0.7), (0.9, 1.1, 0.5))])
def test_gaussian_matches_brute_force(ops, brute_filter, sigma, spacing):
    img = _image((2, 10, 12, 11), seed=2)
    out = gaussian_filter(img, sigma, spacing)
    ref = brute_filter(img, img, sigma, None, spacing)
    np.testing.assert_allclose(out, ref, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("call, match", [
    (lambda img: bilateral_filter(img, 0.0, 0.2), "spatial_sigma"),
    (lambda img: bilateral_filter(img, -1.0, 0.2), "spatial_sigma"),
    (lambda img: bilateral_filter(img, 1.0, 0.0), "range_sigma"),
    (lambda img: bilateral_filter(img, float("nan"), 0.2), "spatial_sigma"),
    (lambda img: bilateral_filter(img, (1.0, 1.0), 0.2), "spatial_sigma"),
    (lambda img: bilateral_filter(img, 1.0, 0.2, spacing=(1.0, -1.0, 1.0)), "spacing"),
    (lambda img: bilateral_filter(img.to(torch.int16), 1.0, 0.2), "floating-point"),
    (lambda img: bilateral_filter(img[0, 0, 0], 1.0, 0.2), "shape"),
    (lambda img: bilateral_filter(img[None], 1.0, 0.2), "shape"),
    (lambda img: bilateral_filter(img.to("meta"), 1.0, 0.2), "device"),
    (lambda img: bilateral_filter(torch.where(img > 0.5, float("nan"), img), 1.0, 0.2), "NaN"),
    (lambda img: bilateral_filter(img.numpy().tolist(), 1.0, 0.2), "torch.Tensor or numpy"),
    (lambda img: gaussian_filter(img, 0.0), "sigma"),
])
def test_bad_input(ops, call, match):
    img = torch.from_numpy(_image((1, 1, 6, 6, 6)))
    with pytest.raises(ValueError, match=match):
        call(img)
