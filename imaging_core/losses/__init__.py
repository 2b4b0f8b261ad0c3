"""Segmentation losses with MONAI's semantics: Dice, DiceCE, generalised Dice, Tversky, focal."""
from __future__ import annotations

from typing import Any

from torch import nn

from .common import one_hot
from .dice import DiceCELoss, DiceFocalLoss, DiceLoss, GeneralizedDiceLoss, TverskyLoss
from .focal import FocalLoss

__all__ = ["DiceLoss", "DiceCELoss", "DiceFocalLoss", "GeneralizedDiceLoss", "TverskyLoss",
           "FocalLoss", "one_hot", "loss_from_config", "LOSSES"]

LOSSES = {
    "dice": DiceLoss,
    "dicece": DiceCELoss,
    "dicefocal": DiceFocalLoss,
    "generalizeddice": GeneralizedDiceLoss,
    "gdl": GeneralizedDiceLoss,
    "tversky": TverskyLoss,
    "focal": FocalLoss,
}


def _key(name: str) -> str:
    k = name.lower().replace("_", "").replace("-", "").replace(" ", "")
    return k[:-4] if k.endswith("loss") and k != "loss" else k


def loss_from_config(name: str, **kw: Any) -> nn.Module:
    """``loss_from_config("dice_ce", to_onehot_y=True, softmax=True)``; names are
    case/underscore-insensitive and may carry MONAI's class names ("DiceCELoss")."""
    cls = LOSSES.get(_key(name))
    if cls is None:
        raise ValueError(f"unknown loss {name!r}; known: {sorted(LOSSES)}")
    return cls(**kw)
