"""Region losses for segmentation with MONAI's semantics (same arguments, same values).

Inputs are logits ``(B, C, X, Y, Z)`` (any float dtype: the loss is computed in
float32, so bf16 autocast outputs are fine). Targets are integer label maps
``(B, 1, X, Y, Z)`` or ``(B, X, Y, Z)`` with ``to_onehot_y=True``, otherwise
one-hot / soft targets of the input's shape.

Where MONAI slices off the background channel before reducing, these compute
the per-class sums for all channels and drop the background from the small
``(B, C)`` results (same numbers, no strided copies); DiceCE reuses one
``log_softmax`` for both the Dice probabilities and the cross-entropy.
"""
from __future__ import annotations

from typing import Callable, List, Optional, Sequence, Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .common import as_label_map, check_reduction, one_hot
from .focal import FocalLoss

__all__ = ["DiceLoss", "GeneralizedDiceLoss", "TverskyLoss", "DiceCELoss", "DiceFocalLoss"]

WeightArg = Optional[Union[float, int, Sequence[float], Tensor]]


class _RegionLoss(nn.Module):
    """Activation, target one-hot encoding and per-class sums shared by the Dice family."""

    def __init__(self, include_background: bool, to_onehot_y: bool, sigmoid: bool, softmax: bool,
                 other_act: Optional[Callable[[Tensor], Tensor]], reduction: str,
                 smooth_nr: float, smooth_dr: float, batch: bool):
        super().__init__()
        if int(sigmoid) + int(softmax) + int(other_act is not None) > 1:
            raise ValueError("choose at most one of sigmoid, softmax and other_act")
        if other_act is not None and not callable(other_act):
            raise TypeError("other_act must be callable")
        self.include_background = include_background
        self.to_onehot_y = to_onehot_y
        self.sigmoid = sigmoid
        self.softmax = softmax
        self.other_act = other_act
        self.reduction = check_reduction(reduction)
        self.smooth_nr = float(smooth_nr)
        self.smooth_dr = float(smooth_dr)
        self.batch = batch

    def _targets(self, input: Tensor, target: Tensor) -> Tensor:
        """One-hot (or given) float targets of the input's shape."""
        n = input.shape[1]
        if self.to_onehot_y and n > 1:
            target = one_hot(as_label_map(input, target), n)
        target = target.float()
        if target.shape != input.shape:
            raise ValueError(f"target shape {tuple(target.shape)} does not match input "
                             f"{tuple(input.shape)} (label maps need to_onehot_y=True)")
        return target

    def _probs(self, x: Tensor, logp: Optional[Tensor] = None) -> Tensor:
        if self.sigmoid:
            return torch.sigmoid(x)
        if self.softmax and x.shape[1] > 1:
            return logp.exp() if logp is not None else torch.softmax(x, 1)
        if self.other_act is not None:
            return self.other_act(x)
        return x

    def _axes(self, x: Tensor) -> List[int]:
        axes = list(range(2, x.dim()))
        return [0] + axes if self.batch else axes

    def _fg(self, t: Tensor, n: int) -> Tensor:
        """Drop the background class from per-class results (last dim = classes)."""
        return t if (self.include_background or n == 1) else t[..., 1:]

    def _reduce(self, f: Tensor, ndim: int) -> Tensor:
        if self.reduction == "mean":
            return f.mean()
        if self.reduction == "sum":
            return f.sum()
        return f.view(list(f.shape[:2]) + [1] * (ndim - 2))


def _class_weight(weight: WeightArg) -> Optional[Tensor]:
    return None if weight is None else torch.as_tensor(weight, dtype=torch.float32)


def _apply_class_weight(f: Tensor, w: Optional[Tensor]) -> Tensor:
    n = f.shape[-1]
    if w is None or n == 1:
        return f
    if w.ndim > 0 and w.numel() != n:
        raise ValueError(f"{w.numel()} class weights for {n} classes (without the background "
                         "when include_background=False)")
    if bool((w < 0).any()):
        raise ValueError("class weights must be non-negative")
    return f * w.to(f)


class DiceLoss(_RegionLoss):
    """1 - (2 |P.G| + smooth_nr) / (|P| + |G| + smooth_dr), per sample and class
    (``batch=True``: per class over the whole batch); ``jaccard=True`` for soft IoU."""

    def __init__(self, include_background: bool = True, to_onehot_y: bool = False,
                 sigmoid: bool = False, softmax: bool = False,
                 other_act: Optional[Callable[[Tensor], Tensor]] = None,
                 squared_pred: bool = False, jaccard: bool = False, reduction: str = "mean",
                 smooth_nr: float = 1e-5, smooth_dr: float = 1e-5, batch: bool = False,
                 weight: WeightArg = None):
        super().__init__(include_background, to_onehot_y, sigmoid, softmax, other_act, reduction,
                         smooth_nr, smooth_dr, batch)
        self.squared_pred = squared_pred
        self.jaccard = jaccard
        self.register_buffer("class_weight", _class_weight(weight))

    def forward(self, input: Tensor, target: Tensor) -> Tensor:
        x = input.float()
        return self.from_probs(self._probs(x), self._targets(x, target))

    def from_probs(self, p: Tensor, g: Tensor) -> Tensor:
        """The loss from activated predictions and float targets of the same shape."""
        axes = self._axes(p)
        tp = (p * g).sum(axes)
        if self.squared_pred:
            sp, sg = (p * p).sum(axes), (g * g).sum(axes)
        else:
            sp, sg = p.sum(axes), g.sum(axes)
        n = p.shape[1]
        tp, sp, sg = self._fg(tp, n), self._fg(sp, n), self._fg(sg, n)
        denom = 2 * (sp + sg - tp) if self.jaccard else sp + sg
        f = 1 - (2 * tp + self.smooth_nr) / (denom + self.smooth_dr)
        f = _apply_class_weight(f, self.class_weight)
        return self._reduce(f, p.dim())


class GeneralizedDiceLoss(_RegionLoss):
    """Generalised Dice (Sudre et al. 2017): classes weighted by 1/|G|^2 ("square"),
    1/|G| ("simple") or 1 ("uniform"); an absent class gets the largest weight present."""

    def __init__(self, include_background: bool = True, to_onehot_y: bool = False,
                 sigmoid: bool = False, softmax: bool = False,
                 other_act: Optional[Callable[[Tensor], Tensor]] = None, w_type: str = "square",
                 reduction: str = "mean", smooth_nr: float = 1e-5, smooth_dr: float = 1e-5,
                 batch: bool = False):
        super().__init__(include_background, to_onehot_y, sigmoid, softmax, other_act, reduction,
                         smooth_nr, smooth_dr, batch)
        w_type = str(getattr(w_type, "value", w_type)).lower()
        if w_type not in ("square", "simple", "uniform"):
            raise ValueError(f"w_type must be square, simple or uniform, got {w_type!r}")
        self.w_type = w_type

    def forward(self, input: Tensor, target: Tensor) -> Tensor:
        x = input.float()
        p, g = self._probs(x), self._targets(x, target)
        axes = self._axes(p)
        n = p.shape[1]
        tp = self._fg((p * g).sum(axes), n)
        sp, sg = self._fg(p.sum(axes), n), self._fg(g.sum(axes), n)
        if self.w_type == "square":
            w = 1.0 / (sg * sg)
        elif self.w_type == "simple":
            w = 1.0 / sg
        else:
            w = torch.ones_like(sg)
        inf = torch.isinf(w)
        w = w.masked_fill(inf, 0.0)
        wmax = w.max() if self.batch else w.max(dim=1, keepdim=True).values
        w = w + inf * wmax
        dim = 0 if self.batch else 1
        numer = 2.0 * (tp * w).sum(dim, keepdim=True) + self.smooth_nr
        denom = ((sp + sg) * w).sum(dim, keepdim=True) + self.smooth_dr
        return self._reduce(1.0 - numer / denom, p.dim())


class TverskyLoss(_RegionLoss):
    """1 - (TP + smooth_nr) / (TP + alpha FP + beta FN + smooth_dr) (Salehi et al. 2017)."""

    def __init__(self, include_background: bool = True, to_onehot_y: bool = False,
                 sigmoid: bool = False, softmax: bool = False,
                 other_act: Optional[Callable[[Tensor], Tensor]] = None, alpha: float = 0.5,
                 beta: float = 0.5, reduction: str = "mean", smooth_nr: float = 1e-5,
                 smooth_dr: float = 1e-5, batch: bool = False):
        super().__init__(include_background, to_onehot_y, sigmoid, softmax, other_act, reduction,
                         smooth_nr, smooth_dr, batch)
        self.alpha = float(alpha)
        self.beta = float(beta)

    def forward(self, input: Tensor, target: Tensor) -> Tensor:
        x = input.float()
        p, g = self._probs(x), self._targets(x, target)
        axes = self._axes(p)
        n = p.shape[1]
        tp = self._fg((p * g).sum(axes), n)
        fp = self._fg(p.sum(axes), n) - tp
        fn = self._fg(g.sum(axes), n) - tp
        f = 1.0 - (tp + self.smooth_nr) / (tp + self.alpha * fp + self.beta * fn + self.smooth_dr)
        return self._reduce(f, p.dim())


def _split_dice_weight(weight: Optional[Tensor], include_background: bool) -> Optional[Tensor]:
    if weight is None or include_background or weight.ndim == 0:
        return weight
    return weight[1:]


class DiceCELoss(nn.Module):
    """lambda_dice * Dice + lambda_ce * cross-entropy (binary cross-entropy for one channel).

    The activation flags apply to the Dice term; the cross-entropy always takes
    the logits and all channels. ``weight`` weights the cross-entropy classes
    and the Dice classes (without the background when it is excluded).
    """

    def __init__(self, include_background: bool = True, to_onehot_y: bool = False,
                 sigmoid: bool = False, softmax: bool = False,
                 other_act: Optional[Callable[[Tensor], Tensor]] = None,
                 squared_pred: bool = False, jaccard: bool = False, reduction: str = "mean",
                 smooth_nr: float = 1e-5, smooth_dr: float = 1e-5, batch: bool = False,
                 weight: WeightArg = None, lambda_dice: float = 1.0, lambda_ce: float = 1.0,
                 label_smoothing: float = 0.0):
        super().__init__()
        reduction = check_reduction(reduction)
        if reduction == "none":
            raise ValueError("DiceCELoss supports reduction mean or sum")
        if lambda_dice < 0 or lambda_ce < 0:
            raise ValueError("lambda_dice and lambda_ce must be >= 0")
        w = _class_weight(weight)
        self.dice = DiceLoss(include_background, to_onehot_y, sigmoid, softmax, other_act,
                             squared_pred, jaccard, reduction, smooth_nr, smooth_dr, batch,
                             _split_dice_weight(w, include_background))
        self.register_buffer("ce_weight", w)
        self.reduction = reduction
        self.lambda_dice = float(lambda_dice)
        self.lambda_ce = float(lambda_ce)
        self.label_smoothing = float(label_smoothing)

    def forward(self, input: Tensor, target: Tensor) -> Tensor:
        x = input.float()
        n = x.shape[1]
        if target.dim() == x.dim() - 1:
            target = target.unsqueeze(1)
        if target.dim() != x.dim():
            raise ValueError(f"target of shape {tuple(target.shape)} does not fit input {tuple(x.shape)}")
        if target.shape[1] not in (1, n):
            raise ValueError(f"target has {target.shape[1]} channels; expected 1 or {n}")
        w = self.ce_weight
        if n == 1:
            ce = F.binary_cross_entropy_with_logits(x, target.float(), pos_weight=w,
                                                    reduction=self.reduction)
            return self.lambda_dice * self.dice(x, target) + self.lambda_ce * ce
        labels = target[:, 0].long() if target.shape[1] == 1 else None
        logp: Optional[Tensor] = None
        if labels is not None and self.label_smoothing == 0.0:
            # One log_softmax feeds both terms: CE = NLL(log_softmax), softmax = exp(log_softmax).
            logp = torch.log_softmax(x, 1)
            ce = F.nll_loss(logp, labels, weight=w, reduction=self.reduction)
        elif labels is not None:
            ce = F.cross_entropy(x, labels, weight=w, reduction=self.reduction,
                                 label_smoothing=self.label_smoothing)
        else:
            ce = F.cross_entropy(x, target.float(), weight=w, reduction=self.reduction,
                                 label_smoothing=self.label_smoothing)
        d = self.dice
        dice = d.from_probs(d._probs(x, logp if d.softmax else None), d._targets(x, target))
        return self.lambda_dice * dice + self.lambda_ce * ce


class DiceFocalLoss(nn.Module):
    """lambda_dice * Dice + lambda_focal * Focal.

    As in MONAI, the focal term is the sigmoid (per-channel binary) form unless
    ``focal_softmax=True``; ``weight`` weights the classes of both terms.
    """

    def __init__(self, include_background: bool = True, to_onehot_y: bool = False,
                 sigmoid: bool = False, softmax: bool = False,
                 other_act: Optional[Callable[[Tensor], Tensor]] = None,
                 squared_pred: bool = False, jaccard: bool = False, reduction: str = "mean",
                 smooth_nr: float = 1e-5, smooth_dr: float = 1e-5, batch: bool = False,
                 gamma: float = 2.0, weight: WeightArg = None, lambda_dice: float = 1.0,
                 lambda_focal: float = 1.0, alpha: Optional[float] = None,
                 focal_softmax: bool = False):
        super().__init__()
        if lambda_dice < 0 or lambda_focal < 0:
            raise ValueError("lambda_dice and lambda_focal must be >= 0")
        self.dice = DiceLoss(include_background, False, sigmoid, softmax, other_act, squared_pred,
                             jaccard, reduction, smooth_nr, smooth_dr, batch, weight)
        self.focal = FocalLoss(include_background, False, gamma, alpha, weight, reduction,
                               use_softmax=focal_softmax)
        self.to_onehot_y = to_onehot_y
        self.lambda_dice = float(lambda_dice)
        self.lambda_focal = float(lambda_focal)

    def forward(self, input: Tensor, target: Tensor) -> Tensor:
        x = input.float()
        n = x.shape[1]
        if self.to_onehot_y and n > 1:
            target = one_hot(as_label_map(x, target), n)
        return self.lambda_dice * self.dice(x, target) + self.lambda_focal * self.focal(x, target)

