"""Evaluation of each global model on the coordinator's held-out cases, through
the task's one evaluation path (imaging_core.task.Task.evaluate: sliding
window, the federation's [postprocess] chain, Dice / HD95 / ASSD per class).

``InBackground`` runs one such evaluation in a thread, so the round loop can
send the next round's train requests while the coordinator scores the model
the last round made (fl_server.round_loop says when its result is recorded).
"""
from __future__ import annotations

import threading
import time
from pathlib import Path

import numpy as np

from fl_common.config import Federation, SiteConfig


class CentralEvaluator:
    def __init__(self, fed: Federation, coordinator: SiteConfig, cache_dir: str | Path, device: str = "cpu"):
        from imaging_core.task import Task
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
        self._lock = threading.Lock()  # one net: a background and a cross-site call never interleave

    def evaluate(self, state: dict[str, np.ndarray]) -> tuple[dict, list[dict], dict]:
        from imaging_core.task import load_float_state
        with self._lock:
            ev = self.task.evaluate(load_float_state(self.net, state), self.cases)
        return ev.scores, ev.per_case, ev.summary


class InBackground:
    """``evaluator.evaluate(weights)`` of round ``round``'s model in a daemon thread
    (a killed server does not wait for it: a resume evaluates that model again).

    Torch threads: the thread uses the process's torch thread count (torch gives a
    new thread the count last set). The server's own thread meanwhile only waits on
    the network and sums updates in numpy, so the evaluation keeps every core."""

    def __init__(self, evaluator, r: int, weights: dict[str, np.ndarray]):
        self.round = r
        self.weights = {k: np.array(v, np.float32, copy=True) for k, v in weights.items()}  # the round's model
        self._evaluator, self._out, self.seconds = evaluator, {}, 0.0
        self._thread = threading.Thread(target=self._run, name=f"fedvox-central-round-{r}", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        t0 = time.perf_counter()
        try:
            self._out["result"] = self._evaluator.evaluate(self.weights)
        except BaseException as e:  # noqa: BLE001 - handed to the round loop's thread by result()
            self._out["error"] = e
        self.seconds = round(time.perf_counter() - t0, 2)

    def done(self) -> bool:
        return not self._thread.is_alive()

    def result(self, timeout: float) -> tuple[dict, list[dict], dict]:
        """The evaluation's (scores, per_case, summary); its exception if it raised;
        TimeoutError if it is still running after ``timeout`` seconds."""
        self._thread.join(timeout)
        if self._thread.is_alive():
            raise TimeoutError(f"the held-out evaluation of round {self.round}'s model did not finish "
                               f"within {timeout:.0f} s")
        if "error" in self._out:
            raise self._out["error"]
        return self._out["result"]
