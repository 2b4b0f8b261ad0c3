"""Flower app for bench/bench_secagg_rounds.py (no training; the sites are numpy only).

The bench copies this module into two app directories it writes at run time:
  fvbench-rounds      serverapp = server,        clientapp = client
                      the product's round loop (fl_server.round_loop.RoundLoop)
                      over a synthetic model of P values, no central evaluation:
                      (a) PlainAggregation and (b) SecureAggregation
                      (setup S1/S2 once first)
  fvbench-secaggplus  serverapp = legacy_server, clientapp = legacy_client
                      (c) Flower's SecAgg+ on the legacy API
                      (DefaultWorkflow + SecAggPlusWorkflow, NumPyClient + secaggplus_mod)

Each site's "update" for round r is a seeded random float32 vector of P values
(site, r, P) and a fixed weight, so the server can recompute the exact weighted
mean afterwards (outside the timed part) and check the aggregate.

All three modes pull every `poll` s (Flower's Grid.send_and_receive sleeps 3 s
between pulls): (a)/(b) through the product's Stage, (c) through `TimedGrid`,
which puts the same pull loop under Grid.send_and_receive. Both log per stage:
message type, wall time, and per-node request/reply payload bytes.
Results go to the JSON file named by run-config `out-file`.
"""
from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from flwr.serverapp import Grid, ServerApp

from fl_common import keys as K
from fl_common.tensors import from_record

server = ServerApp()
client = ClientApp()
legacy_server = ServerApp()

SCALE = 0.05  # |values| stay far inside both protocols' clip ranges (4 and 8)


# ---------------------------------------------------------------- shared helpers
def site_weight(site: str) -> int:
    digits = "".join(ch for ch in site if ch.isdigit())
    return 10 * (int(digits) if digits else 1)


def site_update(site: str, rnd: int, n: int) -> np.ndarray:
    seed = int.from_bytes(hashlib.sha256(f"{site}/{rnd}/{n}".encode()).digest()[:8], "little")
    v = np.random.default_rng(seed).standard_normal(n, dtype=np.float32)
    v *= np.float32(SCALE)
    return v


def exact_mean(sites, rnd: int, n: int) -> np.ndarray:
    num = np.zeros(n, np.float64)
    tot = 0.0
    for s in sites:
        w = site_weight(s)
        num += w * site_update(s, rnd, n).astype(np.float64)
        tot += w
    return num / tot


def _value_bytes(v) -> int:
    if isinstance(v, (bytes, bytearray)):
        return len(v)
    if isinstance(v, str):
        return len(v.encode())
    if isinstance(v, bool):
        return 1
    if isinstance(v, (int, float)):
        return 8
    if isinstance(v, (list, tuple)):
        return sum(_value_bytes(x) for x in v)
    return 0


def payload_bytes(rd: RecordDict) -> int:
    """Array data + config values + metric values (8 bytes a number) of a message."""
    n = 0
    for rec in rd.array_records.values():
        for a in rec.values():
            n += len(a.data)
    for rec in rd.config_records.values():
        for v in rec.values():
            n += _value_bytes(v)
    for rec in rd.metric_records.values():
        for v in rec.values():
            n += _value_bytes(v)
    return n


def _timed_stage(log: list, gather, messages: list):
    """Run ``gather(messages)`` (one push and its pulls) and log type, wall time and bytes."""
    down = {m.metadata.dst_node_id: payload_bytes(m.content) for m in messages}
    mtype = messages[0].metadata.message_type if messages else "?"
    t0 = time.perf_counter()
    got = gather(messages)
    t1 = time.perf_counter()
    up = {m.metadata.src_node_id: (payload_bytes(m.content) if m.has_content() else 0) for m in got}
    log.append({"type": mtype, "t0": t0, "t1": t1, "seconds": t1 - t0, "down": down, "up": up,
                "errors": [m.error.reason for m in got if m.has_error()], "missing": len(messages) - len(got)})
    return got


class TimedGrid:
    """(c) A Grid whose send_and_receive is the server's pull loop, timed; the rest is delegated."""

    def __init__(self, grid: Grid, poll: float):
        self._grid, self.poll, self.log = grid, poll, []

    def __getattr__(self, name):
        return getattr(self._grid, name)

    def send_and_receive(self, messages, *, timeout: float | None = None):
        from fl_server.exchange import send_and_gather  # the server's own pull loop
        return _timed_stage(self.log, lambda ms: send_and_gather(
            self._grid, ms, 1e9 if timeout is None else timeout, self.poll), list(messages))


def _timed_stage_class():
    from fl_server.exchange import Stage

    class TimedStage(Stage):
        """(a)/(b) The product's Stage, every push-and-pull timed and sized."""

        def __init__(self, grid, poll: float):
            super().__init__(grid, poll)
            self.log = []

        def gather(self, messages, timeout, on_reply=None, sent=None):
            return _timed_stage(self.log, lambda ms: super(TimedStage, self).gather(ms, timeout, on_reply, sent),
                                list(messages))
    return TimedStage


def _timed_optimizer():
    from fl_server.strategy import ServerOptimizer

    class TimedFedAvg(ServerOptimizer):
        """FedAvg that notes the mean delta it applied and when the new model was formed."""

        def step(self, weights, mean_delta):
            out = super().step(weights, mean_delta)
            self.mean, self.t_done = np.array(mean_delta), time.perf_counter()
            return out
    return TimedFedAvg("fedavg")


def _per_site(entries) -> dict:
    """Mean over nodes of (request bytes, reply bytes) summed over the given stages."""
    down, up = {}, {}
    for e in entries:
        for k, v in e["down"].items():
            down[k] = down.get(k, 0) + v
        for k, v in e["up"].items():
            up[k] = up.get(k, 0) + v
    nodes = sorted(set(down) | set(up))
    d = float(np.mean([down.get(k, 0) for k in nodes])) if nodes else 0.0
    u = float(np.mean([up.get(k, 0) for k in nodes])) if nodes else 0.0
    return {"down": d, "up": u, "total": d + u}


# ------------------------------------------------- (a)/(b) fedvox's own round loop
@server.main()
def main(grid: Grid, context: Context) -> None:
    """The product's RoundLoop over a synthetic model of P values and no central
    evaluation: PlainAggregation (a) and SecureAggregation (b), alternating."""
    from fl_server.aggregation import PlainAggregation
    from fl_server.records import RunRecord, write_json  # server side only: the ClientApp imports stay as measured
    from fl_server.round_loop import RoundLoop, RoundSettings
    from fl_server.secure import SecureAggregation

    cfg = context.run_config
    out = Path(str(cfg["out-file"]))
    sizes = [int(x) for x in str(cfg["sizes"]).split(",") if x]
    rounds, n_nodes = int(cfg["rounds"]), int(cfg["min-nodes"])
    timeout = float(cfg["stage-timeout"])
    stage = _timed_stage_class()(grid, float(cfg["poll"]))
    rec = {"status": "started", "setup": None, "rounds": []}
    write_json(out, rec)
    nodes = stage.wait_for_nodes(n_nodes, float(cfg["wait-nodes-timeout"]), every=0.5)
    session = f"bench-{context.run_id}"
    secure = SecureAggregation(json.loads(Path(str(cfg["roster"])).read_text()), lambda: session,
                               clip_range=4.0, max_weight=1000.0, setup_timeout=timeout)

    # setup S1 + S2, once
    t0 = time.perf_counter()
    secure.setup(stage, nodes)
    rec["setup"] = {"seconds": time.perf_counter() - t0, "eligible": secure.proto.eligible_sites(),
                    "threshold": secure.threshold,
                    "stages": [{"type": e["type"], "seconds": e["seconds"]} for e in stage.log],
                    "bytes_per_site": _per_site(stage.log)}
    write_json(out, rec)

    rnd = 0
    for n in sizes:
        loops = {}
        for mode, agg in (("plain", PlainAggregation()), ("masked", secure)):
            record = RunRecord(out.parent / f"{out.stem}-record-{mode}-{n}")
            record.start({"run_id": session})
            settings = RoundSettings(rounds=rounds, min_sites=n_nodes, train_timeout=timeout, eval_timeout=timeout,
                                     site_round={"num-params": n, "mode": mode})
            loops[mode] = RoundLoop(grid, record, agg, _timed_optimizer(), {"w": np.zeros(n, np.float32)},
                                    settings, stage=stage)
        for rep in range(rounds):
            for mode in (("plain", "masked") if rep % 2 == 0 else ("masked", "plain")):
                rnd += 1
                loop, n_log = loops[mode], len(stage.log)
                t0 = time.perf_counter()
                row = loop.run_round(rnd, nodes)
                if row["status"] != "ok" or row["n_failures"]:
                    raise RuntimeError(f"round {rnd} ({mode}): {row.get('reason')} {row['failures']}")
                t1 = loop.opt.t_done
                train, ev = stage.log[n_log:n_log + 2]
                # correctness, outside the timed part
                ex = exact_mean([stage.site(nd) for nd in nodes], rnd, n)
                err = float(np.max(np.abs(loop.opt.mean.astype(np.float64) - ex)))
                site_s = {x["site"]: float(x["train/handler-seconds"]) for x in loop.record.sites
                          if x["round"] == rnd}
                rec["rounds"].append({
                    "round": rnd, "mode": mode, "params": n, "seconds": t1 - t0,
                    "train_stage_s": train["seconds"], "eval_stage_s": ev["seconds"],
                    "server_between_s": ev["t0"] - train["t1"], "server_aggregate_s": t1 - ev["t1"],
                    "site_train_handler_s": site_s, "bytes_per_site": _per_site([train, ev]),
                    "max_abs_err": err, "tolerance": float(secure.last.tolerance) if mode == "masked" else None})
                write_json(out, rec)
    rec["status"] = "done"
    write_json(out, rec)


# ---------------------------------------------- the sites of (a)/(b): fedvox's wire
def _secagg_reply(context: Context, payload: bytes) -> Message:
    return RecordDict({K.REC_SECAGG: ConfigRecord({K.SITE: _site(context), K.PAYLOAD: payload})})


@client.query(K.SECAGG_ADVERTISE)
def advertise(msg: Message, context: Context) -> Message:
    session = str(msg.content.config_records[K.REC_SECAGG][K.SESSION])
    return Message(_secagg_reply(context, _site_secagg(context, session).advertise()), reply_to=msg)


@client.query(K.SECAGG_SHARE)
def share(msg: Message, context: Context) -> Message:
    rec = msg.content.config_records[K.REC_SECAGG]
    payload = _site_secagg(context, str(rec[K.SESSION])).receive_roster_and_share(bytes(rec[K.PAYLOAD]))
    return Message(_secagg_reply(context, payload), reply_to=msg)


def _site(context: Context) -> str:
    return str(context.node_config[K.NODE_SITE_NAME])


def _site_secagg(context: Context, session: str):
    from fl_client.secagg import SiteSecAgg
    roster = json.loads(Path(str(context.node_config[K.NODE_ROSTER])).read_text())
    state = Path(str(context.node_config[K.NODE_STATE_DIR])) / "secagg" / session
    return SiteSecAgg(_site(context), session, str(context.node_config[K.NODE_AUTH_KEY]), roster, state)


@client.train()
def train(msg: Message, context: Context) -> Message:
    t0 = time.perf_counter()
    cfg = msg.content.config_records[K.REC_CONFIG]
    rnd, n, site = int(cfg[K.SERVER_ROUND]), int(cfg["num-params"]), _site(context)
    arrays = from_record(msg.content.array_records[K.REC_ARRAYS])  # decode, as client_app
    delta, weight = site_update(site, rnd, n), float(site_weight(site))
    sec = msg.content.config_records.get(K.REC_SECAGG)
    if sec is None:
        content = RecordDict({K.REC_DELTA: ArrayRecord({K.FLAT: Array(delta)})})
        metrics = {K.NUM_EXAMPLES: weight}
    else:
        from fl_common.secagg.checks import received
        # as client_app: the site hashes what it received (timed: it is part of the cost)
        got = received(arrays, dict(cfg), str(cfg[K.RUN_ID]), rnd)
        up = _site_secagg(context, str(sec[K.SESSION])).mask(rnd, delta, weight, bytes(sec[K.PAYLOAD]),
                                                             received=got)
        content = RecordDict({K.REC_MASKED: ArrayRecord({K.VECTOR: Array(up.vector)}),
                              K.REC_SECAGG: ConfigRecord({K.PAYLOAD: up.payload})})
        metrics = {}
    metrics["handler-seconds"] = time.perf_counter() - t0
    content[K.REC_METRICS] = MetricRecord(metrics)
    content[K.REC_INFO] = ConfigRecord({K.SITE: site})
    return Message(content, reply_to=msg)


@client.evaluate()
def evaluate(msg: Message, context: Context) -> Message:
    cfg = msg.content.config_records[K.REC_CONFIG]
    rnd, site = int(cfg[K.SERVER_ROUND]), _site(context)
    _w = from_record(msg.content.array_records[K.REC_ARRAYS])["w"]
    content = RecordDict({K.REC_METRICS: MetricRecord({"loss": 0.0, K.NUM_EXAMPLES: float(site_weight(site))}),
                          K.REC_INFO: ConfigRecord({K.SITE: site})})
    sec = msg.content.config_records.get(K.REC_SECAGG)
    if sec is not None:
        content[K.REC_SECAGG] = ConfigRecord({K.PAYLOAD: _site_secagg(
            context, str(sec[K.SESSION])).reveal(rnd, bytes(sec[K.PAYLOAD]))})
    return Message(content, reply_to=msg)


# ------------------------------------------------------- (c) Flower SecAgg+ (legacy)
@legacy_server.main()
def legacy_main(grid: Grid, context: Context) -> None:
    from flwr.common import ndarrays_to_parameters
    from flwr.server import ServerConfig
    from flwr.server.compat import LegacyContext
    from flwr.server.strategy import FedAvg
    from flwr.server.workflow import DefaultWorkflow, SecAggPlusWorkflow
    from flwr.server.workflow.constant import MAIN_PARAMS_RECORD

    cfg = context.run_config
    from fl_server.records import write_json  # server side only: the ClientApp imports stay as measured
    out = Path(str(cfg["out-file"]))
    sizes = [int(x) for x in str(cfg["sizes"]).split(",") if x]
    rounds, n_nodes = int(cfg["rounds"]), int(cfg["min-nodes"])
    g = TimedGrid(grid, float(cfg["poll"]))
    rec = {"status": "started", "rounds": [], "sizes": []}
    write_json(out, rec)
    from fl_server.exchange import Stage
    nodes = Stage(grid).wait_for_nodes(n_nodes, float(cfg["wait-nodes-timeout"]), every=0.5)
    for n in sizes:
        def fit_cfg(r, n=n):
            return {"server_round": r, "num_params": n}
        strategy = FedAvg(fraction_fit=1.0, fraction_evaluate=1.0, min_fit_clients=n_nodes,
                          min_evaluate_clients=n_nodes, min_available_clients=n_nodes,
                          initial_parameters=ndarrays_to_parameters([np.zeros(n, np.float32)]),
                          on_fit_config_fn=fit_cfg, on_evaluate_config_fn=fit_cfg)
        lctx = LegacyContext(context=context, config=ServerConfig(num_rounds=rounds),
                             strategy=strategy)
        workflow = DefaultWorkflow(fit_workflow=SecAggPlusWorkflow(
            num_shares=len(nodes), reconstruction_threshold=int(cfg["threshold"]),
            timeout=float(cfg["stage-timeout"])))
        n_log = len(g.log)
        t0 = time.perf_counter()
        workflow(g, lctx)
        total = time.perf_counter() - t0
        entries = g.log[n_log:]
        # a round = the fit stages (4 SecAgg+ stages) + the evaluate stage that closes it
        cur, rs = [], []
        for e in entries:
            cur.append(e)
            if e["type"].startswith("evaluate"):
                rs.append(cur)
                cur = []
        for i, st in enumerate(rs, start=1):
            rec["rounds"].append({
                "round": i, "mode": "secaggplus", "params": n,
                "seconds": st[-1]["t1"] - st[0]["t0"],
                "stages": [{"type": e["type"], "seconds": e["seconds"], "errors": e["errors"][:2]}
                           for e in st],
                "bytes_per_site": _per_site(st)})
        arr = lctx.state.array_records[MAIN_PARAMS_RECORD].to_numpy_ndarrays()[0]
        sites = [str(s) for s in cfg["site-names"].split(",")]
        err = float(np.max(np.abs(arr.astype(np.float64) - exact_mean(sites, rounds, n))))
        rec["sizes"].append({"params": n, "workflow_seconds": total, "rounds_found": len(rs),
                             "max_abs_err_last_round": err})
        write_json(out, rec)
    rec["status"] = "done"
    write_json(out, rec)


def _legacy_client_fn(context: Context):
    from flwr.client import NumPyClient

    site = _site(context)

    class BenchClient(NumPyClient):
        def fit(self, parameters, config):
            n = int(config["num_params"])
            return [site_update(site, int(config["server_round"]), n)], site_weight(site), {}

        def evaluate(self, parameters, config):
            return 0.0, site_weight(site), {}

    return BenchClient().to_client()


def _make_legacy_client():
    from flwr.client.mod import secaggplus_mod
    return ClientApp(client_fn=_legacy_client_fn, mods=[secaggplus_mod])


legacy_client = _make_legacy_client()
