"""The Flower ServerApp: reads the run spec and the federation config, builds
the round loop's collaborators (fl_server.round_loop) and runs it.

All configuration reads of the server's run live in build_server; the loop
and the aggregation modes get plain values and objects.
"""
from __future__ import annotations

import json
import logging
from pathlib import Path

from flwr.app import Context
from flwr.serverapp import Grid, ServerApp

from .aggregation import PlainAggregation
from .exchange import Stage
from .records import RunRecord
from .round_loop import RoundLoop, RoundSettings
from .strategy import ServerOptimizer, site_lr, site_round_config

app = ServerApp()


def _sooner_reply_pulls() -> None:
    """The grid pulls each reply's objects with Flower's 1 s first backoff, usually
    before the site has finished uploading them: retry sooner (fl_common.flower)."""
    import flwr.superlink.grid.http_grid as http_grid
    from fl_common.flower import sooner_object_pulls
    sooner_object_pulls(http_grid)


def build_server(spec: dict, grid) -> RoundLoop:
    """The round loop for run ``spec`` (run_dir, federation, data_base, secure_aggregation,
    roster, threshold, device, timeouts) over ``grid``."""
    from fl_common.config import load_federation
    from imaging_core.task import Task, float_state
    fed = load_federation(spec["federation"], data_base=spec.get("data_base"))
    fl = fed.federation
    rounds = int(spec.get("rounds", fl.rounds))
    site_cfg = site_round_config(fl)
    settings = RoundSettings(
        rounds=rounds, min_sites=int(spec.get("min_sites", fl.min_sites)),
        train_timeout=float(spec.get("train_timeout", fl.train_timeout)),
        eval_timeout=float(spec.get("eval_timeout", fl.eval_timeout)),
        connect_timeout=float(spec.get("connect_timeout", 300)), expected_sites=len(fed.sites), site_round=site_cfg,
        lr=lambda r: site_lr(fed.train, rounds, site_cfg["local_epochs"], r),
        best_metric=fl.best_metric)
    record = RunRecord(spec["run_dir"], signer=_record_signer(spec))
    task = Task(fed, spec.get("device", "cpu"))
    template = {k: v.numpy() for k, v in float_state(task.build_net(seed=fl.seed)).items()}
    central = central_for = None
    if fed.coordinator is not None:
        from .central_eval import CentralEvaluator

        def central_for(table: dict):
            return CentralEvaluator(fed.with_preprocess(table), fed.coordinator,
                                    Path(spec["run_dir"]) / "coordinator-cache", spec.get("device", "cpu"))
        if not fed.preprocess_auto:  # "auto": built once the plan's table is known (RoundLoop.start)
            central, central_for = central_for(fed.preprocess.model_dump()), None
    from .record_manifest import file_sha256
    run_info = {"federation": fl.name, "federation_path": str(Path(spec["federation"]).resolve()),
                "federation_sha256": file_sha256(Path(spec["federation"])),  # signed: export reads this file
                "data_base": spec.get("data_base"),
                "labels": {str(k): v for k, v in fed.labels.items()},
                "model": fed.model.model_dump(), "postprocess": fed.postprocess.chain_config(),
                "evaluation_amp": task.amp_record(),
                "evaluation_space": central.space if central is not None else None}
    return RoundLoop(grid, record, _aggregation(spec, fl, record), ServerOptimizer.from_federation(fl),
                     template, settings, central=central, run_info=run_info, stage=Stage(grid),
                     before_rounds=_plan_stage(spec, fed, record),
                     preprocess=None if fed.preprocess_auto else fed.preprocess.model_dump(),
                     plan_preprocess=fed.preprocess_auto, central_for=central_for)


def _record_signer(spec: dict):
    """The provision's run-record key, which signs the run's manifest (None: an unsigned run)."""
    if not spec.get("provision"):
        logging.getLogger(__name__).warning("no provision in the run spec: the run record is not "
                                            "signed, and `fedvox export` will refuse to sign its model")
        return None
    from .provision import load_provision
    from .record_manifest import RecordKey
    return RecordKey.signer(load_provision(spec["provision"]).run_record_key)


def _plan_stage(spec: dict, fed, record: RunRecord):
    """The fingerprint query + harmonisation check before round 1 (`fedvox server`); always
    with [preprocess] = "auto", and then with a plan (the default memory budget unless stated)."""
    if not spec.get("harmonisation_check") and not fed.preprocess_auto:
        return None
    from imaging_core.plan.planner import DEFAULT_MEMORY_GB
    from .plan_stage import run_fingerprint_stage
    memory_gb = spec.get("plan_memory_gb") or (DEFAULT_MEMORY_GB if fed.preprocess_auto else None)
    secure = _aggregation(spec, fed.federation, record)  # a session of its own, same settings
    return lambda stage, nodes: run_fingerprint_stage(
        stage, nodes, record, secure=secure if getattr(secure, "signs_received", False) else None,
        timeout=float(spec.get("setup_timeout", 300)), strict=bool(spec.get("strict_check")),
        memory_gb=memory_gb, base_channels=fed.model.channels[0],
        memory_source="run spec" if spec.get("plan_memory_gb") else "default (planner.DEFAULT_MEMORY_GB)")


def _aggregation(spec: dict, fl, record: RunRecord):
    mode = spec.get("secure_aggregation", "off")
    if mode in ("off", False, None):
        return PlainAggregation()
    from .secure import SecureAggregation, next_session
    return SecureAggregation(json.loads(Path(spec["roster"]).read_text()), lambda: next_session(record),
                             threshold=spec.get("threshold") or fl.secagg_threshold,
                             clip_range=fl.secagg_clip, max_weight=fl.secagg_max_weight,
                             colluding_sites=fl.colluding_sites,
                             setup_timeout=float(spec.get("setup_timeout", 300)))


@app.main()
def main(grid: Grid, context: Context) -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    spec = json.loads(Path(str(context.run_config["spec"])).read_text())
    _sooner_reply_pulls()
    build_server(spec, grid).run()
