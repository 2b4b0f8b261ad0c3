"""The plan's fingerprint query over the sites, before round 1 (issue 16).

One secure-aggregation session of its own ("<run>.plan": S1 advertise, S2
share, then one masked round on two query stages):
  query.fingerprint         -> each site: its summary row and suppressed
                               categorical counts in clear, its histogram
                               vector masked (fl_common.fingerprint_codec)
  query.fingerprint_reveal  -> the shares that strip the masks
The server sees only the sum of the vectors. Without secure aggregation (a
development run, or sites that opted out) the vector travels in clear.

Every site must answer: a missing or malformed reply stops the run with one
line naming the site (PlanError). Then the harmonisation table (and, with a
memory budget, plan.json) go into the run record; ``strict`` refuses to start
on any flag.
"""
from __future__ import annotations

import json
import logging

import numpy as np
from flwr.app import ConfigRecord, Message, RecordDict

from fl_common import keys as K
from fl_common.fingerprint_codec import DIGITS, decode_sum, split_federation_vector
from fl_common.secagg.checks import received
from imaging_core.plan.aggregate import PlanError, check_reply, pooled_from_sum
from imaging_core.plan.harmonise import check
from imaging_core.plan.planner import make_plan

log = logging.getLogger("fedvox.server")


def _site_of(m: Message):
    info = m.content.config_records.get(K.REC_INFO)
    return None if info is None else info[K.SITE]


def _messages(nodes, kind: str, cfg: dict, extra: dict) -> list[Message]:
    out = []
    for n in nodes:
        content = RecordDict({K.REC_CONFIG: ConfigRecord(dict(cfg))})
        for key, rec in extra.get(n, {}).items():
            content[key] = rec
        out.append(Message(content=content, dst_node_id=n, message_type=K.query_type(kind)))
    return out


def _refuse_failed(stage, failed: list, what: str) -> None:
    if failed:
        f = failed[0]
        raise PlanError(f["site"], f"{what}: {f['error']}"
                        + (f" (and {len(failed) - 1} more sites)" if len(failed) > 1 else ""))


def _side(stage, node, m: Message) -> dict:
    site = stage.site(node)
    rec = m.content.config_records.get(K.REC_FINGERPRINT)
    if rec is None or K.PAYLOAD not in rec:
        raise PlanError(site, "fingerprint reply has no fingerprint record")
    try:
        return json.loads(bytes(rec[K.PAYLOAD]))
    except (ValueError, UnicodeDecodeError):
        raise PlanError(site, "fingerprint reply is not valid JSON") from None


def fingerprint_sum(stage, nodes, run_id: str, secure=None, timeout: float = 600.0) -> tuple[np.ndarray, dict]:
    """(summed federation vector, site -> reply without its vector)."""
    replies: dict[str, dict] = {}
    if secure is None:
        cfg = {K.SERVER_ROUND: 1, K.RUN_ID: f"{run_id}.plan"}
        ok, failed = stage.send(_messages(nodes, K.PLAN_FINGERPRINT, cfg, {}), timeout, site_of=_site_of)
        _refuse_failed(stage, failed, "no fingerprint reply")
        total = None
        for n, m in ok.items():
            side = _side(stage, n, m)
            vec = side.get("vector")
            if not isinstance(vec, list):
                raise PlanError(stage.site(n), "fingerprint reply has no vector")
            total = np.asarray(vec, np.int64) if total is None else total + np.asarray(vec, np.int64)
            replies[stage.site(n)] = {**side, "vector": None}
        return total, replies
    secure.setup(stage, nodes)
    cfg = {K.SERVER_ROUND: 1, K.RUN_ID: secure.session}
    extra = secure.train_extra(1, nodes, received({}, cfg, secure.session, 1).digest)
    if secure.failure:
        raise PlanError("plan", f"secure aggregation could not start the fingerprint sum: {secure.failure}")
    ok, failed = stage.send(_messages(nodes, K.PLAN_FINGERPRINT, cfg, extra), timeout,
                            on_reply=lambda n, m: secure.collect_train(1, {n: m}), site_of=_site_of)
    _refuse_failed(stage, failed, "no fingerprint reply")
    for n, m in ok.items():
        replies[stage.site(n)] = _side(stage, n, m)
    survivors = sorted(ok)
    ok2, failed2 = stage.send(_messages(survivors, K.PLAN_REVEAL, cfg, secure.eval_extra(1, survivors)), timeout,
                              site_of=_site_of)
    _refuse_failed(stage, failed2, "no reveal for the fingerprint sum")
    from imaging_core.plan.layout import Layout
    from fl_common.fingerprint_codec import MODALITIES
    n_values = DIGITS * sum(Layout(mod).size for mod in MODALITIES)
    try:
        mean, _ = secure.aggregate(1, survivors, ok2, n_values)
    except Exception as e:  # RoundFailed: one line, the run does not start
        raise PlanError("plan", f"the secure fingerprint sum failed: {e}") from None
    return decode_sum(mean, len(secure.last.survivors), secure.clip_range), replies


def run_fingerprint_stage(stage, nodes, record, secure=None, timeout: float = 600.0, strict: bool = False,
                          memory_gb: float | None = None, base_channels: int | None = None,
                          memory_source: str = "run spec") -> dict:
    """The query, the harmonisation check and (with ``memory_gb``) the plan, into ``record``."""
    total, replies = fingerprint_sum(stage, nodes, record.info["run_id"], secure, timeout)
    checked = {s: check_reply(s, replies[s]) for s in sorted(replies)}  # table rows by site name
    blocks = split_federation_vector(total)
    pooled = {}
    for mod in sorted({r["modality"] for r in checked.values()}):
        mine = {s: r for s, r in checked.items() if r["modality"] == mod}
        pooled[mod] = pooled_from_sum(mod, blocks[mod], mine)
        counts = [r["summary"]["cases"] for r in mine.values()]
        if None not in counts and pooled[mod].num_cases != sum(counts):
            raise PlanError("plan", f"the summed {mod} fingerprint counts {pooled[mod].num_cases} cases, the "
                                    "sites' summaries another number: a site's vector and summary disagree")
    harm = check({s: r["summary"] for s, r in checked.items()})
    harm["categorical"] = {m: p.categorical for m, p in pooled.items()}
    record.save_harmonisation(harm)
    log.info("harmonisation check:\n%s", harm["text"])
    if memory_gb:
        plan = make_plan(pooled, memory_bytes=int(memory_gb * 2 ** 30), base_channels=base_channels)
        record.save_plan({**plan, "memory_gb": memory_gb, "memory_gb_source": memory_source})
    if strict:
        check({s: r["summary"] for s, r in checked.items()}, strict=True)
    return harm
