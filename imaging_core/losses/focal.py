"""Focal loss (Lin et al. 2017) with MONAI ``FocalLoss`` semantics.

``use_softmax=False`` (MONAI's default) treats every channel as an independent
binary problem (sigmoid); ``use_softmax=True`` is the multi-class form.
``reduction="sum"`` follows MONAI: per-(sample, class) spatial mean, then sum.
"""
from __future__ import annotations

from typing import Optional, Sequence, Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .common import as_label_map, check_reduction, one_hot

Number = Union[float, int]


def sigmoid_focal_terms(x: Tensor, t: Tensor, gamma: float,
                        alpha: Optional[Union[float, Tensor]]) -> Tensor:
    """Element-wise binary focal loss from logits ``x`` and {0,1} (or soft) targets ``t``."""
    # BCE-with-logits in a form that never exponentiates a large positive number.
    bce = x - x * t - F.logsigmoid(x)
    # (1 - p_t)^gamma as exp(gamma * log sigmoid(-x * (2t - 1))): stable for large |x|.
    loss = torch.exp(gamma * F.logsigmoid(-x * (2 * t - 1))) * bce
    if alpha is not None:
        a = torch.as_tensor(alpha, dtype=x.dtype, device=x.device)
        if a.ndim == 0:
            loss = (t * a + (1 - t) * (1 - a)) * loss
        else:
            if a.numel() != t.shape[1]:
                raise ValueError(f"alpha has {a.numel()} entries for {t.shape[1]} classes")
            a = a.view([1, -1] + [1] * (t.dim() - 2))
            # Per-class alpha weights the positives only.
            loss = torch.where(t == 1, a, torch.ones_like(a)) * loss
    return loss


def softmax_focal_terms(x: Tensor, t: Tensor, gamma: float,
                        alpha: Optional[Union[float, Tensor]]) -> Tensor:
    """Element-wise multi-class focal loss from logits ``x`` and one-hot targets ``t``."""
    logp = torch.log_softmax(x, 1)
    loss = -(1 - logp.exp()).pow(gamma) * logp * t
    if alpha is not None:
        a = torch.as_tensor(alpha, dtype=x.dtype, device=x.device)
        if a.ndim == 0:
            # Scalar alpha: (1 - alpha) for the background channel, alpha for the rest.
            a = torch.cat([1 - a.view(1), a.view(1).expand(t.shape[1] - 1)])
        elif a.numel() != t.shape[1]:
            raise ValueError(f"alpha has {a.numel()} entries for {t.shape[1]} classes")
        loss = a.view([1, -1] + [1] * (t.dim() - 2)) * loss
    return loss


class FocalLoss(nn.Module):
    """Focal loss on logits; targets are label maps (with ``to_onehot_y``) or one-hot."""

    def __init__(self, include_background: bool = True, to_onehot_y: bool = False,
                 gamma: float = 2.0, alpha: Optional[Union[Number, Sequence[Number]]] = None,
                 weight: Optional[Union[Number, Sequence[Number], Tensor]] = None,
                 reduction: str = "mean", use_softmax: bool = False):
        super().__init__()
        self.include_background = include_background
        self.to_onehot_y = to_onehot_y
        self.gamma = float(gamma)
        self.alpha = (None if alpha is None else
                      float(alpha) if isinstance(alpha, (int, float)) else torch.as_tensor(alpha))
        self.reduction = check_reduction(reduction)
        self.use_softmax = use_softmax
        self.register_buffer("class_weight",
                             None if weight is None else torch.as_tensor(weight, dtype=torch.float32))

    def forward(self, input: Tensor, target: Tensor) -> Tensor:
        n = input.shape[1]
        target = as_label_map(input, target) if self.to_onehot_y else target
        if self.to_onehot_y and n > 1:
            target = one_hot(target, n, torch.float32)
        x, t = input.float(), target.float()
        if not self.include_background and n > 1:
            x, t = x[:, 1:], t[:, 1:]
        if t.shape != x.shape:
            raise ValueError(f"target shape {tuple(t.shape)} does not match input {tuple(x.shape)}")
        alpha = self.alpha
        if self.use_softmax:
            if not self.include_background and isinstance(alpha, float):
                alpha = None  # scalar alpha is defined relative to a background channel
            loss = softmax_focal_terms(x, t, self.gamma, alpha)
        else:
            loss = sigmoid_focal_terms(x, t, self.gamma, alpha)
        if self.class_weight is not None:
            cw = self.class_weight.to(loss)
            if cw.ndim > 0:
                if cw.numel() != loss.shape[1]:
                    raise ValueError(f"{cw.numel()} class weights for {loss.shape[1]} channels")
                cw = cw.view([1, -1] + [1] * (loss.dim() - 2))
            if bool((cw < 0).any()):
                raise ValueError("class weights must be non-negative")
            loss = loss * cw
        if self.reduction == "mean":
            return loss.mean()
        if self.reduction == "sum":
            return loss.mean(dim=tuple(range(2, loss.dim()))).sum()
        return loss
