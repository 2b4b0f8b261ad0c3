"""The Flower ClientApp: a thin shim in front of the site worker.

Flower starts a new ClientApp process for every message, so this module
imports no torch and holds no state in memory: it reads the site's settings
from the SuperNode's node-config, forwards the round's work to the worker
over its Unix socket, masks the delta when secure aggregation is on (state on
disk under `state-dir`), and replies with the (masked) delta and scalar
metrics only. No image, label or header ever passes through here.

node-config keys (fl_common.keys.NODE_*): worker-socket, site-name, state-dir,
site-config (the site's own site.toml, whose [policy] every request is checked
against first: fl_client.policy), and for secure aggregation auth-key (the
enrollment key) and roster (roster.json). A refused or failed request is a
Flower error reply with a code and a fixed short reason (keys.ERR_*); the
details go to the site's own log (state-dir/policy.log). With `audit-dir` set,
every reply's records are described (names, types, dtypes, sizes) in a JSON
line there (keys.AUDIT_FILE), so a test or an auditor can check what leaves.
"""
from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Error, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from fl_common import keys as K
from fl_common.secagg.errors import SecAggError
from fl_common.tensors import PACKED, flatten, from_record, to_record

from . import policy as P
from .in_background import in_background
from .site_preprocess import admit as admit_preprocess
from .worker_client import WorkerClient, WorkerError

app = ClientApp()
log = logging.getLogger("fedvox.site")


def describe_reply(content: RecordDict) -> dict:
    """What a reply carries, record by record (no values except metric names)."""
    out = {}
    for name, rec in content.array_records.items():
        # a packed model is described tensor by tensor: what an auditor needs to see
        arrays = from_record(rec) if list(rec.keys()) == [PACKED] else {k: a for k, a in rec.items()}
        out[name] = {"kind": "array", "arrays": {k: {"dtype": str(a.dtype), "shape": list(a.shape)}
                                                 for k, a in arrays.items()}}
    for name, rec in content.metric_records.items():
        out[name] = {"kind": "metric", "values": {k: type(v).__name__ for k, v in rec.items()}}
    for name, rec in content.config_records.items():
        out[name] = {"kind": "config", "values": {k: type(v).__name__ for k, v in rec.items()}}
    return out


def _audit(msg: Message, context: Context, line: dict) -> None:
    audit = context.node_config.get(K.NODE_AUDIT_DIR)
    if audit:
        os.makedirs(str(audit), exist_ok=True)
        line = {"message_type": msg.metadata.message_type, "time": time.time(), **line}
        with open(os.path.join(str(audit), K.AUDIT_FILE), "a") as f:
            f.write(json.dumps(line) + "\n")


def _reply(msg: Message, content: RecordDict, context: Context) -> Message:
    _audit(msg, context, {"records": describe_reply(content)})
    return Message(content, reply_to=msg)


# ----- the policy gate: every handler runs inside it ---------------------------
def _site_log(context: Context, line: dict) -> None:
    """The site's own record of refusals and failures (full details stay here)."""
    state = context.node_config.get(K.NODE_STATE_DIR)
    log.warning("%s", json.dumps(line))
    if state:
        os.makedirs(str(state), exist_ok=True)
        fd = os.open(os.path.join(str(state), "policy.log"), os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        with os.fdopen(fd, "a") as f:
            f.write(json.dumps(line) + "\n")


def _guarded(handler, msg: Message, context: Context) -> Message:
    """``handler(msg, context, policy)``; a refusal or any failure becomes an error
    reply with a code and a fixed reason, never an exception text or a crash."""
    try:
        return handler(msg, context, P.load_policy(context.node_config))
    except P.Refused as e:
        code, reason, detail = e.code, e.reason, e.reason
    except SecAggError as e:  # the protocol's refusals: only the kind leaves
        code, reason, detail = K.ERR_REFUSED, f"secure aggregation: {type(e).__name__}", str(e)
    except WorkerError as e:
        code, reason, detail = K.ERR_WORKER, P.WORKER_FAILED, str(e)
    except P.SiteFault as e:
        code, reason, detail = K.ERR_INTERNAL, P.INTERNAL, str(e)
    except (KeyError, TypeError, ValueError) as e:
        code, reason, detail = K.ERR_BAD_REQUEST, P.BAD_REQUEST, f"{type(e).__name__}: {e}"
    except Exception as e:  # noqa: BLE001 - the site stays up and says only that it failed
        code, reason, detail = K.ERR_INTERNAL, P.INTERNAL, f"{type(e).__name__}: {e}"
    _site_log(context, {"time": time.time(), "message_type": msg.metadata.message_type,
                        "refused" if code == K.ERR_REFUSED else "failed": detail, "code": code})
    _audit(msg, context, {"error": {"code": code, "reason": reason}, "records": {}})
    return Message(Error(code, reason), reply_to=msg)


def _admit_train(msg: Message, context: Context, pol) -> None:
    admit_preprocess(pol, _node(context, K.NODE_WORKER_SOCKET), _config(msg))  # first: it records nothing
    P.admit_train(pol, _node(context, K.NODE_STATE_DIR), _config(msg), _arrays(msg),
                  secure=K.REC_SECAGG in msg.content.config_records)


def _admit_evaluate(msg: Message, context: Context, pol) -> None:
    admit_preprocess(pol, _node(context, K.NODE_WORKER_SOCKET), _config(msg))
    P.admit_evaluate(pol, _node(context, K.NODE_STATE_DIR), _config(msg), _arrays(msg))


def _val_metrics(pol, metrics: dict, n: float) -> dict:
    """Allow-listed validation metrics, none below the site's minimum of cases."""
    if n < pol.min_val_cases:
        return {}
    out = P.outgoing(pol, metrics)
    if P.case_counts_allowed(pol):
        out[K.NUM_EXAMPLES] = n
    return out


def _node(context: Context, key: str) -> str:
    v = context.node_config.get(key)
    if not v:
        raise RuntimeError(f"node-config has no {key!r}: start the site with `fedvox site`, which sets it")
    return str(v)


def _worker(context: Context) -> WorkerClient:
    return WorkerClient(_node(context, K.NODE_WORKER_SOCKET))


def _secagg(context: Context, session: str):
    from fl_common.secagg import DEFAULT_COLLUDING_SITES
    from .secagg import SiteSecAgg
    roster = json.loads(Path(_node(context, K.NODE_ROSTER)).read_text())
    # every session's state under one directory, which also holds the site-wide ledger
    state = Path(_node(context, K.NODE_STATE_DIR)) / "secagg" / session.replace("/", "_")
    # the site's own collusion bound (its policy, never the server's word); the
    # roster pin comes from the site's own trust.toml (fl_client.site), never from the coordinator
    colluding = int(context.node_config.get(K.NODE_COLLUDING_SITES, DEFAULT_COLLUDING_SITES))
    return SiteSecAgg(_node(context, K.NODE_SITE_NAME), session, _node(context, K.NODE_AUTH_KEY), roster, state,
                      colluding_sites=colluding, roster_fingerprint=_node(context, K.NODE_ROSTER_FINGERPRINT))


def _arrays(msg: Message, record: str = K.REC_ARRAYS) -> dict[str, np.ndarray]:
    return from_record(msg.content.array_records[record])


def _config(msg: Message) -> dict:
    cfg = msg.content.config_records.get(K.REC_CONFIG)
    return dict(cfg) if cfg is not None else {}


def metric_record(d: dict) -> MetricRecord:
    """Scalars only: anything else is dropped here, at the site boundary."""
    return MetricRecord({k: float(v) for k, v in d.items()
                         if isinstance(v, (int, float)) and not isinstance(v, bool)})


def _info(context: Context) -> ConfigRecord:
    return ConfigRecord({K.SITE: _node(context, K.NODE_SITE_NAME)})


@app.query(K.SECAGG_ADVERTISE)
def advertise(msg: Message, context: Context) -> Message:
    return _guarded(_advertise, msg, context)


@app.query(K.SECAGG_SHARE)
def share(msg: Message, context: Context) -> Message:
    return _guarded(_share, msg, context)


@app.query(K.PLAN_FINGERPRINT)
def fingerprint(msg: Message, context: Context) -> Message:
    return _guarded(_fingerprint, msg, context)


@app.query(K.PLAN_REVEAL)
def fingerprint_reveal(msg: Message, context: Context) -> Message:
    return _guarded(_fingerprint_reveal, msg, context)


@app.train()
def train(msg: Message, context: Context) -> Message:
    return _guarded(_train, msg, context)


@app.evaluate()
def evaluate(msg: Message, context: Context) -> Message:
    return _guarded(_evaluate, msg, context)


@app.evaluate(K.CROSS_SITE)
def cross_site(msg: Message, context: Context) -> Message:
    return _guarded(_cross_site, msg, context)


@app.query(K.LOCAL_MODEL)
def local_model(msg: Message, context: Context) -> Message:
    return _guarded(_local_model, msg, context)


def _advertise(msg: Message, context: Context, pol) -> Message:
    """Secure aggregation S1: signed public keys for this session."""
    session = str(msg.content.config_records[K.REC_SECAGG][K.SESSION])
    payload = _secagg(context, session).advertise()
    return _reply(msg, RecordDict({K.REC_SECAGG: ConfigRecord({K.SITE: _node(context, K.NODE_SITE_NAME),
                                                               K.PAYLOAD: payload})}), context)


def _share(msg: Message, context: Context, pol) -> Message:
    """Secure aggregation S2: encrypted Shamir shares of this site's mask key."""
    rec = msg.content.config_records[K.REC_SECAGG]
    payload = _secagg(context, str(rec[K.SESSION])).receive_roster_and_share(bytes(rec[K.PAYLOAD]))
    return _reply(msg, RecordDict({K.REC_SECAGG: ConfigRecord({K.SITE: _node(context, K.NODE_SITE_NAME),
                                                               K.PAYLOAD: payload})}), context)


def _fingerprint(msg: Message, context: Context, pol) -> Message:
    """The plan's query: summary + categorical counts in clear, the vector masked
    (in the federation's layout) with the round's secure-aggregation request. Once
    per run id (fl_client.policy.admit_fingerprint): the same request again gets the
    identical cached reply."""
    from fl_common.fingerprint_codec import encode_counts, federation_vector
    from .fingerprint import cached_content, content_to_cache, fingerprint_path, read_fingerprint
    sec = msg.content.config_records.get(K.REC_SECAGG)
    cfg = _config(msg)
    state = _node(context, K.NODE_STATE_DIR)
    request = P.request_digest(cfg, None if sec is None else dict(sec))
    cached = P.admit_fingerprint(pol, state, cfg, request, secure=sec is not None)
    if cached is not None:
        return _reply(msg, cached_content(cached, _info(context)), context)
    reply = read_fingerprint(fingerprint_path(_node(context, K.NODE_WORKER_SOCKET)))
    vector = federation_vector(reply["modality"], reply["vector"])
    if reply["summary"]["cases"] < 1:
        raise P.SiteFault("the site fingerprinted no case (every case skipped or unlabelled)")
    if not P.case_counts_allowed(pol):  # its case counts stay (they are inside the masked sum only)
        from imaging_core.plan.fingerprint import coarsen_categorical
        from imaging_core.plan.harmonise import hide_counts
        reply = {**reply, "summary": hide_counts(reply["summary"]),
                 "categorical": coarsen_categorical(reply["categorical"])}
    content = RecordDict({K.REC_INFO: _info(context)})
    if sec is None:
        side = {**reply, "vector": [int(v) for v in vector]}
    else:
        from .fingerprint import fingerprint_received
        sa = _secagg(context, str(sec[K.SESSION]))
        rnd = int(cfg.get(K.SERVER_ROUND, 0))
        clip, weight = sa.setup_bounds()
        # equal weights: the unmasked mean times the survivors is the exact sum
        up = sa.mask(rnd, encode_counts(vector, clip), weight, bytes(sec[K.PAYLOAD]),
                     received=fingerprint_received(cfg, rnd))
        content[K.REC_MASKED] = ArrayRecord({K.VECTOR: Array(up.vector)})
        content[K.REC_SECAGG] = ConfigRecord({K.PAYLOAD: up.payload})
        side = {**reply, "vector": None}
    content[K.REC_FINGERPRINT] = ConfigRecord({K.PAYLOAD: json.dumps(side).encode()})
    P.keep_fingerprint(pol, state, cfg, request, content_to_cache(content))
    return _reply(msg, content, context)


def _fingerprint_reveal(msg: Message, context: Context, pol) -> Message:
    cfg = _config(msg)
    sec = msg.content.config_records[K.REC_SECAGG]
    payload = _secagg(context, str(sec[K.SESSION])).reveal(int(cfg.get(K.SERVER_ROUND, 0)), bytes(sec[K.PAYLOAD]))
    return _reply(msg, RecordDict({K.REC_SECAGG: ConfigRecord({K.PAYLOAD: payload}),
                                   K.REC_INFO: _info(context)}), context)


def _train(msg: Message, context: Context, pol) -> Message:
    _admit_train(msg, context, pol)
    cfg = _config(msg)
    rnd = int(cfg.get(K.SERVER_ROUND, 0))
    arrays = _arrays(msg)
    sec = msg.content.config_records.get(K.REC_SECAGG)
    prepared = None
    if sec is not None:
        # the masks do not depend on the update: sum them while the worker trains
        sa = _secagg(context, str(sec[K.SESSION]))
        prepared = in_background(sa.prepare_mask, rnd, bytes(sec[K.PAYLOAD]),
                                  sum(int(np.asarray(a).size) for a in arrays.values()))
    with _worker(context) as w:
        delta, weight, metrics = w.train(str(cfg.get(K.RUN_ID, "")), rnd, arrays, cfg)
    metrics = P.outgoing(pol, metrics)
    flat = flatten(delta)
    if sec is None:
        content = RecordDict({K.REC_DELTA: ArrayRecord({K.FLAT: Array(flat)}),
                              K.REC_METRICS: metric_record({**metrics, K.NUM_EXAMPLES: weight})})
    else:
        from fl_common.secagg.checks import received
        from fl_common.secagg.quantize import COUNTS
        # the delta, the weight, the clip count and the counts that would reveal
        # the weight leave the site only inside the masked vector (summed there)
        counts = {c: int(metrics.pop(c, 0)) for c in COUNTS}
        got = received(arrays, cfg, str(cfg.get(K.RUN_ID, "")), rnd)
        up = sa.mask(rnd, flat, weight, bytes(sec[K.PAYLOAD]), prepared=prepared(), received=got, counts=counts)
        content = RecordDict({K.REC_MASKED: ArrayRecord({K.VECTOR: Array(up.vector)}),
                              K.REC_SECAGG: ConfigRecord({K.PAYLOAD: up.payload}),
                              K.REC_METRICS: metric_record(metrics)})
    content[K.REC_INFO] = _info(context)
    return _reply(msg, content, context)


def _evaluate(msg: Message, context: Context, pol) -> Message:
    _admit_evaluate(msg, context, pol)
    cfg = _config(msg)
    rnd = int(cfg.get(K.SERVER_ROUND, 0))
    with _worker(context) as w:
        metrics, n = w.evaluate(str(cfg.get(K.RUN_ID, "")), rnd, _arrays(msg), cfg)
    content = RecordDict({K.REC_METRICS: metric_record(_val_metrics(pol, metrics, n)),
                          K.REC_INFO: _info(context)})
    sec = msg.content.config_records.get(K.REC_SECAGG)
    if sec is not None:
        content[K.REC_SECAGG] = ConfigRecord(
            {K.PAYLOAD: _secagg(context, str(sec[K.SESSION])).reveal(rnd, bytes(sec[K.PAYLOAD]))})
    return _reply(msg, content, context)


def _cross_site(msg: Message, context: Context, pol) -> Message:
    """Other models on this site's validation cases, after the final evaluation: one
    (cross-model + arrays) or several in one message (cross-models + arrays.<i>: one
    ClientApp start for all). Each is admitted on its own (fl_client.policy.admit_cross_site:
    once per model, bounded per run); a batch answers the refused ones' reasons in
    ``refused`` and fails only when every model is refused."""
    cfg = _config(msg)
    batch = K.CROSS_MODELS in cfg
    base = {k: v for k, v in cfg.items() if k != K.CROSS_MODELS}
    if batch:
        models = [({**base, K.CROSS_MODEL: n}, _arrays(msg, K.batch_record(K.REC_ARRAYS, i)))
                  for i, n in enumerate(list(cfg[K.CROSS_MODELS]))]
    else:
        models = [(cfg, _arrays(msg))]
    admit_preprocess(pol, _node(context, K.NODE_WORKER_SOCKET), base)
    admitted, refused = [], {}
    for i, (c, arrays) in enumerate(models):
        try:
            admitted.append((i, P.admit_cross_site(pol, _node(context, K.NODE_STATE_DIR), c, arrays), c, arrays))
        except P.Refused as e:
            if not batch:
                raise
            refused[str(i)] = e.reason
    if not admitted:
        if not refused:
            raise ValueError("a cross-site request without a model")
        raise P.Refused(next(iter(refused.values())))
    content = RecordDict({K.REC_INFO: _info(context)})
    if refused:
        content[K.REC_REFUSED] = ConfigRecord(refused)
    secret = P.case_secret(_node(context, K.NODE_STATE_DIR), str(cfg[K.RUN_ID]))
    with _worker(context) as w:
        for i, rnd, c, arrays in admitted:
            metrics, n = w.evaluate(str(c[K.RUN_ID]), rnd, arrays, c)
            cases = metrics.pop("cases", {})
            content[_rec(K.REC_METRICS, i, batch)] = metric_record(_val_metrics(pol, metrics, n))
            per_case = P.outgoing_cases(pol, cases, secret) if n >= pol.min_val_cases else {}
            if per_case:
                content[_rec(K.REC_CASES, i, batch)] = MetricRecord(per_case)
    return _reply(msg, content, context)


def _rec(record: str, i: int, batch: bool) -> str:
    return K.batch_record(record, i) if batch else record


def _local_model(msg: Message, context: Context, pol) -> Message:
    """The local-only model's weights, only with the site's consent ([policy]
    share_local_model): the final one of this run's own training (never an earlier
    round, whatever the request names), once per run and each model once ever
    (fl_client.policy.claim_local_model). The coordinator sends them on to the other sites."""
    cfg = _config(msg)
    state = _node(context, K.NODE_STATE_DIR)
    rnd = P.admit_share_local(pol, state, cfg)
    with _worker(context) as w:
        weights = w.local_model(str(cfg[K.RUN_ID]), rnd)
    P.claim_local_model(state, str(cfg[K.RUN_ID]), weights)
    return _reply(msg, RecordDict({K.REC_ARRAYS: to_record(weights),
                                   K.REC_INFO: _info(context)}), context)
