"""Run records: atomic rows, replayed rounds replace, corrupt checkpoints refused."""
from __future__ import annotations

import json

import numpy as np
import pytest

from fl_server.records import RunRecord
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
