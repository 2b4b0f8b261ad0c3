"""The held-out evaluation overlapped with the next round (fl_server.round_loop):
over the fake grid of test_round_loop, with evaluators that record which model
they were given and that wait until the next round's messages are out, so the
overlap is proven by the run itself, not by timing."""
from __future__ import annotations

import json
import threading
import time

import numpy as np
import pytest
from flwr.app import MetricRecord

from fl_common import keys as K
from fl_common.tensors import flatten
from fl_server.records import RunRecord
from fl_server.strategy import ServerOptimizer
from tests.fl_server.test_round_loop import (NAMES, FakeGrid, FakeSite, _secure_loop, expected_step, make_loop,
                                             make_sites, secagg_sites, server_identity)  # noqa: F401  (autouse fixture)

W1_MEAN = float(expected_step(np.zeros(9), NAMES).mean())


def score(flat: np.ndarray) -> float:
    """Peaks at the model after round 1: the best model is not the last one."""
    return float(-abs(float(np.mean(flat)) - W1_MEAN))


class Recording:
    """Scores a model, remembers it, and (``overlap``) first waits, bounded, until the
    grid has sent a message of a later round than the model's: the evaluation then
    demonstrably ran while that round did."""

    def __init__(self, grid: FakeGrid, first_round: int = 0, overlap: bool = True, rounds: int = 3):
        self.grid, self.next_round, self.overlap, self.rounds = grid, first_round, overlap, rounds
        self.got: list[tuple[int, np.ndarray]] = []
        self.overlapped: list[bool] = []
        self.threads: list[str] = []

    def evaluate(self, weights):
        r, flat = self.next_round, flatten(weights).copy()
        self.next_round += 1
        self.got.append((r, flat))
        self.threads.append(threading.current_thread().name)
        wait = self.overlap and r <= self.rounds  # the cross-site stage's calls come after the rounds
        deadline = time.monotonic() + 5.0
        while wait and time.monotonic() < deadline and not self._later(r):
            time.sleep(0.01)
        self.overlapped.append(wait and self._later(r))
        return {"dice_fg_mean": score(flat)}, [], {}

    def _later(self, r: int) -> bool:
        return any(rr > r for _, _, rr in list(self.grid.pushed))


class Blocking:
    """An evaluation that does not finish until released (the server dies first)."""

    def __init__(self):
        self.release, self.started = threading.Event(), threading.Event()

    def evaluate(self, weights):
        self.started.set()
        self.release.wait(10)
        return {"dice_fg_mean": score(flatten(weights))}, [], {}


class LateLossSite(FakeSite):
    """Replies to evaluate with the local-only baseline's training loss too (fl_client.worker)."""

    def evaluate(self, msg, r):
        content = super().evaluate(msg, r)
        content[K.REC_METRICS] = MetricRecord({**dict(content[K.REC_METRICS]), "local_train_loss": 0.25})
        return content


def _weights_after(rounds: int) -> list[np.ndarray]:
    w = [np.zeros(9)]
    for _ in range(rounds):
        w.append(expected_step(w[-1], NAMES))
    return w


def _best_file(run_dir) -> np.ndarray:
    rec = RunRecord(run_dir)
    return flatten({k: v.numpy() for k, v in rec.load_model("best").items()})


def test_central_metrics_land_on_their_rounds_rows_with_their_models_while_the_next_round_runs(tmp_path):
    sites = {n: LateLossSite(s.name, s.target, s.num_examples) for n, s in make_sites().items()}
    grid = FakeGrid(sites)
    loop = make_loop(tmp_path, grid, rounds=3)
    loop.central = ev = Recording(grid)
    loop.run()
    expect = _weights_after(3)
    # each model once, in order: the initial one, then the one after each round
    # (then the cross-site stage's: the final and the best model)
    assert [r for r, _ in ev.got] == [0, 1, 2, 3, 4, 5]
    for r, flat in ev.got[:4]:
        np.testing.assert_allclose(flat, expect[r], rtol=1e-6, err_msg=f"round {r}")
    # ...and each evaluation ran while a later round's messages went out (round 3's:
    # during the final evaluation), in a thread of its own
    assert ev.overlapped[:4] == [True] * 4 and ev.threads[:4] == [f"fedvox-central-round-{r}" for r in range(4)]
    rec = RunRecord(tmp_path)
    for row in rec.rounds:
        assert row["central/dice_fg_mean"] == pytest.approx(score(expect[row["round"]].astype(np.float32)))
    # the best is round 1, recorded while round 2 ran: its model, not the live one, was saved
    info = json.loads((tmp_path / "run.json").read_text())
    assert info["best_round"] == 1 and "central_pending" not in info and info["status"] == "completed"
    np.testing.assert_allclose(_best_file(tmp_path), expect[1], rtol=1e-6)
    # the local-only baseline's loss, sent with the evaluate reply, is a training scalar of its round
    assert all(s["train/local_train_loss"] == 0.25 and "val/local_train_loss" not in s for s in rec.sites)
    done = [e for e in rec.events()[0] if e["event"] == "central_done"]
    assert [e["round"] for e in done] == [0, 1, 2, 3]


def test_a_restart_while_a_rounds_central_evaluation_runs_evaluates_that_rounds_model_again(tmp_path):
    whole_grid = FakeGrid(make_sites())
    whole = make_loop(tmp_path / "whole", whole_grid, optimizer=ServerOptimizer("fedadam", eta=0.1), rounds=3)
    whole.central = Recording(whole_grid, overlap=False)
    whole.run()

    grid = FakeGrid(make_sites())
    grid.crash_at = ("train", 2)
    cut = make_loop(tmp_path / "cut", grid, optimizer=ServerOptimizer("fedadam", eta=0.1), rounds=3)
    cut.central = Recording(grid, overlap=False)
    blocking = Blocking()
    real_settle = cut._settle

    def settle_then_block(wait=True):  # round 0 is recorded; round 1's evaluation never ends
        real_settle(wait)
        if cut._pending is None:
            cut.central = blocking
    cut._settle = settle_then_block
    try:
        with pytest.raises(KeyboardInterrupt):
            cut.run()
        assert blocking.started.is_set()
        rec = RunRecord(tmp_path / "cut")
        assert rec.last_round == 1 and rec.info["central_pending"] == 1
        assert "central/dice_fg_mean" not in rec.round_row(1) and "central/dice_fg_mean" in rec.round_row(0)
    finally:
        blocking.release.set()  # the dead server's thread ends; what it computes is never recorded

    grid2 = FakeGrid(make_sites())
    again = make_loop(tmp_path / "cut", grid2, optimizer=ServerOptimizer("fedadam", eta=0.1), rounds=3)
    again.central = ev = Recording(grid2, first_round=1)
    again.run()
    # round 1's model, from its checkpoint, is evaluated again first; round 1 is not re-run
    assert [r for r, _ in ev.got][:3] == [1, 2, 3]
    assert sorted({r for t, _, r in grid2.pushed if t == "train"}) == [2, 3]
    ref = {r: flat for r, flat in whole.central.got}
    for r, flat in ev.got[:3]:
        np.testing.assert_array_equal(flat, ref[r])
    ours, theirs = RunRecord(tmp_path / "cut"), RunRecord(tmp_path / "whole")
    assert [r["round"] for r in ours.rounds] == [0, 1, 2, 3]
    for r in range(4):
        assert ours.round_row(r)["central/dice_fg_mean"] == theirs.round_row(r)["central/dice_fg_mean"]
    assert ours.info["best_round"] == theirs.info["best_round"] and "central_pending" not in ours.info
    np.testing.assert_array_equal(_best_file(tmp_path / "cut"), _best_file(tmp_path / "whole"))
    np.testing.assert_array_equal(again.flat(), whole.flat())


def test_under_secure_aggregation_an_interrupted_round_ends_the_run_with_the_previous_rounds_metrics(tmp_path):
    """Round 2 was in flight, round 1's held-out evaluation running, when the server died:
    the restart evaluates round 1's committed model and records it, then ends the run
    without re-running round 2 (fl_server.secure)."""
    sites = secagg_sites(tmp_path / "site-state", NAMES, 0)
    loop, grid = _secure_loop(tmp_path, tmp_path / "run", colluding_sites=0, sites=sites, rounds=3)
    grid.crash_at = ("evaluate", 2)
    blocking = Blocking()
    real_settle = loop._settle

    def settle_then_block(wait=True):
        real_settle(wait)
        if loop._pending is None:
            loop.central = blocking
    loop._settle = settle_then_block
    try:
        with pytest.raises(KeyboardInterrupt):
            loop.run()
    finally:
        blocking.release.set()
    assert RunRecord(tmp_path / "run").info["central_pending"] == 1
    loop2, grid2 = _secure_loop(tmp_path, tmp_path / "run", colluding_sites=0, sites=sites, rounds=3)
    loop2.central = ev = Recording(grid2, first_round=1, overlap=False)
    loop2.run()
    rec = RunRecord(tmp_path / "run")
    assert rec.info["status"] == "failed" and rec.round_row(2)["status"] == "interrupted"
    assert not [t for t, _, _ in grid2.pushed if t == "train"]
    committed = np.asarray(rec.load_round_checkpoint(1)["flat"], np.float32)
    assert [r for r, _ in ev.got] == [1]
    np.testing.assert_array_equal(ev.got[0][1], committed)
    assert rec.round_row(1)["central/dice_fg_mean"] == pytest.approx(score(committed))
    assert "central_pending" not in rec.info
