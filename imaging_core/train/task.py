"""The segmentation task from plain config dicts: network, loss, train config.

Everyone that needs "the model of this federation" (local training, a site
worker, the server's evaluation, bundle export) builds it here, so the same
config always yields the same architecture and the same initial weights.
"""
from __future__ import annotations

import torch

from .trainer import TrainConfig

# Keys of the [train] table that configure the loss or the federation rather
# than TrainConfig itself.
LOSS_KEYS = ("loss", "loss_args")


def build_net(model_cfg: dict, num_classes: int, in_channels: int = 1, seed: int | None = None) -> torch.nn.Module:
    from ..nets import unet_from_config
    cfg = {k: v for k, v in model_cfg.items() if k != "name"}
    cfg.update(in_channels=in_channels, out_channels=num_classes)
    if seed is not None:  # identical initial weights wherever the task is built
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return unet_from_config(cfg)
    return unet_from_config(cfg)


def build_loss(train_cfg: dict):
    from ..losses import loss_from_config
    # label maps in, softmax over classes: the usual multi-class segmentation setting
    args = {"to_onehot_y": True, "softmax": True, **dict(train_cfg.get("loss_args", {}))}
    return loss_from_config(train_cfg.get("loss", "dicece"), **args)


def train_config(train_cfg: dict, **override) -> TrainConfig:
    """The [train] table minus the loss keys; any other unknown key is an error
    (dropping it would train silently with the default instead)."""
    d = {k: v for k, v in train_cfg.items() if k not in LOSS_KEYS}
    d.update(override)
    return TrainConfig.from_dict(d)


def float_state(net: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The floating-point entries of the state dict: what federation exchanges."""
    # clone: on CPU, detach().cpu() would alias the live parameters
    return {k: v.detach().cpu().clone() for k, v in net.state_dict().items() if v.is_floating_point()}
