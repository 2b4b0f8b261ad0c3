"""`fedvox plan` and `fedvox check`: the fingerprint, the plan and the
harmonisation table of a federation, written into the run record.

Here the sites' fingerprints are computed where this process can read the
sites' data (the demo, a single-institution federation, `--data-base` over
copies): each site's reply goes through the same checks as a remote reply
(imaging_core.plan.aggregate.check_reply) and is pooled in plaintext. Over a
real federation `fedvox server` asks the sites instead (fl_server.plan_stage:
the vectors summed under secure aggregation, tested equal to this plaintext sum).
"""
from __future__ import annotations

import os
import time
from pathlib import Path

from imaging_core.plan.aggregate import aggregate_fingerprints, check_reply
from imaging_core.plan.fingerprint import fingerprint_site
from imaging_core.plan.harmonise import check
from imaging_core.plan.planner import make_plan


def local_replies(fed, include_coordinator: bool = False) -> tuple[dict, float]:
    """site -> fingerprint reply for every training site whose data is readable here."""
    t0 = time.perf_counter()
    sites = fed.all_sites if include_coordinator else fed.sites
    replies = {s.name: check_reply(s.name, fingerprint_site(s.datalist_path, s.modality, site=s.name).to_reply())
               for s in sites}
    return replies, time.perf_counter() - t0


def run_check(federation: str | os.PathLike, data_base: str | os.PathLike | None = None, strict: bool = False,
              record=None) -> dict:
    """The harmonisation table of the federation's sites; into ``record`` if given."""
    from fl_common.config import load_federation
    fed = load_federation(federation, data_base=data_base)
    replies, secs = local_replies(fed)
    result = check({s: r["summary"] for s, r in replies.items()}, strict=strict)
    result["seconds"] = round(secs, 2)
    if record is not None:
        record.save_harmonisation(result)
    return result


def run_plan(federation: str | os.PathLike, run_dir: str | os.PathLike, memory_gb: float,
             data_base: str | os.PathLike | None = None, strict: bool = False) -> tuple[dict, dict]:
    """plan.json and the harmonisation table into the run record at ``run_dir``."""
    from fl_common.config import load_federation
    from .records import RunRecord
    fed = load_federation(federation, data_base=data_base)
    replies, secs = local_replies(fed)
    harm = check({s: r["summary"] for s, r in replies.items()}, strict=strict)
    harm["seconds"] = round(secs, 2)
    plan = make_plan(aggregate_fingerprints(replies), memory_bytes=int(memory_gb * 2 ** 30),
                     base_channels=fed.model.channels[0])
    plan["memory_gb"] = memory_gb
    rec = RunRecord(Path(run_dir))
    rec.save_harmonisation(harm)
    rec.save_plan(plan)
    return plan, harm


def with_plan(fed, plan_path: str | os.PathLike | None):
    """``fed`` with plan.json's [preprocess] in place of "auto" (`fedvox train --plan`). As at a
    site, an explicit [preprocess] wins: a plan that differs from it is refused."""
    if plan_path is None:
        return fed
    from imaging_core.errors import ImagingError
    from imaging_core.io.tables import read_json
    path = Path(plan_path)
    if not path.is_file():
        raise ImagingError(path, "plan file not found (`fedvox plan` writes RUN/plan.json)")
    try:
        plan = read_json(path, None)
    except ValueError:
        raise ImagingError(path, "not valid JSON") from None
    if not isinstance(plan, dict) or not isinstance(plan.get("preprocess"), dict):
        raise ImagingError(path, "has no \"preprocess\" table: not a plan.json of `fedvox plan`")
    planned = fed.with_preprocess(plan["preprocess"]).preprocess
    if not fed.preprocess_auto and planned != fed.preprocess:
        raise ImagingError(path, f"differs from the explicit [preprocess] of {fed.path}: the explicit table "
                                 "wins; drop --plan or set [preprocess] = \"auto\"")
    return fed.model_copy(update={"preprocess": planned})

