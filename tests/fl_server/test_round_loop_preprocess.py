"""The run's [preprocess] in the round loop (issue 16 "auto"): the real RoundLoop over the
fake Grid of test_round_loop. The table goes to every site in every round config (so the
digest a site signs covers it); "auto" takes plan.json's after the plan stage and builds the
held-out evaluator with it; run.json records it, and a resumed run keeps it."""
from __future__ import annotations

import pytest

from fl_common import keys as K
from fl_server.records import RunRecord
from tests.fl_server.test_round_loop import Central, FakeGrid, make_loop, make_sites, server_identity  # noqa: F401

TABLE = {"pixdim": [3.0, 3.0, 3.0], "margin": 2}


class Recording(FakeGrid):
    """Keeps every round config it was asked to send."""

    def push_messages(self, messages):
        self.configs = getattr(self, "configs", [])
        self.configs += [dict(m.content.config_records[K.REC_CONFIG]) for m in messages
                         if K.REC_CONFIG in m.content.config_records]
        return super().push_messages(messages)


def _loop(tmp_path, grid, **kw):
    loop = make_loop(tmp_path, grid)
    for k, v in kw.items():
        setattr(loop, k, v)
    loop._preprocess_wire = None if loop.preprocess is None else K.preprocess_wire(loop.preprocess)
    return loop


def test_an_explicit_table_is_in_every_round_config_and_recorded(tmp_path):
    grid = Recording(make_sites())
    _loop(tmp_path, grid, preprocess=TABLE).run()
    trained = [c for c in grid.configs if c.get(K.SERVER_ROUND, 0) >= 1]
    assert trained and all(c[K.PREPROCESS] == K.preprocess_wire(TABLE) for c in trained)
    rec = RunRecord.open(tmp_path)
    assert rec.preprocess == TABLE and rec.info["preprocess_source"] == "federation"


def test_auto_takes_the_plans_table_and_builds_the_held_out_evaluator_with_it(tmp_path):
    grid = Recording(make_sites())
    built = []

    def plan_stage(stage, nodes):  # what plan_stage.run_fingerprint_stage leaves in the record
        RunRecord(tmp_path).save_harmonisation({"rows": [], "flags": []})
        RunRecord(tmp_path).save_plan({"preprocess": TABLE})
    loop = _loop(tmp_path, grid, preprocess=None, plan_preprocess=True, central=None, before_rounds=plan_stage,
                 central_for=lambda table: built.append(table) or Central())
    loop.run()
    assert built == [TABLE]
    assert all(c[K.PREPROCESS] == K.preprocess_wire(TABLE) for c in grid.configs if c.get(K.SERVER_ROUND, 0) >= 1)
    rec = RunRecord.open(tmp_path)
    assert rec.preprocess == TABLE and rec.info["preprocess_source"] == "plan"
    assert rec.rounds[0]["round"] == 0 and "central/dice_fg_mean" in rec.rounds[0]  # round 0 evaluated too


def test_auto_without_a_plan_does_not_start(tmp_path):
    loop = _loop(tmp_path, FakeGrid(make_sites()), preprocess=None, plan_preprocess=True, central=None)
    with pytest.raises(ValueError, match=r"plan\.json: missing"):
        loop.run()
    assert RunRecord.open(tmp_path).info["status"] == "failed"


def test_a_resumed_run_refuses_another_table(tmp_path):
    grid = FakeGrid(make_sites())
    grid.crash_at = ("train", 2)
    with pytest.raises(KeyboardInterrupt):
        _loop(tmp_path, grid, preprocess=TABLE).run()
    again = _loop(tmp_path, FakeGrid(make_sites()), preprocess={**TABLE, "pixdim": [2.0, 2.0, 2.0]})
    with pytest.raises(ValueError, match="another \\[preprocess\\]"):
        again.run()
