"""Run records: atomic rows, replayed rounds replace, corrupt checkpoints refused."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest

from fl_server.records import RunRecord, site_row_model_round
from imaging_core.errors import ImagingError
from imaging_core.train.checkpoint import load_checkpoint, save_checkpoint


def test_rounds_resume_and_replays_replace(tmp_path):
    rec = RunRecord(tmp_path)
    rec.start({"run_id": "r1"})
    rec.add_round({"round": 1, "status": "ok", "central/dice_fg_mean": 0.4}, [{"round": 1, "site": "a"}])
    rec.commit_round(1)
    rec.add_round({"round": 2, "status": "ok", "central/dice_fg_mean": 0.3}, [{"round": 2, "site": "a"}])
    again = RunRecord(tmp_path)  # a restarted server: round 2 never committed
    assert again.last_round == 1 and again.info["run_id"] == "r1"
    again.add_round({"round": 2, "status": "ok", "central/dice_fg_mean": 0.6}, [{"round": 2, "site": "a"}])
    assert [r["round"] for r in again.rounds] == [1, 2]
    assert again.best("dice_fg_mean") == (2, 0.6)
    assert (tmp_path / "rounds.csv").read_text().count("\n") == 3
    assert len(json.loads((tmp_path / "sites.json").read_text())) == 2


def test_a_corrupt_round_checkpoint_is_detected_and_not_loaded(tmp_path):
    rec = RunRecord(tmp_path)
    path = rec.checkpoint_path(1)
    save_checkpoint({"flat": np.arange(10, dtype=np.float32), "round": 1}, path)
    assert load_checkpoint(path)["round"] == 1
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(ImagingError, match="SHA-256 mismatch"):
        load_checkpoint(path)
    path.with_name(path.name + ".sha256").unlink()
    with pytest.raises(ImagingError, match="no .sha256"):
        load_checkpoint(path)


# ----------------------------------------------------------------- the read-only view
def _run(tmp_path, central: list[float | None], finish: bool = False, statuses=None) -> RunRecord:
    """A run written through the writer API: round r's held-out Dice is central[r]."""
    rec = RunRecord(tmp_path)
    rec.start({"run_id": "r", "best_metric": "dice_fg_mean", "labels": {"0": "bg", "1": "organ"}})
    for r, v in enumerate(central):
        row = {"round": r, **({} if v is None else {"central/dice_fg_mean": v})}
        if r:
            row["status"] = (statuses or {}).get(r, "ok")
        sites = [{"round": r, "site": s, "val/global/dice_fg_mean": 0.1 * r + i, "val/local/dice_fg_mean": 0.2 * r,
                  "val/num_val": 2.0} for i, s in enumerate(("a", "b"))] if r else []
        rec.add_round(row, sites)
        rec.commit_round(r)
    if finish:
        best_round, best = rec.best("dice_fg_mean")
        rec.finish("completed", best_round=best_round, best_score=best)
    return rec


def test_round_zero_competes_for_best_and_ties_go_to_the_earlier_round(tmp_path):
    rec = _run(tmp_path / "a", [0.5, 0.3, 0.4])
    assert rec.best() == (0, 0.5)
    assert RunRecord.open(tmp_path / "a").model_round("best") == 0
    assert _run(tmp_path / "b", [0.1, 0.4, 0.4]).best() == (1, 0.4)
    assert _run(tmp_path / "c", [0.1, 0.2, 0.6]).best() == (2, 0.6)


def test_without_a_held_out_metric_best_is_the_final_model(tmp_path):
    rec = _run(tmp_path, [None, None, None], statuses={2: "failed"})
    r, score = rec.best()
    assert r == 1 == rec.final_round and math.isnan(score)  # round 2 failed: the model after round 1
    assert rec.model_round("final") == 1


def test_a_finished_run_keeps_its_choice_a_running_one_recomputes(tmp_path):
    rec = _run(tmp_path, [0.5, 0.6], finish=True)
    assert rec.info["best_round"] == 1
    again = RunRecord(tmp_path)  # restarted on the same directory: running again
    again.start({"run_id": "r"})
    again.add_round({"round": 2, "status": "ok", "central/dice_fg_mean": 0.9}, [])
    assert again.best() == (2, 0.9)


def test_a_site_row_of_round_t_evaluates_the_model_after_round_t_minus_1(tmp_path):
    rec = _run(tmp_path, [0.1, 0.2, 0.3, 0.4])
    rec.add_final_sites([{"site": "a", "global/dice_fg_mean": 0.9, "local/dice_fg_mean": 0.8, "num_val": 2.0}], [])
    view = RunRecord.open(tmp_path)
    assert site_row_model_round(3) == 2
    assert {(x["round"], x["site"]) for x in view.site_rows_evaluating(1)} == {(2, "a"), (2, "b")}
    after1 = view.site_metrics_after(1)
    assert after1["b"]["global/dice_fg_mean"] == pytest.approx(0.2 + 1)  # round 2's row, val/ stripped
    assert after1["a"]["num_val"] == 2.0
    assert view.site_metrics_after(3) == {"a": {"global/dice_fg_mean": 0.9, "local/dice_fg_mean": 0.8,
                                                "num_val": 2.0}}  # the final evaluation
    # the learning curve of site a: global model after rounds 0..2 from rows 1..3, then the final one
    assert [r for r, _ in view.site_series("a", "dice_fg_mean")] == [0, 1, 2, 3]
    assert view.site_series("a", "dice_fg_mean")[-1] == (3, 0.9)


def test_open_is_read_only_and_names_what_is_missing(tmp_path):
    with pytest.raises(ImagingError, match="run directory not found"):
        RunRecord.open(tmp_path / "nope")
    assert not (tmp_path / "nope").exists()
    (tmp_path / "empty").mkdir()
    with pytest.raises(ImagingError, match="run.json"):
        RunRecord.open(tmp_path / "empty")
    _run(tmp_path / "r", [0.5])
    view = RunRecord.open(tmp_path / "r")
    with pytest.raises(RuntimeError, match="read only"):
        view.add_round({"round": 1}, [])
    assert view.labels == {"0": "bg", "1": "organ"} and view.central(0) == {"dice_fg_mean": 0.5}


def test_model_paths_resolve_best_and_final(tmp_path):
    rec = _run(tmp_path, [0.5, 0.3, 0.4], finish=True)  # round 0 is best
    save_checkpoint({"w": np.zeros(2, np.float32)}, rec.model_file("final"))
    view = RunRecord.open(tmp_path)
    with pytest.raises(ImagingError, match="global_best.pt.*after round 0"):
        view.model_path("best")  # a run from before the round-0 model was written
    save_checkpoint({"w": np.ones(2, np.float32)}, rec.model_file("best"))
    assert view.model_path("best") == tmp_path / "global_best.pt"
    assert view.model_path(0) == tmp_path / "global_best.pt"
    assert view.model_path(2) == tmp_path / "global_final.pt"
    assert view.model_path(1) == rec.checkpoint_path(1)
    # best is the final round and only the final model was written: the same model
    rec2 = _run(tmp_path / "b", [0.1, 0.2], finish=True)
    save_checkpoint({"w": np.ones(2, np.float32)}, rec2.model_file("final"))
    assert RunRecord.open(tmp_path / "b").model_path("best") == tmp_path / "b" / "global_final.pt"


def test_pseudonyms_are_stable_and_private(tmp_path):
    import stat
    view = RunRecord.open(_run(tmp_path, [0.5]).dir)
    assert view.pseudonyms(["x", "y"]) == {"x": "site-1", "y": "site-2"}
    assert view.pseudonyms(["z", "x"]) == {"x": "site-1", "y": "site-2", "z": "site-3"}
    assert stat.S_IMODE((tmp_path / "site_pseudonyms.json").stat().st_mode) == 0o600
