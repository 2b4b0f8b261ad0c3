"""Flower app for bench/bench_site_overhead.py: per-message site overhead.

One ClientApp, two ways to do the same trivial compute (load the global
weights into a tiny 3D conv net and run one forward pass on a small volume
read from a .npy file), chosen per message by config "mode":

  plain  what a ClientApp without a worker does on every message (Flower starts
         a new process per message): import torch, load the data, build the
         model, compute.
  shim   fedvox's way: this module imports no torch; it forwards the message to
         the long-lived site worker over its Unix socket
         (fl_client.worker_client), which already holds torch, the data and the
         model, and computes.

Every reply carries timestamps (wall clock, same machine as the server): the
ClientApp process start (from /proc), this module's import, handler entry and
exit, and the compute time measured around the compute itself (by the handler
in plain mode, by the worker in shim mode). The ServerApp pushes the messages,
pulls every `poll` s, and records when each was sent and when its reply came;
all of it goes to the run-config `out-file` as JSON.

Run as a script, this module is the site's ClientApp runner for the
benchmark's `--engine runner` (fl_client.runner's loop with this module's
ClientApp; the benchmark's FAB carries this file, so no FAB pin here):
    python bench/fvbench_overhead_app.py --runtime-api HOST:PORT ...
"""
from __future__ import annotations

import time

_T_MODULE0 = time.time()

import os  # noqa: E402

import numpy as np  # noqa: E402
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict  # noqa: E402
from flwr.clientapp import ClientApp  # noqa: E402
from flwr.serverapp import Grid, ServerApp  # noqa: E402

from fl_common import keys as K  # noqa: E402

server = ServerApp()
client = ClientApp()

CHANNELS = 4


def build_model(torch):
    """The tiny model both modes use (same seed, same shapes)."""
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Conv3d(1, CHANNELS, 3, padding=1), torch.nn.ReLU(),
                               torch.nn.Conv3d(CHANNELS, 2, 1))


def n_params() -> int:
    return (1 * CHANNELS * 27 + CHANNELS) + (CHANNELS * 2 + 2)


def compute(torch, model, x, flat: np.ndarray) -> dict:
    """Load the global weights, one forward pass; the timed part in both modes."""
    t0 = time.perf_counter()
    with torch.no_grad():
        torch.nn.utils.vector_to_parameters(torch.from_numpy(np.array(flat, np.float32)),
                                            model.parameters())
        y = model(x)
        out = float(y.mean())
    return {"compute_s": time.perf_counter() - t0, "out": out}


_T_MODULE1 = time.time()


# ------------------------------------------------------------------- site side
def _proc_start_epoch() -> float:
    """When this process started (wall clock), from /proc/self/stat (10 ms ticks)."""
    with open("/proc/self/stat") as f:
        rest = f.read().rsplit(")", 1)[1].split()
    start_ticks = int(rest[19])  # field 22 overall
    since_boot = time.clock_gettime(time.CLOCK_BOOTTIME)
    return time.time() - (since_boot - start_ticks / os.sysconf("SC_CLK_TCK"))


def _handle(msg: Message, context: Context) -> Message:
    t_h0 = time.time()
    cfg = msg.content.config_records[K.REC_CONFIG]
    mode = str(cfg["mode"])
    flat = msg.content.array_records[K.REC_ARRAYS]["w"].numpy()
    extra = {}
    if mode == "plain":
        t = time.perf_counter()
        import torch
        torch.set_num_threads(1)
        extra["torch_import_s"] = time.perf_counter() - t
        t = time.perf_counter()
        x = torch.from_numpy(np.load(str(context.node_config["data-npy"])))
        extra["data_load_s"] = time.perf_counter() - t
        t = time.perf_counter()
        model = build_model(torch)
        model.eval()
        extra["model_build_s"] = time.perf_counter() - t
        res = compute(torch, model, x, flat)
        compute_s = res["compute_s"]
    else:
        from fl_client.worker_client import WorkerClient
        t = time.perf_counter()
        with WorkerClient(str(context.node_config[K.NODE_WORKER_SOCKET]), timeout=60.0) as w:
            if msg.metadata.message_type.startswith(K.MSG_TRAIN):
                _delta, _n, metrics = w.train(str(cfg[K.RUN_ID]), int(cfg[K.SERVER_ROUND]),
                                              {"w": flat}, {"kind": K.MSG_TRAIN})
            else:
                metrics, _n = w.evaluate(str(cfg[K.RUN_ID]), int(cfg[K.SERVER_ROUND]),
                                         {"w": flat}, {"kind": K.MSG_EVALUATE})
        extra["rpc_s"] = time.perf_counter() - t
        compute_s = float(metrics["compute_s"])
    t_h1 = time.time()
    m = {"compute_s": compute_s, "proc_start": _proc_start_epoch(),
         "module_t0": _T_MODULE0, "module_t1": _T_MODULE1,
         "handler_t0": t_h0, "handler_t1": t_h1, "torch_loaded": float("torch" in __import__("sys").modules),
         **extra}
    return Message(RecordDict({K.REC_METRICS: MetricRecord(m),
                               K.REC_INFO: ConfigRecord({K.SITE: str(context.node_config[K.NODE_SITE_NAME]),
                                                         "mode": mode})}), reply_to=msg)


@client.train()
def train(msg: Message, context: Context) -> Message:
    return _handle(msg, context)


@client.evaluate()
def evaluate(msg: Message, context: Context) -> Message:
    return _handle(msg, context)


# ----------------------------------------------------------------- server side
@server.main()
def main(grid: Grid, context: Context) -> None:
    cfg = context.run_config
    from pathlib import Path

    from fl_server.records import write_json  # server side only: the ClientApp imports stay as measured
    out = Path(str(cfg["out-file"]))
    n_nodes, rounds, poll = int(cfg["min-nodes"]), int(cfg["rounds"]), float(cfg["poll"])
    timeout = float(cfg["stage-timeout"])
    rec = {"status": "started", "rounds": []}
    deadline = time.monotonic() + float(cfg["wait-nodes-timeout"])
    nodes = sorted(grid.get_node_ids())
    while len(nodes) < n_nodes:
        if time.monotonic() > deadline:
            raise RuntimeError(f"only {len(nodes)} of {n_nodes} nodes")
        time.sleep(0.5)
        nodes = sorted(grid.get_node_ids())
    w = np.random.default_rng(0).standard_normal(n_params()).astype(np.float32) * 0.1
    modes = []
    for i in range(rounds):  # warm-up pair first, then alternate the order
        modes += ["plain", "shim"] if i % 2 == 0 else ["shim", "plain"]
    for rnd, mode in enumerate(modes, start=1):
        row = {"round": rnd, "mode": mode, "warmup": rnd <= 2, "stages": []}
        t_round0 = time.time()
        for kind in (K.MSG_TRAIN, K.MSG_EVALUATE):
            msgs = [Message(RecordDict({K.REC_ARRAYS: ArrayRecord({"w": Array(w)}),
                                        K.REC_CONFIG: ConfigRecord({"mode": mode, K.SERVER_ROUND: rnd,
                                                                    K.RUN_ID: str(context.run_id)})}),
                            dst_node_id=nd, message_type=kind, group_id=str(rnd)) for nd in nodes]
            t_sent = time.time()
            ids = {i for i in grid.push_messages(msgs) if i}
            t_pushed = time.time()
            recv = {}
            end = time.time() + timeout
            while ids and time.time() < end:
                got = list(grid.pull_messages(ids))
                t = time.time()
                for m in got:
                    recv[m.metadata.reply_to_message_id] = (t, m)
                ids.difference_update({m.metadata.reply_to_message_id for m in got})
                if ids:
                    time.sleep(poll)
            if ids:
                raise RuntimeError(f"round {rnd} {kind}: {len(ids)} replies missing")
            msgs_out = []
            for t_recv, m in recv.values():
                if m.has_error():
                    raise RuntimeError(f"round {rnd} {kind} ({mode}): {m.error.reason}")
                met = dict(m.content.metric_records[K.REC_METRICS])
                msgs_out.append({"site": str(m.content.config_records[K.REC_INFO][K.SITE]),
                                 "t_sent": t_sent, "t_pushed": t_pushed, "t_recv": t_recv, **met})
            row["stages"].append({"kind": kind, "t_sent": t_sent,
                                  "t_done": max(x["t_recv"] for x in msgs_out), "msgs": msgs_out})
        row["seconds"] = time.time() - t_round0
        rec["rounds"].append(row)
        write_json(out, rec)
    rec["status"] = "done"
    write_json(out, rec)




if __name__ == "__main__":  # the benchmark's long-lived runner (see the module docstring)
    import sys
    from pathlib import Path
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from fl_client.runner import main as runner_main
    sys.exit(runner_main(sys.argv[1:], app=client, check=lambda content, hash_str: None))
