"""The Flower ClientApp: a thin shim in front of the site worker.

Flower starts a new ClientApp process for every message, so this module
imports no torch and holds no state in memory: it reads the site's settings
from the SuperNode's node-config, forwards the round's work to the worker
over its Unix socket, masks the delta when secure aggregation is on (state on
disk under `state-dir`), and replies with the (masked) delta and scalar
metrics only. No image, label or header ever passes through here.

node-config keys (fl_common.keys.NODE_*): worker-socket, site-name, and for
secure aggregation auth-key (the enrollment key), roster (roster.json) and
state-dir. With `audit-dir` set, every reply's records are described (names,
types, dtypes, sizes) in a JSON line there (keys.AUDIT_FILE), so a test or an
auditor can check what leaves.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from fl_common import keys as K
from fl_common.tensors import flatten

from .worker_client import WorkerClient

app = ClientApp()


def describe_reply(content: RecordDict) -> dict:
    """What a reply carries, record by record (no values except metric names)."""
    out = {}
    for name, rec in content.array_records.items():
        out[name] = {"kind": "array", "arrays": {k: {"dtype": str(a.dtype), "shape": list(a.shape)}
                                                 for k, a in rec.items()}}
    for name, rec in content.metric_records.items():
        out[name] = {"kind": "metric", "values": {k: type(v).__name__ for k, v in rec.items()}}
    for name, rec in content.config_records.items():
        out[name] = {"kind": "config", "values": {k: type(v).__name__ for k, v in rec.items()}}
    return out


def _reply(msg: Message, content: RecordDict, context: Context) -> Message:
    audit = context.node_config.get(K.NODE_AUDIT_DIR)
    if audit:
        import os
        import time
        os.makedirs(str(audit), exist_ok=True)
        line = {"message_type": msg.metadata.message_type, "time": time.time(),
                "records": describe_reply(content)}
        with open(os.path.join(str(audit), K.AUDIT_FILE), "a") as f:
            f.write(json.dumps(line) + "\n")
    return Message(content, reply_to=msg)


def _node(context: Context, key: str) -> str:
    v = context.node_config.get(key)
    if not v:
        raise RuntimeError(f"node-config has no {key!r}: start the site with `fedvox site`, which sets it")
    return str(v)


def _worker(context: Context) -> WorkerClient:
    return WorkerClient(_node(context, K.NODE_WORKER_SOCKET))


def _secagg(context: Context, session: str):
    from .secagg import SiteSecAgg
    roster = json.loads(Path(_node(context, K.NODE_ROSTER)).read_text())
    state = Path(_node(context, K.NODE_STATE_DIR)) / "secagg" / session.replace("/", "_")
    # the pin comes from the site's own trust.toml (fl_client.site), never from the coordinator
    return SiteSecAgg(_node(context, K.NODE_SITE_NAME), session, _node(context, K.NODE_AUTH_KEY), roster, state,
                      roster_fingerprint=_node(context, K.NODE_ROSTER_FINGERPRINT))


def _arrays(msg: Message) -> dict[str, np.ndarray]:
    rec = msg.content.array_records[K.REC_ARRAYS]
    return {k: v.numpy() for k, v in rec.items()}


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
    """Secure aggregation S1: signed public keys for this session."""
    session = str(msg.content.config_records[K.REC_SECAGG][K.SESSION])
    payload = _secagg(context, session).advertise()
    return _reply(msg, RecordDict({K.REC_SECAGG: ConfigRecord({K.SITE: _node(context, K.NODE_SITE_NAME),
                                                               K.PAYLOAD: payload})}), context)


@app.query(K.SECAGG_SHARE)
def share(msg: Message, context: Context) -> Message:
    """Secure aggregation S2: encrypted Shamir shares of this site's mask key."""
    rec = msg.content.config_records[K.REC_SECAGG]
    payload = _secagg(context, str(rec[K.SESSION])).receive_roster_and_share(bytes(rec[K.PAYLOAD]))
    return _reply(msg, RecordDict({K.REC_SECAGG: ConfigRecord({K.SITE: _node(context, K.NODE_SITE_NAME),
                                                               K.PAYLOAD: payload})}), context)


def _in_background(fn, *args):
    """Run ``fn(*args)`` in a thread; the returned callable waits for its result
    (None if it raised: the caller then does the work itself and reports the error)."""
    import threading
    box: list = [None]

    def run():
        try:
            box[0] = fn(*args)
        except Exception:  # noqa: BLE001 - mask() redoes the step and raises it properly
            box[0] = None
    t = threading.Thread(target=run, name="fedvox-prepare-mask", daemon=True)
    t.start()

    def result():
        t.join()
        return box[0]
    return result


@app.train()
def train(msg: Message, context: Context) -> Message:
    cfg = _config(msg)
    rnd = int(cfg.get(K.SERVER_ROUND, 0))
    arrays = _arrays(msg)
    sec = msg.content.config_records.get(K.REC_SECAGG)
    prepared = None
    if sec is not None:
        # the masks do not depend on the update: sum them while the worker trains
        sa = _secagg(context, str(sec[K.SESSION]))
        prepared = _in_background(sa.prepare_mask, rnd, bytes(sec[K.PAYLOAD]),
                                  sum(int(np.asarray(a).size) for a in arrays.values()))
    with _worker(context) as w:
        delta, weight, metrics = w.train(str(cfg.get(K.RUN_ID, "")), rnd, arrays, cfg)
    flat = flatten(delta)
    if sec is None:
        content = RecordDict({K.REC_DELTA: ArrayRecord({K.FLAT: Array(flat)}),
                              K.REC_METRICS: metric_record({**metrics, K.NUM_EXAMPLES: weight})})
    else:
        # the weight and the delta leave the site only inside the masked vector
        up = sa.mask(rnd, flat, weight, bytes(sec[K.PAYLOAD]), prepared=prepared())
        content = RecordDict({K.REC_MASKED: ArrayRecord({K.VECTOR: Array(up.vector)}),
                              K.REC_SECAGG: ConfigRecord({K.PAYLOAD: up.payload}),
                              K.REC_METRICS: metric_record({**metrics, K.CLIPPED: up.clipped})})
    content[K.REC_INFO] = _info(context)
    return _reply(msg, content, context)


@app.evaluate()
def evaluate(msg: Message, context: Context) -> Message:
    cfg = _config(msg)
    rnd = int(cfg.get(K.SERVER_ROUND, 0))
    with _worker(context) as w:
        metrics, n = w.evaluate(str(cfg.get(K.RUN_ID, "")), rnd, _arrays(msg), cfg)
    content = RecordDict({K.REC_METRICS: metric_record({**metrics, K.NUM_EXAMPLES: n}),
                          K.REC_INFO: _info(context)})
    sec = msg.content.config_records.get(K.REC_SECAGG)
    if sec is not None:
        content[K.REC_SECAGG] = ConfigRecord(
            {K.PAYLOAD: _secagg(context, str(sec[K.SESSION])).reveal(rnd, bytes(sec[K.PAYLOAD]))})
    return _reply(msg, content, context)
