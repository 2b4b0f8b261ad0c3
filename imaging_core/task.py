"""The segmentation task of one configuration: its network, loss, site data and
the ONE evaluation path.

Everyone that needs "the model of this federation" (local training, a site
worker, the coordinator's evaluation, baselines, bundle inference) builds it
here, so the same config always yields the same architecture, the same initial
weights and the same numbers for the same model and cases: one sliding-window
setting ([train] overlap / sw_batch_size), one [postprocess] chain, one AMP
policy for evaluation (the [train] amp setting resolved for the device, see
``Task.eval_amp``).
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np
import torch

from .config import ImagingConfig, ModelTable, TrainTable
from .metrics.summary import flat_scores


def build_net(model: ModelTable, num_classes: int, in_channels: int = 1, seed: int | None = None) -> torch.nn.Module:
    from .nets import unet_from_config
    cfg = {**model.net_kwargs(), "in_channels": in_channels, "out_channels": num_classes}
    if seed is not None:  # identical initial weights wherever the task is built
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return unet_from_config(cfg)
    return unet_from_config(cfg)


def build_loss(train: TrainTable):
    from .losses import loss_from_config
    # label maps in, softmax over classes: the usual multi-class segmentation setting
    return loss_from_config(train.loss, **{"to_onehot_y": True, "softmax": True, **train.loss_args})


def float_state(net: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The floating-point entries of the state dict: what federation exchanges."""
    # clone: on CPU, detach().cpu() would alias the live parameters
    return {k: v.detach().cpu().clone() for k, v in net.state_dict().items() if v.is_floating_point()}


def load_float_state(net: torch.nn.Module, state: dict) -> torch.nn.Module:
    """Load float entries (tensors or numpy arrays) into ``net``, cast to its dtypes."""
    sd = net.state_dict()
    net.load_state_dict({k: torch.as_tensor(np.asarray(v)).to(sd[k].dtype) for k, v in state.items()},
                        strict=False)
    return net


@dataclass
class Evaluation:
    """One model on some cases: a row per case, the per-class summary and the
    flat headline scores (dice_fg_mean, dice_<c>, hd95_<c>, missed_<c>)."""
    per_case: list[dict] = field(default_factory=list)
    summary: dict = field(default_factory=dict)
    scores: dict = field(default_factory=dict)
    space: str = "original"  # where the metrics were measured: "original" or "preprocessed"

    def row(self) -> dict:
        """What a trainer's epoch row carries."""
        return {"per_case": self.per_case, "summary": self.summary, "eval_space": self.space, **self.scores}


class Task:
    def __init__(self, cfg: ImagingConfig, device: str | torch.device = "cpu"):
        self.cfg = cfg
        self.device = torch.device(device)
        self.num_classes = cfg.num_classes
        self.roi = cfg.roi
        self._eval_amp: tuple[str | None] | None = None
        self.postprocess = cfg.postprocess.chain_config()
        if self.postprocess.get("chain"):
            from .postprocess.chain import build_postprocess
            build_postprocess(self.postprocess)  # a bad chain fails when the task is made, not rounds later

    # ----- the model --------------------------------------------------------
    def build_net(self, seed: int | None = None) -> torch.nn.Module:
        return build_net(self.cfg.model, self.num_classes, seed=seed).to(self.device)

    def net_from_state(self, state: dict, model: ModelTable | dict | None = None) -> torch.nn.Module:
        """A net with ``state`` (float entries, tensors or arrays) loaded, in eval mode;
        ``model``: another [model] table (e.g. a run record's), default this config's."""
        if isinstance(model, dict):
            model = ModelTable.model_validate(model)
        net = build_net(model or self.cfg.model, self.num_classes).to(self.device)
        return load_float_state(net, state).eval()

    def loss(self):
        return build_loss(self.cfg.train)

    def site_data(self, site, cache_dir: str | os.PathLike, seed: int = 0):
        """The SiteData of ``site`` (anything with ``datalist_path`` and ``modality``)."""
        from .data.site_data import SiteData
        return SiteData(site.datalist_path, cache_dir, self.cfg.preprocess_table("building a site's cache"),
                        self.cfg.sampling, self.cfg.augment, site.modality, seed)

    # ----- evaluation -------------------------------------------------------
    @property
    def eval_amp(self) -> str | None:
        """The precision of every evaluation of this task on this device: the [train]
        amp setting, resolved once ("auto": imaging_core.train.amp.amp_choice)."""
        if self._eval_amp is None:
            from .train.amp import resolve_amp
            self._eval_amp = (resolve_amp(self.cfg.train.amp, self.device),)
        return self._eval_amp[0]

    def amp_record(self) -> dict:
        """What the run records about evaluation precision: the setting, the choice
        and, for "auto", how it was made (imaging_core.train.amp.amp_choice)."""
        from .train.amp import amp_choice
        setting = self.cfg.train.amp
        how = amp_choice(self.device) if setting == "auto" else {"source": "config"}
        return {**how, "setting": setting, "amp": self.eval_amp}

    def predict(self, net: torch.nn.Module, image: np.ndarray, progress=None) -> np.ndarray:
        """``image`` (C, X, Y, Z), preprocessed -> uint8 labels (X, Y, Z) after the
        [postprocess] chain; what evaluate scores."""
        from .inference.evaluate import predict_labels, predict_postprocessed
        tc = self.cfg.train
        net = net.to(self.device)
        if self.postprocess.get("chain"):
            return predict_postprocessed(net, image, self.roi, self.device, self.postprocess, self.eval_amp,
                                         tc.overlap, tc.sw_batch_size, progress=progress)
        return predict_labels(net, image, self.roi, self.device, self.eval_amp, tc.overlap, tc.sw_batch_size,
                              progress=progress)

    def evaluate(self, net: torch.nn.Module, cases: Sequence, on_prediction=None,
                 space: str | None = None) -> Evaluation:
        """Per-case metrics of ``net`` on cached cases, their summary and flat scores.

        ``space``: "original" (default when every case's label file is known) puts
        each prediction back on its label file's grid and measures there, as a
        clinician would and as a bundle's output is compared; "preprocessed"
        measures on the cached grid. ``Evaluation.space`` says which it was. The
        scores also carry the largest-component candidates (``raw_dice_<c>`` /
        ``lcc_dice_<c>``, inference.choose_postprocess). ``on_prediction(case, item,
        pred)`` sees each scored (post-processed) prediction on the cached grid."""
        from .inference.choose_postprocess import candidate_scores
        from .inference.evaluate import evaluate_cases
        from .metrics import summarize
        tc = self.cfg.train
        space = space or self.eval_space(cases)
        per_case = evaluate_cases(net.to(self.device), cases, self.roi, self.num_classes, self.device,
                                  self.eval_amp, tc.overlap, tc.sw_batch_size, postprocess=self.postprocess,
                                  on_prediction=on_prediction, space=space)
        summary = summarize(per_case, self.num_classes)
        scores = {**flat_scores(summary, self.num_classes), **candidate_scores(per_case, self.num_classes)}
        spaces = {r["space"] for r in per_case}
        return Evaluation(per_case, summary, scores, spaces.pop() if len(spaces) == 1 else (space if not spaces
                                                                                               else "mixed"))

    @staticmethod
    def eval_space(cases: Sequence) -> str:
        """The space evaluate measures ``cases`` in by default: "original" when every
        case knows its label file, else "preprocessed"."""
        known = all(getattr(c, "label_source", None) is not None for c in cases)
        return "original" if known else "preprocessed"
