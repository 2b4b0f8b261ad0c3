"""Flower app for bench/bench_secagg_rounds.py (numpy only, no torch, no training).

The bench copies this module into two app directories it writes at run time:
  fvbench-rounds      serverapp = server,        clientapp = client
                      fedvox-style rounds on the Message API, (a) unmasked and
                      (b) masked with fl_client.secagg (setup S1/S2 once first)
  fvbench-secaggplus  serverapp = legacy_server, clientapp = legacy_client
                      (c) Flower's SecAgg+ on the legacy API
                      (DefaultWorkflow + SecAggPlusWorkflow, NumPyClient + secaggplus_mod)

Each site's "update" for round r is a seeded random float32 vector of P values
(site, r, P) and a fixed weight, so the server can recompute the exact weighted
mean afterwards (outside the timed part) and check the aggregate.

All three modes go through `TimedGrid`, which replaces Grid.send_and_receive
(push, then pull every `poll` s; Flower's own sleeps 3 s between pulls) and logs
per stage: message type, wall time, and per-node request/reply payload bytes.
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


class TimedGrid:
    """A Grid whose send_and_receive logs time and bytes; everything else is delegated."""

    def __init__(self, grid: Grid, poll: float):
        self._grid, self.poll, self.log = grid, poll, []

    def __getattr__(self, name):
        return getattr(self._grid, name)

    def send_and_receive(self, messages, *, timeout: float | None = None, on_reply=None):
        from fl_server.exchange import send_and_gather  # the server's own pull loop
        messages = list(messages)
        down = {m.metadata.dst_node_id: payload_bytes(m.content) for m in messages}
        mtype = messages[0].metadata.message_type if messages else "?"
        t0 = time.perf_counter()
        n_sent = len(messages)
        got = send_and_gather(self._grid, messages, 1e9 if timeout is None else timeout, self.poll, on_reply)
        del messages
        t1 = time.perf_counter()
        up = {m.metadata.src_node_id: (payload_bytes(m.content) if m.has_content() else 0)
              for m in got}
        errors = [m.error.reason for m in got if m.has_error()]
        self.log.append({"type": mtype, "t0": t0, "t1": t1, "seconds": t1 - t0,
                         "down": down, "up": up, "errors": errors, "missing": n_sent - len(got)})
        return got


def _wait_nodes(grid, n: int, timeout: float) -> list[int]:
    deadline = time.monotonic() + timeout
    while True:
        nodes = sorted(grid.get_node_ids())
        if len(nodes) >= n:
            return nodes
        if time.monotonic() > deadline:
            raise RuntimeError(f"only {len(nodes)} of {n} nodes connected")
        time.sleep(0.5)


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


# ------------------------------------------------- (a)/(b) fedvox-style rounds
@server.main()
def main(grid: Grid, context: Context) -> None:
    from fl_server.secagg import ServerSecAgg
    from fl_server.strategy import weighted_mean

    cfg = context.run_config
    from fl_server.records import write_json  # server side only: the ClientApp imports stay as measured
    out = Path(str(cfg["out-file"]))
    sizes = [int(x) for x in str(cfg["sizes"]).split(",") if x]
    rounds, n_nodes = int(cfg["rounds"]), int(cfg["min-nodes"])
    timeout = float(cfg["stage-timeout"])
    g = TimedGrid(grid, float(cfg["poll"]))
    rec = {"status": "started", "setup": None, "rounds": []}
    write_json(out, rec)
    nodes = _wait_nodes(grid, n_nodes, float(cfg["wait-nodes-timeout"]))
    roster = json.loads(Path(str(cfg["roster"])).read_text())
    session = f"bench-{context.run_id}"
    node_site: dict[int, str] = {}
    site_node: dict[str, int] = {}

    def query(action, payloads):
        msgs = []
        for nd in nodes:
            c = {"session": session}
            if nd in payloads:
                c["payload"] = payloads[nd]
            msgs.append(Message(RecordDict({"secagg": ConfigRecord(c)}), dst_node_id=nd,
                                message_type=f"query.{action}"))
        res = {}
        for m in g.send_and_receive(msgs, timeout=timeout):
            if m.has_error():
                raise RuntimeError(f"{action}: node {m.metadata.src_node_id}: {m.error.reason}")
            r = m.content.config_records["secagg"]
            node_site[m.metadata.src_node_id] = str(r["site"])
            site_node[str(r["site"])] = m.metadata.src_node_id
            res[str(r["site"])] = bytes(r["payload"])
        return res

    # setup S1 + S2, once
    t0 = time.perf_counter()
    n_log = len(g.log)
    proto = ServerSecAgg(session, roster, clip_range=4.0, max_weight=1000.0)
    adverts = query("advertise", {})
    roster_msg = proto.collect_adverts(adverts)
    bundles = query("share", {nd: roster_msg for nd in nodes})
    eligible = proto.collect_share_bundles(bundles)
    rec["setup"] = {"seconds": time.perf_counter() - t0, "eligible": eligible,
                    "threshold": proto.threshold,
                    "stages": [{"type": e["type"], "seconds": e["seconds"]} for e in g.log[n_log:]],
                    "bytes_per_site": _per_site(g.log[n_log:])}
    write_json(out, rec)

    rnd = 0
    for n in sizes:
        w = np.zeros(n, np.float32)
        for rep in range(rounds):
            for mode in (("plain", "masked") if rep % 2 == 0 else ("masked", "plain")):
                rnd += 1
                n_log = len(g.log)
                t0 = time.perf_counter()
                base = {"server-round": rnd, "run-id": session, "num-params": n, "mode": mode}
                t_extra = {}
                if mode == "masked":
                    reqs = proto.train_requests(rnd, participants=[node_site[nd] for nd in nodes])
                    t_extra = {site_node[s]: p for s, p in reqs.items()}

                def msgs_for(kind, extra):
                    out_msgs = []
                    for nd in nodes:
                        content = RecordDict({"config": ConfigRecord(dict(base)),
                                              "arrays": ArrayRecord({"w": Array(w)})})
                        if nd in extra:
                            content["secagg"] = ConfigRecord({"payload": extra[nd],
                                                              "session": session})
                        out_msgs.append(Message(content, dst_node_id=nd, message_type=kind,
                                                group_id=str(rnd)))
                    return out_msgs

                site_s = {}

                def take(m):  # masked: check and sum each update as it lands, as the server does
                    if mode != "masked" or m.has_error():
                        return
                    s = node_site[m.metadata.src_node_id]
                    proto.collect_masked(rnd, {s: (m.content.array_records["masked"]["vector"].numpy(),
                                                   bytes(m.content.config_records["secagg"]["payload"]))})

                train = g.send_and_receive(msgs_for("train", t_extra), timeout=timeout, on_reply=take)
                t_train = time.perf_counter()
                bad = [m.error.reason for m in train if m.has_error()]
                if bad or len(train) != len(nodes):
                    raise RuntimeError(f"round {rnd} ({mode}) train: {len(train)} replies, {bad}")
                if mode == "plain":
                    deltas, weights = [], []
                    for m in train:
                        deltas.append(m.content.array_records["delta"]["flat"].numpy())
                        weights.append(float(m.content.metric_records["metrics"]["num-examples"]))
                        site_s[node_site[m.metadata.src_node_id]] = float(
                            m.content.metric_records["metrics"]["handler-seconds"])
                    e_extra = {}
                else:
                    for m in train:
                        site_s[node_site[m.metadata.src_node_id]] = float(
                            m.content.metric_records["metrics"]["handler-seconds"])
                    e_extra = {site_node[s]: p for s, p in proto.reveal_requests(rnd).items()}
                t_coll = time.perf_counter()
                ev = g.send_and_receive(msgs_for("evaluate", e_extra), timeout=timeout)
                t_eval = time.perf_counter()
                bad = [m.error.reason for m in ev if m.has_error()]
                if bad or len(ev) != len(nodes):
                    raise RuntimeError(f"round {rnd} ({mode}) evaluate: {len(ev)} replies, {bad}")
                if mode == "plain":
                    mean, tol = weighted_mean(deltas, weights), None
                else:
                    reveals = {node_site[m.metadata.src_node_id]:
                               bytes(m.content.config_records["secagg"]["payload"]) for m in ev}
                    res = proto.unmask(rnd, reveals)
                    mean, tol = np.asarray(res.mean, np.float32), float(res.tolerance)
                w += mean.astype(np.float32)
                t1 = time.perf_counter()
                # correctness, outside the timed part
                ex = exact_mean([node_site[nd] for nd in nodes], rnd, n)
                err = float(np.max(np.abs(mean.astype(np.float64) - ex)))
                stages = g.log[n_log:]
                rec["rounds"].append({
                    "round": rnd, "mode": mode, "params": n, "seconds": t1 - t0,
                    "train_stage_s": stages[0]["seconds"], "eval_stage_s": stages[1]["seconds"],
                    "server_between_s": t_coll - t_train, "server_aggregate_s": t1 - t_eval,
                    "site_train_handler_s": site_s,
                    "bytes_per_site": _per_site(stages), "max_abs_err": err, "tolerance": tol})
                write_json(out, rec)
                del train, ev
    rec["status"] = "done"
    write_json(out, rec)


def _handler_start():
    return time.perf_counter()


@client.query("advertise")
def advertise(msg: Message, context: Context) -> Message:
    session = str(msg.content.config_records["secagg"]["session"])
    payload = _site_secagg(context, session).advertise()
    return Message(RecordDict({"secagg": ConfigRecord({"site": _site(context),
                                                       "payload": payload})}), reply_to=msg)


@client.query("share")
def share(msg: Message, context: Context) -> Message:
    rec = msg.content.config_records["secagg"]
    payload = _site_secagg(context, str(rec["session"])).receive_roster_and_share(
        bytes(rec["payload"]))
    return Message(RecordDict({"secagg": ConfigRecord({"site": _site(context),
                                                       "payload": payload})}), reply_to=msg)


def _site(context: Context) -> str:
    return str(context.node_config["site-name"])


def _site_secagg(context: Context, session: str):
    from fl_client.secagg import SiteSecAgg
    roster = json.loads(Path(str(context.node_config["roster"])).read_text())
    state = Path(str(context.node_config["state-dir"])) / "secagg" / session
    return SiteSecAgg(_site(context), session, str(context.node_config["auth-key"]), roster, state)


@client.train()
def train(msg: Message, context: Context) -> Message:
    t0 = time.perf_counter()
    cfg = msg.content.config_records["config"]
    rnd, n, site = int(cfg["server-round"]), int(cfg["num-params"]), _site(context)
    _w = msg.content.array_records["arrays"]["w"].numpy()  # the global model arrives (decode)
    delta, weight = site_update(site, rnd, n), float(site_weight(site))
    sec = msg.content.config_records.get("secagg")
    if sec is None:
        content = RecordDict({"delta": ArrayRecord({"flat": Array(delta)})})
        metrics = {"num-examples": weight}
    else:
        up = _site_secagg(context, str(sec["session"])).mask(rnd, delta, weight,
                                                             bytes(sec["payload"]))
        content = RecordDict({"masked": ArrayRecord({"vector": Array(up.vector)}),
                              "secagg": ConfigRecord({"payload": up.payload})})
        metrics = {"clipped": float(up.clipped)}
    metrics["handler-seconds"] = time.perf_counter() - t0
    content["metrics"] = MetricRecord(metrics)
    content["info"] = ConfigRecord({"site": site})
    return Message(content, reply_to=msg)


@client.evaluate()
def evaluate(msg: Message, context: Context) -> Message:
    cfg = msg.content.config_records["config"]
    rnd, site = int(cfg["server-round"]), _site(context)
    _w = msg.content.array_records["arrays"]["w"].numpy()
    content = RecordDict({"metrics": MetricRecord({"loss": 0.0,
                                                   "num-examples": float(site_weight(site))}),
                          "info": ConfigRecord({"site": site})})
    sec = msg.content.config_records.get("secagg")
    if sec is not None:
        content["secagg"] = ConfigRecord({"payload": _site_secagg(
            context, str(sec["session"])).reveal(rnd, bytes(sec["payload"]))})
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
    nodes = _wait_nodes(grid, n_nodes, float(cfg["wait-nodes-timeout"]))
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
