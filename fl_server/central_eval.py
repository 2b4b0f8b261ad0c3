"""Evaluation of each global model on the coordinator's held-out cases:
sliding window, the federation's [postprocess] chain (none by default),
Dice / HD95 / ASSD per class."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from imaging_core.data.site_data import SiteData
from imaging_core.inference.evaluate import evaluate_cases, has_chain
from imaging_core.metrics import summarize
from imaging_core.train.task import build_net
from imaging_core.train.trainer import flat_scores


class CentralEvaluator:
    def __init__(self, fed: dict, coordinator: dict, cache_dir: str | Path, device: str = "cpu"):
        self.fed = fed
        self.device = torch.device(device)
        self.data = SiteData(coordinator["datalist_path"], cache_dir, fed["preprocess"], fed["sampling"],
                             fed["augment"], coordinator["modality"], int(fed["federation"].get("seed", 0)))
        self.report = self.data.prepare()
        # every labelled case the coordinator holds is held out from training
        self.cases = [c for c in self.report.cases if c.split in ("validation", "test", "training")]
        self.num_classes = self.data.num_classes
        self.roi = tuple(fed["sampling"]["patch_size"])
        self.net = build_net(fed["model"], self.num_classes).to(self.device)
        self.postprocess = fed.get("postprocess")
        if has_chain(self.postprocess):
            from imaging_core.postprocess.chain import build_postprocess
            build_postprocess(self.postprocess)  # a bad [postprocess] table fails at server start

    def evaluate(self, state: dict[str, np.ndarray]) -> tuple[dict, list[dict], dict]:
        sd = self.net.state_dict()
        self.net.load_state_dict({k: torch.as_tensor(np.asarray(v)).to(sd[k].dtype) for k, v in state.items()},
                                 strict=False)
        tc = self.fed["train"]
        per_case = evaluate_cases(self.net, self.cases, self.roi, self.num_classes, self.device,
                                  None, float(tc.get("overlap", 0.5)), int(tc.get("sw_batch_size", 4)),
                                  postprocess=self.postprocess)
        summary = summarize(per_case, self.num_classes)
        return flat_scores(summary, self.num_classes), per_case, summary
