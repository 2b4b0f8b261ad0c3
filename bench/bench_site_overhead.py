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

Two engines, one after the other (--engine both, the default): "flower" is
Flower as shipped (stock flower-supernode with its 3 s idle poll, its SuperExec
starting one process per message); "runner" is what `fedvox site` runs (the
SuperNode through fl_client.supernode_main, --isolation process, one long-lived
runner process per site, module imports paid once: "deliver"/"startup" mean
nothing there and are left out). The headline: a plain torch ClientApp on
Flower's engine (the reference) over fedvox's shim on the runner, for the total
overhead per message and for stage_s (one message stage, request sent to last
reply in, minus compute; goal <= 0.5 s).

    python bench/bench_site_overhead.py [--rounds 5] [--sites 1] [--poll 0.1] [--engine both]

Last line: one JSON object (medians per engine and mode, ratios, goals).
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


def decompose(m: dict, engine: str = "flower") -> dict:
    c = m["compute_s"]
    # a long-lived runner imports the module once, at start: not a per-message cost
    imports = (m["module_t1"] - m["module_t0"]) if engine == "flower" else 0.0
    ours = imports + (m["handler_t1"] - m["handler_t0"] - c)
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


def measure(engine: str, a, work: Path) -> dict:
    """One federation on ``engine``, rounds alternating plain/shim: medians per mode."""
    sites = [f"site-{i + 1}" for i in range(a.sites)]
    with ProcessGroup(f"fvbench-overhead-{engine}") as group:

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

        # the reference runs Flower as shipped: its SuperExec and its SuperNode's 3 s idle poll
        kw = {"runner": [sys.executable, str(APP_MODULE)]} if engine == "runner" else {"stock": True}
        _, cli = start_federation(work, sites, group, start_worker, kw)
        app = make_app(work / "app-overhead", APP_MODULE, "fvbench-overhead",
                       "fedvox site-overhead benchmark app", "server", "client", APP_CONFIG)
        rec = run_app(app, cli, {"rounds": a.rounds, "min-nodes": len(sites), "poll": a.poll}, work,
                      "overhead", a.run_timeout)

    per_mode: dict[str, dict] = {"status": rec.get("status")}
    for mode in ("plain", "shim"):
        rows = [r for r in rec.get("rounds", []) if r["mode"] == mode and not r["warmup"]]
        msgs = [decompose(m, engine) for r in rows for st in r["stages"] for m in st["msgs"]]
        if engine == "runner":  # counted from the runner's start: meaningless per message
            for m in msgs:
                m.pop("deliver"), m.pop("startup"), m.pop("site_overhead")
        if not msgs:
            continue
        keys = sorted({k for m in msgs for k in m})
        d = {k: med([m[k] for m in msgs if k in m]) for k in keys}
        # round breakdown: per stage the message on the critical path (last reply)
        rb = []
        for r in rows:
            comp = ours = 0.0
            for st in r["stages"]:
                dd = decompose(max(st["msgs"], key=lambda m: m["t_recv"]), engine)
                comp += dd["compute"]
                ours += dd["ours"]
            rb.append({"round_s": r["seconds"], "compute_s": comp, "ours_s": ours,
                       "flower_s": r["seconds"] - comp - ours})
        d["round"] = {k: med([x[k] for x in rb]) for k in rb[0]}
        # one message stage: request sent -> last reply in, minus that reply's compute
        d["stage_s"] = med([st["t_done"] - st["t_sent"] - max(st["msgs"], key=lambda m: m["t_recv"])["compute_s"]
                            for r in rows for st in r["stages"]])
        d["messages"] = len(msgs)
        per_mode[mode] = d
    return per_mode


ROWS = ("compute", "stage_s", "total_overhead", "site_overhead", "ours", "flower", "deliver", "startup",
        "handler_noncompute", "return", "torch_import_s", "data_load_s", "model_build_s", "rpc_s")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=5, help="rounds per mode (the first is warm-up)")
    ap.add_argument("--sites", type=int, default=1)
    ap.add_argument("--poll", type=float, default=0.1)
    ap.add_argument("--run-timeout", type=float, default=900.0)
    ap.add_argument("--work", default=None)
    ap.add_argument("--engine", choices=("both", "runner", "flower"), default="both",
                    help="runner: one long-lived runner per site (what `fedvox site` runs); flower: "
                         "Flower's SuperExec, a process per message; both: each, one after the other")
    a = ap.parse_args(argv)
    work = Path(a.work).absolute() if a.work else Path(tempfile.mkdtemp(prefix="fvbench-ovh-"))
    work.mkdir(parents=True, exist_ok=True)
    t_all = time.monotonic()
    engines = ("flower", "runner") if a.engine == "both" else (a.engine,)
    res = {e: measure(e, a, work / e) for e in engines}
    cols = [(e, m) for e in engines for m in ("plain", "shim") if m in res[e]]
    print(f"\n{'per message (median s)':<24}" + "".join(f"{e[:6] + '/' + m:>14}" for e, m in cols))
    for k in ROWS:
        vals = [res[e][m].get(k) for e, m in cols]
        if any(v is not None for v in vals):
            print(f"{k:<24}" + "".join(f"{('%.4f' % v) if v is not None else '-':>14}" for v in vals))
    print(f"{'round (train+evaluate)':<24}" + "".join(f"{res[e][m]['round']['round_s']:>14.3f}" for e, m in cols))
    result = {"bench": "site_overhead", "engines": list(engines), "sites": a.sites, "rounds_per_mode": a.rounds,
              "warmup_rounds_per_mode": 1, "poll_s": a.poll, "tls": True, "node_auth": True,
              "wall_s": round(time.monotonic() - t_all, 1), "median_per_message_s": res}
    if "flower" in res and "runner" in res and "plain" in res["flower"] and "shim" in res["runner"]:
        # the reference: a plain torch ClientApp on Flower's default engine; ours: what a site runs
        ref, ours = res["flower"]["plain"], res["runner"]["shim"]
        result["reference_plain_flower_over_ours"] = {
            k: round(ref[k] / ours[k], 2) for k in ("total_overhead", "stage_s") if ours.get(k)}
        result["reference_plain_flower_over_ours"]["round_s"] = round(
            ref["round"]["round_s"] / ours["round"]["round_s"], 2)
        result["goals"] = {"overhead_4x_less": result["reference_plain_flower_over_ours"]["total_overhead"] >= 4,
                           "stage_at_most_0.5_s": ours["stage_s"] <= 0.5}
        print(f"plain ClientApp on Flower's engine / fedvox site: {result['reference_plain_flower_over_ours']}; "
              f"fedvox stage {ours['stage_s']:.3f} s")
    print(json.dumps(result, separators=(",", ":")))
    if not a.work:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
