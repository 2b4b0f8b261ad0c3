"""TensorBoard events of a run, read back with tensorboard's own reader."""
from __future__ import annotations

import json

import pytest


def _read(logdir):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    acc = EventAccumulator(str(logdir))
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def _same(got, want):
    assert [s for s, _ in got] == [int(s) for s, _ in want]
    assert [v for _, v in got] == pytest.approx([v for _, v in want], rel=1e-6)


def test_tensorboard_events_equal_the_run_record(run_dir, fab):
    pytest.importorskip("tensorboard")
    from fl_server.records import RunRecord
    from fl_server.tracking import write_tensorboard
    run = RunRecord.open(run_dir)
    tb = write_tensorboard(run)
    assert tb == run_dir / "tensorboard"
    held = _read(tb / "global_held-out")
    rounds = json.loads((run_dir / "rounds.json").read_text())
    want = [(r["round"], r["central/dice_1"]) for r in rounds if "central/dice_1" in r]
    _same(held["dice/organ"], want)
    assert "hd95_mm/lesion" in held and "dice/mean_foreground" in held
    for site in fab.SITES:
        glob, loc = _read(tb / f"global_{site}"), _read(tb / f"local_{site}")
        _same(glob["dice/lesion"], run.site_series(site, "dice_2"))
        _same(loc["loss/train"], run.train_series(site, "local_train_loss"))
        _same(glob["loss/train"], run.train_series(site, "train_loss"))
    server = _read(tb / "server")
    assert "time/round_seconds" in server and len(server["time/round_seconds"]) == fab.ROUNDS
    # a second write replaces the events (no duplicated points)
    write_tensorboard(run)
    assert _read(tb / "global_held-out")["dice/organ"] == held["dice/organ"]


def test_report_links_the_tracking(run_dir, monkeypatch):
    pytest.importorskip("tensorboard")
    from fl_server.report import make_report
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    out = make_report(run_dir, quiet=True)
    html = (out / "report.html").read_text()
    assert f"tensorboard --logdir {run_dir / 'tensorboard'}" in html
    assert "MLflow: not logged" in html
    assert any((run_dir / "tensorboard" / "server").glob("events.out.tfevents.*"))


def test_mlflow_run_holds_the_same_scalars(run_dir, tmp_path, monkeypatch):
    """Runs where mlflow is installed (skipped otherwise): the logged history is the record's."""
    mlflow = pytest.importorskip("mlflow")
    from fl_server.records import RunRecord
    from fl_server.tracking import log_mlflow, scalars
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    rid = log_mlflow(run_dir)
    client = mlflow.tracking.MlflowClient(uri)
    assert client.get_run(rid).data.params["federation"] == "sites_example"
    want = [(s, v) for name, tag, s, v in scalars(RunRecord.open(run_dir))
            if (name, tag) == ("global_held-out", "dice/organ")]
    got = [(m.step, m.value) for m in client.get_metric_history(rid, "global_held-out/dice/organ")]
    _same(sorted(got), want)
    monkeypatch.delenv("MLFLOW_TRACKING_URI")
    assert log_mlflow(run_dir) is None  # no tracking URI: nothing logged
