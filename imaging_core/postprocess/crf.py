"""Fully connected CRF refinement by mean-field inference.

    Q_0    = probs (renormalised)
    m_l    = gaussian_weight  * G[Q_l] + bilateral_weight * K[Q_l]
    Q_t+1  = softmax_l( log probs_l - sum_l' mu(l, l') m_l' )

G is a normalised Gaussian average over positions (sigma
gaussian_spatial_sigma, exact separable filter, box radius ceil(3 sigma)),
K a normalised Gaussian average over (position / bilateral_spatial_sigma,
image / bilateral_color_sigma), so both messages are kernel-weighted averages
of the neighbours' marginals in [0, 1] and the weights are on the scale of
log-probabilities. Both averages include the voxel itself (as DenseCRF's
lattice does). mu is the label compatibility: Potts (1 - identity) by
default, which reduces to softmax(log probs + m).

K comes from a permutohedral lattice (Adams et al. 2010; method="lattice",
the default): cost independent of the sigmas, an approximation of the
Gaussian (blur with [1 2 1] along the lattice's d+1 directions). With
method="exact" K is the exact box-windowed filter (radius ceil(3 sigma) per
axis), whose cost grows with sigma^3: fine for small sigmas and for checks.
"""
from __future__ import annotations

import numpy as np
import torch

from ._common import (as_tensor, back, check_device, check_finite, check_int, check_positive,
                      check_same_device, check_spacing, ops, threads)

MAX_LABELS = 32


def _nonneg(value, fn: str, name: str) -> float:
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{fn}: {name} must be a number, got {value!r}") from None
    if not np.isfinite(v) or v < 0:
        raise ValueError(f"{fn}: {name} must be a finite number >= 0, got {value!r}")
    return v


def potts(num_labels: int) -> torch.Tensor:
    """Potts compatibility: 0 for equal labels, 1 otherwise."""
    return 1.0 - torch.eye(num_labels, dtype=torch.float32)


def crf_refine(probs, image, iterations: int = 5, bilateral_weight: float = 3.0,
               gaussian_weight: float = 1.0, bilateral_spatial_sigma: float = 5.0,
               bilateral_color_sigma: float = 0.1, gaussian_spatial_sigma: float = 1.0,
               compatibility=None, spacing=(1.0, 1.0, 1.0), method: str = "lattice"):
    """Refine softmax probabilities with a dense CRF (see the module docstring).

    probs: (B,L,X,Y,Z) or (L,X,Y,Z) probabilities (>= 0; each voxel is
    renormalised). image: (B,C,X,Y,Z) or (C,X,Y,Z), the same grid and batch,
    in the units bilateral_color_sigma is given in. Sigmas are physical
    (spacing-aware). compatibility: (L, L) matrix, default Potts. Returns the
    refined probabilities, float32, same shape, container and device as probs
    (CUDA inputs run on the CPU).
    """
    fn = "crf_refine"
    p, np_in = as_tensor(probs, fn, "probs")
    img, _ = as_tensor(image, fn, "image")
    if p.dim() not in (4, 5):
        raise ValueError(f"{fn}: probs must be (B,L,X,Y,Z) or (L,X,Y,Z), got {tuple(p.shape)}")
    if img.dim() != p.dim():
        raise ValueError(f"{fn}: image must have the same layout as probs "
                         f"({p.dim()} dims), got shape {tuple(img.shape)}")
    p5 = p if p.dim() == 5 else p.unsqueeze(0)
    i5 = img if img.dim() == 5 else img.unsqueeze(0)
    if p5.shape[0] != i5.shape[0] or p5.shape[2:] != i5.shape[2:]:
        raise ValueError(f"{fn}: probs {tuple(p.shape)} and image {tuple(img.shape)} must share "
                         "batch size and spatial shape")
    if not p.is_floating_point() or not img.is_floating_point():
        raise ValueError(f"{fn}: probs and image must be floating point, got "
                         f"{p.dtype} and {img.dtype}")
    L = p5.shape[1]
    if not 2 <= L <= MAX_LABELS:
        raise ValueError(f"{fn}: need 2..{MAX_LABELS} labels, got {L}")
    if p5.numel() == 0:
        raise ValueError(f"{fn}: probs is empty")
    check_same_device(fn, probs=p, image=img)
    check_device(p, fn, "probs", cuda_ok=True)
    check_finite(p, fn, "probs")
    check_finite(img, fn, "image")
    if bool((p < 0).any()):
        raise ValueError(f"{fn}: probs must be >= 0 (pass softmax probabilities, not logits)")
    iterations = check_int(iterations, fn, "iterations", minimum=0)
    wb = _nonneg(bilateral_weight, fn, "bilateral_weight")
    wg = _nonneg(gaussian_weight, fn, "gaussian_weight")
    sbs = check_positive(bilateral_spatial_sigma, fn, "bilateral_spatial_sigma")
    sbc = check_positive(bilateral_color_sigma, fn, "bilateral_color_sigma")
    sgs = check_positive(gaussian_spatial_sigma, fn, "gaussian_spatial_sigma")
    sp = check_spacing(spacing, fn)
    if method not in ("lattice", "exact"):
        raise ValueError(f"{fn}: method must be 'lattice' or 'exact', got {method!r}")
    if compatibility is None:
        mu = potts(L)
    else:
        mu, _ = as_tensor(compatibility, fn, "compatibility")
        if tuple(mu.shape) != (L, L) or not mu.is_floating_point():
            raise ValueError(f"{fn}: compatibility must be a float ({L}, {L}) matrix, "
                             f"got {tuple(mu.shape)} {mu.dtype}")
        check_finite(mu, fn, "compatibility")
        mu = mu.detach().to("cpu", torch.float32).contiguous()

    device = p.device
    pc = p5.detach().to("cpu", torch.float32)
    pc = pc / pc.sum(1, keepdim=True).clamp_min(1e-12)
    unary = torch.log(pc.clamp_min(1e-8)).contiguous()
    ic = i5.detach().to("cpu", torch.float32).contiguous()
    q = torch.empty_like(unary)
    params = [wb, wg, sbs, sbc, sgs]
    for b in range(unary.shape[0]):
        ops().crf(unary[b], ic[b], mu, q[b], list(sp), params, iterations,
                  method == "lattice", threads())
    q = q.view(p.shape).to(device)
    return back(q, np_in)
