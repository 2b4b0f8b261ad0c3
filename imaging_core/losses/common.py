"""Target handling shared by the losses."""
from __future__ import annotations

import torch
from torch import Tensor

REDUCTIONS = ("mean", "sum", "none")


def check_reduction(reduction: str) -> str:
    r = str(getattr(reduction, "value", reduction)).lower()
    if r not in REDUCTIONS:
        raise ValueError(f"reduction must be one of {REDUCTIONS}, got {reduction!r}")
    return r


def as_label_map(input: Tensor, target: Tensor) -> Tensor:
    """Accept (B, X, Y, Z) as well as (B, 1, X, Y, Z) integer label maps."""
    if target.dim() == input.dim() - 1:
        target = target.unsqueeze(1)
    if target.dim() != input.dim():
        raise ValueError(f"target of shape {tuple(target.shape)} does not fit input "
                         f"{tuple(input.shape)}; expected (B, 1, ...) or (B, ...) labels")
    return target


def one_hot(labels: Tensor, num_classes: int, dtype: torch.dtype = torch.float32) -> Tensor:
    """(B, 1, ...) label map -> (B, C, ...) one-hot of ``dtype``.

    A label outside [0, num_classes) raises, rather than silently becoming an
    all-zero voxel (a 255 "ignore" value, a wrong class count in the datalist).
    """
    if labels.shape[1] != 1:
        raise ValueError(f"one-hot needs a (B, 1, ...) label map, got {tuple(labels.shape)}")
    if labels.numel():
        lo, hi = torch.aminmax(labels)
        if lo < 0 or hi >= num_classes:
            raise ValueError(f"labels span [{int(lo)}, {int(hi)}] but there are {num_classes} classes")
    classes = torch.arange(num_classes, device=labels.device, dtype=labels.dtype)
    return (labels == classes.view([1, -1] + [1] * (labels.dim() - 2))).to(dtype)
