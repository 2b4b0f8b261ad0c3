"""Exact 3-D bilateral filter and exact separable Gaussian filter.

Bilateral (edge-preserving smoothing):

    out[b,c,p] = sum_q w(p,q) image[b,c,q] / sum_q w(p,q)
    w(p,q) = exp(-|p-q|^2 / (2 spatial_sigma^2) - |image[b,:,p]-image[b,:,q]|^2 / (2 range_sigma^2))

|p-q| is physical (voxel offsets times spacing), the range distance is over
all channels, and q runs over the box |p_k-q_k| <= ceil(3 spatial_sigma_k /
spacing_k) voxels per axis, clipped at the volume border (no padding). Every
tap in the box is evaluated: exact, not a separable or lattice approximation.
"""
from __future__ import annotations

import math

import torch

from ._common import (as_tensor, back, check_device, check_finite, check_positive,
                      check_spacing, ops, threads)


def _sigmas(sigma, fn: str, name: str) -> tuple[float, float, float]:
    if isinstance(sigma, int | float):
        return (check_positive(sigma, fn, name),) * 3
    try:
        vals = [check_positive(s, fn, name) for s in sigma]
    except TypeError:
        raise ValueError(f"{fn}: {name} must be a number or 3 numbers, got {sigma!r}") from None
    if len(vals) != 3:
        raise ValueError(f"{fn}: {name} must be a number or 3 numbers, got {sigma!r}")
    return tuple(vals)


def window(sigma, spacing) -> tuple[list[int], list[float]]:
    """Box radius (voxels) and exp coefficients spacing^2 / (2 sigma^2) per axis."""
    radius = [int(math.ceil(3.0 * s / h - 1e-9)) for s, h in zip(sigma, spacing)]
    coef = [h * h / (2.0 * s * s) for s, h in zip(sigma, spacing)]
    return radius, coef


def _as_5d(image, fn: str):
    t, np_in = as_tensor(image, fn, "image")
    if t.dim() not in (3, 4, 5):
        raise ValueError(f"{fn}: image must be (X,Y,Z), (C,X,Y,Z) or (B,C,X,Y,Z), "
                         f"got shape {tuple(t.shape)}")
    if not t.is_floating_point():
        raise ValueError(f"{fn}: image must be a floating-point tensor, got {t.dtype}")
    if t.numel() == 0:
        raise ValueError(f"{fn}: image is empty (shape {tuple(t.shape)})")
    t5 = t.reshape((1,) * (5 - t.dim()) + tuple(t.shape))
    return t, t5, np_in


def bilateral_filter(image, spatial_sigma, range_sigma, spacing=(1.0, 1.0, 1.0)):
    """Exact bilateral filter of a float image (see the module docstring).

    image: (B,C,X,Y,Z), (C,X,Y,Z) or (X,Y,Z); computed in float32, returned in
    the input's dtype, shape and container. spatial_sigma: physical units, one
    number or one per axis; range_sigma: image units.
    """
    fn = "bilateral_filter"
    t, t5, np_in = _as_5d(image, fn)
    ss = _sigmas(spatial_sigma, fn, "spatial_sigma")
    rs = check_positive(range_sigma, fn, "range_sigma")
    sp = check_spacing(spacing, fn)
    check_device(t, fn, "image", cuda_ok=True)
    check_finite(t, fn, "image")
    B, C = t5.shape[:2]
    if t.is_cuda and C > 16:
        raise ValueError(f"{fn}: the CUDA filter takes at most 16 channels, got {C}")
    radius, acoef = window(ss, sp)
    bcoef = 1.0 / (2.0 * rs * rs)
    x = t5.to(torch.float32).contiguous()
    out = torch.empty_like(x)
    for b in range(B):
        if x.is_cuda:
            ops().bilateral_cuda(x[b], x[b], out[b], radius, acoef, bcoef, False)
        else:
            ops().bilateral(x[b], x[b], out[b], radius, acoef, bcoef, False, threads())
    return back(out.to(t.dtype).view(t.shape), np_in)


def gaussian_filter(image, sigma, spacing=(1.0, 1.0, 1.0)):
    """Normalised Gaussian smoothing, exact for the box |d_k| <= ceil(3
    sigma_k / spacing_k) clipped at the border (separable, no padding).
    Same shapes and types as bilateral_filter; CPU only."""
    fn = "gaussian_filter"
    t, t5, np_in = _as_5d(image, fn)
    ss = _sigmas(sigma, fn, "sigma")
    sp = check_spacing(spacing, fn)
    check_device(t, fn, "image", cuda_ok=False)
    check_finite(t, fn, "image")
    radius, acoef = window(ss, sp)
    B, C = t5.shape[:2]
    x = t5.to(torch.float32).reshape(B * C, *t5.shape[2:]).clone().contiguous()
    ops().gauss_blur(x, radius, acoef, threads())
    return back(x.to(t.dtype).view(t.shape), np_in)
