"""Per-message site overhead: fedvox's torch-free ClientApp shim + long-lived
site worker vs a plain ClientApp that imports torch and loads its data itself
(issue 5). Same Flower run, same SuperNodes, real processes on loopback
(SuperLink with TLS + SuperNode authentication).

The compute is trivial on purpose (load the global weights into a tiny 3D conv
net, one forward pass on a 1x1x32x32x32 volume from a .npy file), so what is
left is overhead. Each round is a train stage + an evaluate stage; rounds
alternate plain/shim (order swapped every other pair, the first pair is a
warm-up and not counted). Per message (all wall-clock, one machine):

  total overhead   = reply received at the server - message sent - compute
  site overhead    = ClientApp handler returns - ClientApp process start - compute
                     (the issue's "ClientApp start to reply, minus compute")
  ours             = our module import + handler time - compute
                     (plain: torch import + data load + model build;
                      shim: gRPC connect + (de)serialise + worker call)
  Flower           = total overhead - ours (message delivery, SuperNode poll,
                     process start, Python + flwr import, reply upload, pull)

The server pulls replies every --poll s (Flower's own send_and_receive sleeps
3 s between pulls; that would add 0-3 s per stage to both modes alike).

With --engine runner (what `fedvox site` runs) each SuperNode runs with
`--isolation process` and one long-lived runner process (fl_client.runner's
loop, this benchmark's ClientApp): "deliver"/"startup" then count from that
process's start and mean nothing; total_overhead and round_s compare. With
--engine flower, Flower's SuperExec starts one process per message.

    python bench/bench_site_overhead.py [--rounds 5] [--sites 1] [--poll 0.1] [--engine runner]

Last line: one JSON object (medians, ratios, round breakdown).
"""
from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from fl_common import keys as K  # noqa: E402
from fl_common.supervise import LaunchError, ProcessGroup  # noqa: E402
from fvbench_federation import make_app, run_app, start_federation  # noqa: E402

HERE = Path(__file__).resolve().parent
APP_MODULE = HERE / "fvbench_overhead_app.py"
WORKER = HERE / "fvbench_overhead_worker.py"
APP_CONFIG = {"out-file": "", "rounds": 5, "min-nodes": 1, "poll": 0.1, "stage-timeout": 120.0,
              "wait-nodes-timeout": 120.0}


def med(xs):
    return round(float(statistics.median(xs)), 4) if xs else None


def decompose(m: dict) -> dict:
    c = m["compute_s"]
    ours = (m["module_t1"] - m["module_t0"]) + (m["handler_t1"] - m["handler_t0"] - c)
    total = m["t_recv"] - m["t_sent"] - c
    return {"compute": c, "total_overhead": total,
            "site_overhead": m["handler_t1"] - m["proc_start"] - c,
            "ours": ours, "flower": total - ours,
            "deliver": m["proc_start"] - m["t_sent"],           # push, SuperNode poll, spawn
            "startup": m["handler_t0"] - m["proc_start"],        # python + flwr + app import
            "handler_noncompute": m["handler_t1"] - m["handler_t0"] - c,
            "return": m["t_recv"] - m["handler_t1"],             # reply upload + server pull
            **{k: m[k] for k in ("torch_import_s", "data_load_s", "model_build_s", "rpc_s")
               if k in m}}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=5, help="rounds per mode (the first is warm-up)")
    ap.add_argument("--sites", type=int, default=1)
    ap.add_argument("--poll", type=float, default=0.1)
    ap.add_argument("--run-timeout", type=float, default=900.0)
    ap.add_argument("--work", default=None)
    ap.add_argument("--engine", choices=("runner", "flower"), default="runner",
                    help="runner: one long-lived runner per site; flower: a process per message")
    a = ap.parse_args(argv)
    work = Path(a.work).absolute() if a.work else Path(tempfile.mkdtemp(prefix="fvbench-ovh-"))
    work.mkdir(parents=True, exist_ok=True)
    sites = [f"site-{i + 1}" for i in range(a.sites)]
    t_all = time.monotonic()
    with ProcessGroup("fvbench-overhead") as group:

        def start_worker(s: str, kit: Path, sw: Path) -> dict:
            """The site's worker first; its SuperNode's node config names the socket."""
            data = sw / "volume.npy"
            np.save(data, np.random.default_rng(1).standard_normal((1, 1, 32, 32, 32)).astype(np.float32))
            sock, ready = sw / "worker.sock", sw / "worker.ready"
            wp = group.start(f"worker-{s}", [sys.executable, WORKER, "--socket", sock, "--data",
                                             data, "--ready-file", ready, "--name", s],
                             sw / "worker.log")
            deadline = time.monotonic() + 120
            while not ready.exists():
                if not wp.alive() or time.monotonic() > deadline:
                    raise LaunchError(f"worker {s} not ready ({wp.returncode}):\n{wp.tail()}")
                time.sleep(0.2)
            return {K.NODE_SITE_NAME: s, K.NODE_WORKER_SOCKET: str(sock), "data-npy": str(data)}

        kw = {"runner": [sys.executable, str(APP_MODULE)]} if a.engine == "runner" else {}
        _, cli = start_federation(work, sites, group, start_worker, kw)
        app = make_app(work / "app-overhead", APP_MODULE, "fvbench-overhead",
                       "fedvox site-overhead benchmark app", "server", "client", APP_CONFIG)
        rec = run_app(app, cli, {"rounds": a.rounds, "min-nodes": len(sites), "poll": a.poll}, work,
                      "overhead", a.run_timeout)

    # ---- summary
    per_mode: dict[str, dict] = {}
    for mode in ("plain", "shim"):
        rows = [r for r in rec.get("rounds", []) if r["mode"] == mode and not r["warmup"]]
        msgs = [decompose(m) for r in rows for st in r["stages"] for m in st["msgs"]]
        if not msgs:
            continue
        keys = sorted({k for m in msgs for k in m})
        d = {k: med([m[k] for m in msgs if k in m]) for k in keys}
        # round breakdown: per stage the message on the critical path (last reply)
        rb = []
        for r in rows:
            comp = ours = 0.0
            for st in r["stages"]:
                last = max(st["msgs"], key=lambda m: m["t_recv"])
                dd = decompose(last)
                comp += dd["compute"]
                ours += dd["ours"]
            rb.append({"round_s": r["seconds"], "compute_s": comp, "ours_s": ours,
                       "flower_s": r["seconds"] - comp - ours})
        d["round"] = {k: med([x[k] for x in rb]) for k in rb[0]}
        d["messages"] = len(msgs)
        per_mode[mode] = d

    result = {"bench": "site_overhead", "engine": a.engine, "sites": len(sites), "rounds_per_mode": a.rounds,
              "warmup_rounds_per_mode": 1, "poll_s": a.poll, "tls": True, "node_auth": True,
              "status": rec.get("status"), "wall_s": round(time.monotonic() - t_all, 1),
              "median_per_message_s": per_mode}
    if "plain" in per_mode and "shim" in per_mode:
        p, s = per_mode["plain"], per_mode["shim"]
        result["ratios_plain_over_shim"] = {
            k: round(p[k] / s[k], 2) for k in ("total_overhead", "site_overhead", "ours",
                                               "flower") if s.get(k)}
        result["goal_4x_less_overhead"] = {
            "total_overhead": result["ratios_plain_over_shim"].get("total_overhead", 0) >= 4,
            "site_overhead": result["ratios_plain_over_shim"].get("site_overhead", 0) >= 4}

        print(f"\n{'per message (median s)':<28} {'plain':>9} {'shim':>9}")
        for k in ("compute", "total_overhead", "site_overhead", "ours", "flower", "deliver",
                  "startup", "handler_noncompute", "return", "torch_import_s", "data_load_s",
                  "model_build_s", "rpc_s"):
            pv, sv = p.get(k), s.get(k)
            print(f"{k:<28} {('%.4f' % pv) if pv is not None else '-':>9} "
                  f"{('%.4f' % sv) if sv is not None else '-':>9}")
        print(f"\n{'round (train+evaluate), median s':<34} {'plain':>9} {'shim':>9}")
        for k in ("round_s", "compute_s", "flower_s", "ours_s"):
            print(f"{k:<34} {p['round'][k]:>9.3f} {s['round'][k]:>9.3f}")
        print(f"ratios plain/shim: {result['ratios_plain_over_shim']}")
    print(json.dumps(result, separators=(",", ":")))
    if not a.work:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
