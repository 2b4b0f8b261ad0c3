"""Numpy-only ServerApp/ClientApp: FedAvg over a 10-float vector.

Each client returns the weights it got + 1, so after round r the global
vector is all r. The ServerApp writes what it saw (per round: replies, sites,
mean) to the run-config path ``out-file`` as JSON, and both sides record
where their module was imported from (``__file__``, ``sys.path[:3]``) so the
test can check how the deployment engine finds an app's code.
"""
from __future__ import annotations

import json
import os
import sys
import time

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from flwr.serverapp import Grid, ServerApp

server = ServerApp()
client = ClientApp()


def _where() -> dict:
    return {"file": __file__, "sys_path": sys.path[:3], "cwd": os.getcwd(), "pid": os.getpid()}


def _write_json(path: str, obj: dict) -> None:
    tmp = f"{path}.tmp"
    with open(tmp, "w") as f:
        json.dump(obj, f, indent=1)
    os.replace(tmp, path)  # the test never reads a half-written file


@server.main()
def main(grid: Grid, context: Context) -> None:
    cfg = context.run_config
    out = str(cfg["out-file"])
    rounds, min_nodes = int(cfg["num-rounds"]), int(cfg["min-nodes"])
    record = {"status": "started", "where": _where(), "rounds": []}
    if out:
        _write_json(out, record)

    deadline = time.monotonic() + float(cfg["wait-nodes-timeout"])
    nodes = list(grid.get_node_ids())
    while len(nodes) < min_nodes and time.monotonic() < deadline:
        time.sleep(0.5)
        nodes = list(grid.get_node_ids())
    if len(nodes) < min_nodes:
        record["status"] = f"only {len(nodes)} of {min_nodes} nodes connected"
        if out:
            _write_json(out, record)
        raise RuntimeError(record["status"])

    w = np.zeros(10, dtype=np.float32)
    for rnd in range(1, rounds + 1):
        t0 = time.monotonic()
        msgs = [Message(RecordDict({"arrays": ArrayRecord([w]),
                                    "config": ConfigRecord({"round": rnd})}),
                        dst_node_id=n, message_type="train", group_id=str(rnd))
                for n in nodes]
        replies = list(grid.send_and_receive(msgs, timeout=float(cfg["stage-timeout"])))
        ok = [r for r in replies if r.has_content()]
        if len(ok) < min_nodes:
            record["status"] = f"round {rnd}: {len(ok)} replies, {len(replies) - len(ok)} errors"
            if out:
                _write_json(out, record)
            raise RuntimeError(record["status"])
        weights = np.array([r.content["metrics"]["num-examples"] for r in ok], dtype=np.float64)
        stack = np.stack([r.content["arrays"].to_numpy_ndarrays()[0] for r in ok])
        w = (weights[:, None] * stack).sum(0).astype(np.float32) / weights.sum()
        record["rounds"].append({
            "round": rnd, "replies": len(ok), "seconds": round(time.monotonic() - t0, 3),
            "sites": sorted(str(r.content["info"]["site"]) for r in ok),
            "client_where": [json.loads(str(r.content["info"]["where"])) for r in ok],
            "mean": float(w.mean()),
        })
        if out:
            _write_json(out, record)
    record["status"] = "done"
    record["final"] = w.tolist()
    if out:
        _write_json(out, record)


@client.train()
def train(msg: Message, context: Context) -> Message:
    w = msg.content["arrays"].to_numpy_ndarrays()[0]
    site = str(context.node_config.get("site", "?"))
    content = RecordDict({
        "arrays": ArrayRecord([w + 1.0]),
        "metrics": MetricRecord({"num-examples": 1}),
        "info": ConfigRecord({"site": site, "where": json.dumps(_where())}),
    })
    return Message(content, reply_to=msg)
