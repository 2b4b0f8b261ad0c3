"""Evaluation of each global model on the coordinator's held-out cases, through
the task's one evaluation path (imaging_core.task.Task.evaluate: sliding
window, the federation's [postprocess] chain, Dice / HD95 / ASSD per class)."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from fl_common.config import Federation, SiteConfig
from imaging_core.task import Task, load_float_state


class CentralEvaluator:
    def __init__(self, fed: Federation, coordinator: SiteConfig, cache_dir: str | Path, device: str = "cpu"):
        self.fed = fed
        self.task = Task(fed, device)  # a bad [postprocess] chain fails here, at server start
        self.device = self.task.device
        self.data = self.task.site_data(coordinator, cache_dir, fed.federation.seed)
        self.report = self.data.prepare()
        # every labelled case the coordinator holds is held out from training
        self.cases = [c for c in self.report.cases if c.split in ("validation", "test", "training")]
        self.num_classes = self.task.num_classes
        self.space = self.task.eval_space(self.cases)  # "original": on each case's own label file
        self.net = self.task.build_net()

    def evaluate(self, state: dict[str, np.ndarray]) -> tuple[dict, list[dict], dict]:
        ev = self.task.evaluate(load_float_state(self.net, state), self.cases)
        return ev.scores, ev.per_case, ev.summary
