"""Experiment tracking from the run record: TensorBoard event files (always, when
tensorboard is installed) and an MLflow run (when mlflow is importable and
MLFLOW_TRACKING_URI is set).

Everything is taken from the records (fl_server/records.py), so a finished, a
resumed or a copied run directory gives the same curves, and re-running replaces
them instead of appending duplicates. TensorBoard layout, one event directory per
(model, evaluation set) so that TensorBoard overlays them on one chart per metric:

    RUN/tensorboard/global_held-out     the global model on the coordinator's cases
    RUN/tensorboard/global_<site>       the global model on <site>'s validation cases, its training loss
    RUN/tensorboard/local_<site>        <site>'s local-only model, its training loss
    RUN/tensorboard/server              lr, round time, update norm, sites aggregated

Steps are "model after round t" for metrics and the round for losses and times.
"""
from __future__ import annotations

import math
import os
import re
from pathlib import Path
from typing import Iterator

from fl_common.keys import GLOBAL, LOCAL

from .records import RunRecord

HELD_OUT_RUN = "global_held-out"
SERVER_RUN = "server"
# per-round scalars of rounds.json worth a curve, and their tags
ROUND_SCALARS = {"lr": "server/lr", "seconds": "time/round_seconds", "train_seconds": "time/train_seconds",
                 "delta_norm": "update/delta_norm", "clipped": "update/clipped",
                 "sites_aggregated": "sites/aggregated", "n_failures": "sites/failures"}
_EVENTS = re.compile(r"^events\.out\.tfevents\.")


def metric_tag(key: str, labels: dict) -> str:
    """``dice_1`` -> ``dice/organ``, ``hd95_2`` -> ``hd95_mm/lesion``, ``dice_fg_mean`` ->
    ``dice/mean_foreground``: grouped by metric, named by structure."""
    if key == "dice_fg_mean":
        return "dice/mean_foreground"
    name, _, cls = key.rpartition("_")
    group = {"dice": "dice", "hd95": "hd95_mm", "assd": "assd_mm", "missed": "cases_missed"}.get(name, name)
    return f"{group}/{labels.get(cls, cls)}"


def _metric_keys(labels: dict) -> list[str]:
    keys = ["dice_fg_mean"]
    for c in (c for c in labels if c != "0"):
        keys += [f"dice_{c}", f"hd95_{c}", f"missed_{c}"]
    return keys


def scalars(run: RunRecord) -> Iterator[tuple[str, str, int, float]]:
    """Every (event run, tag, step, value) the run record holds, finite values only."""
    labels = run.labels
    keys = _metric_keys(labels)
    for k in keys:
        for r, v in run.central_series(k):
            yield HELD_OUT_RUN, metric_tag(k, labels), r, v
    for site in run.site_names:
        for k in keys:
            for prefix, model in ((GLOBAL, "global"), (LOCAL, "local")):
                for r, v in run.site_series(site, k, prefix):
                    yield f"{model}_{site}", metric_tag(k, labels), r, v
        for key, model in (("train_loss", "global"), ("local_train_loss", "local")):
            for r, v in run.train_series(site, key):
                yield f"{model}_{site}", "loss/train", r, v
    for row in sorted(run.rounds, key=lambda x: x["round"]):
        for key, tag in ROUND_SCALARS.items():
            v = row.get(key)
            if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v):
                yield SERVER_RUN, tag, int(row["round"]), float(v)


def write_tensorboard(run: RunRecord | str | os.PathLike, out_dir: str | os.PathLike | None = None) -> Path | None:
    """Write the run's scalars as TensorBoard event files (see the module doc); returns
    the log directory, or None when tensorboard is not installed."""
    run = run if isinstance(run, RunRecord) else RunRecord.open(run)
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:  # tensorboard is optional: the report says how to get curves
        return None
    root = Path(out_dir) if out_dir is not None else run.tensorboard_dir
    root.mkdir(parents=True, exist_ok=True)
    for f in root.glob("*/*"):  # our own earlier event files only: a rerun replaces, never appends
        if f.is_file() and _EVENTS.match(f.name):
            f.unlink()
    writers: dict[str, SummaryWriter] = {}
    try:
        for name, tag, step, value in scalars(run):
            if name not in writers:
                writers[name] = SummaryWriter(log_dir=str(root / _safe(name)))
            writers[name].add_scalar(tag, value, global_step=step)
    finally:
        for w in writers.values():
            w.close()
    return root


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]", "_", name)


def log_mlflow(run: RunRecord | str | os.PathLike, tracking_uri: str | None = None) -> str | None:
    """Log the run (parameters from run.json, every scalar with its step) as one MLflow
    run; returns its id, or None when mlflow is not installed or no tracking URI is set
    (``tracking_uri`` or MLFLOW_TRACKING_URI). Each call makes a new MLflow run."""
    uri = tracking_uri or os.environ.get("MLFLOW_TRACKING_URI")
    if not uri:
        return None
    try:
        import mlflow
    except ImportError:
        return None
    run = run if isinstance(run, RunRecord) else RunRecord.open(run)
    mlflow.set_tracking_uri(uri)
    mlflow.set_experiment(str(run.info.get("federation") or "fedvox"))
    params = {k: v for k, v in run.info.items() if isinstance(v, (str, int, float, bool)) and k != "status"}
    with mlflow.start_run(run_name=run.run_id, tags={"fedvox.run_id": run.run_id}) as active:
        mlflow.log_params({k: str(v)[:500] for k, v in params.items()})
        for name, tag, step, value in scalars(run):
            mlflow.log_metric(f"{name}/{tag}", value, step=step)
        return active.info.run_id


def track(run: RunRecord | str | os.PathLike) -> dict:
    """Both trackers, as `fedvox report` runs them: {"tensorboard": dir | None, "mlflow": id | None}."""
    run = run if isinstance(run, RunRecord) else RunRecord.open(run)
    tb = write_tensorboard(run)
    return {"tensorboard": str(tb) if tb else None, "mlflow": log_mlflow(run),
            "mlflow_uri": os.environ.get("MLFLOW_TRACKING_URI")}
