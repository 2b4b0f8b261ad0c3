"""The held-out re-evaluation of the saved models on the coordinator's cases."""
from __future__ import annotations

import json

import numpy as np
import pytest


def test_report_evaluates_held_out_cases(run_dir, tmp_path, fab):
    from fl_server.report import make_report
    fed = fab.mini_federation(tmp_path / "fed")
    out = make_report(run_dir, evaluate=True, federation_path=fed, data_base=tmp_path / "fed", quiet=True)
    per_case = (out / "held_out_cases.csv").read_text().splitlines()
    assert len(per_case) == 1 + 2 * 3  # global best + final, 3 cases each
    col = per_case[0].split(",").index("space")
    assert {r.split(",")[col] for r in per_case[1:]} == {"original"}  # on each case's own label file
    overlays = sorted(out.glob("overlay_*.png"))
    assert 1 <= len(overlays) <= 3
    md = (out / "report.md").read_text()
    assert all(f"]({p.name})" in md for p in out.glob("*.png"))
    fig = json.loads((out / "figures.json").read_text())
    assert "held-out cases" in fig["hd95_box.png"]["axes"][0]["title"]


def test_the_report_reuses_the_runs_held_out_evaluation_and_predicts_only_the_drawn_cases(run_dir, tmp_path, fab):
    import torch

    from fl_common.config import load_federation
    from fl_server.central_eval import CentralEvaluator
    from fl_server.cross_site import model_hash_of
    from fl_server.records import RunRecord
    from fl_server.report.evaluate import held_out_evaluation
    fed_path = fab.mini_federation(tmp_path / "fed")
    kw = {"federation_path": fed_path, "data_base": tmp_path / "fed"}
    fresh, fresh_overlays = held_out_evaluation(run_dir, **kw)   # nothing recorded: evaluated here
    run = RunRecord.open(run_dir)
    fed = load_federation(fed_path, data_base=tmp_path / "fed")
    central = CentralEvaluator(fed, fed.coordinator, run.coordinator_cache)  # what the run's last stage does
    states = {w: run.load_model(w) for w in ("best", "final")}
    held = {model_hash_of(st): {"name": w, "cases": central.evaluate(st)[1]} for w, st in states.items()}
    RunRecord(run_dir).add_held_out_cases(held)
    reused, overlays = held_out_evaluation(run_dir, **kw)
    key = lambda r: (r["model"], r["case_id"])  # noqa: E731
    assert sorted(map(key, reused)) == sorted(map(key, fresh))
    for a, b in zip(sorted(reused, key=key), sorted(fresh, key=key)):  # the run's values are the report's
        assert a == pytest.approx(b, nan_ok=True)
    assert [o["name"] for o in overlays] == [o["name"] for o in fresh_overlays]
    assert all(np.array_equal(o["pred"], f["pred"]) for o, f in zip(overlays, fresh_overlays))
    # the recorded rows are what the report shows (it did not evaluate again) ...
    h_best = model_hash_of(states["best"])
    held[h_best]["cases"][0]["dice"] = {k: 0.123 for k in held[h_best]["cases"][0]["dice"]}
    RunRecord(run_dir).add_held_out_cases(held)
    rows, _ = held_out_evaluation(run_dir, **kw)
    cid = held[h_best]["cases"][0]["case_id"]
    (row,) = [r for r in rows if r["case_id"] == cid and r["model"] == "global (best)"]
    assert row["dice_1"] == 0.123
    # ... only for the very same model: another model's rows are not taken for it
    other = {k: v + 1 if torch.is_floating_point(v) else v for k, v in states["best"].items()}
    RunRecord(run_dir).add_held_out_cases({model_hash_of(other): held[h_best]})
    rows, _ = held_out_evaluation(run_dir, **kw)
    (row,) = [r for r in rows if r["case_id"] == cid and r["model"] == "global (best)"]
    assert row["dice_1"] != 0.123
