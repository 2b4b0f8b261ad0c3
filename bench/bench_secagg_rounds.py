"""Round cost of secure aggregation on Flower's deployment engine (issue 6).

One invocation, real processes on loopback: SuperLink with TLS + SuperNode
authentication, 3 SuperNodes (sites), numpy-only apps (bench/fvbench_rounds_app.py;
no torch, no training: a site's update is a seeded random float32 vector of P
values, so the figures isolate aggregation cost). For each P:

  (a) unmasked: the product's round loop (fl_server.round_loop.RoundLoop with
      PlainAggregation, a synthetic model of P values, no central evaluation):
      train stage (plain float32 delta in an ArrayRecord) + evaluate stage,
      weighted mean and FedAvg step at the server;
  (b) masked: the same loop with SecureAggregation (fl_client.secagg riding on
      the same two stages: mask at T, reveal at E, unmask at the server); setup
      (S1 advertise, S2 share) done once before the rounds and reported separately;
  (c) Flower's SecAgg+ on the legacy API: DefaultWorkflow with
      SecAggPlusWorkflow, legacy ClientApp (NumPyClient) with secaggplus_mod.

(a) and (b) run in one Flower run, alternating; (c) in a second run on the same
SuperLink/SuperNodes. Round wall time = first request of the round sent to the
new global model formed (after the evaluate stage; the loop's checkpoint and
run-record writes that follow are not counted: one run record per mode and P
in the work directory). Bytes per site = request +
reply payload (array data, config values, metric values) over the round's
stages, mean over sites. The server replaces Grid.send_and_receive's fixed 3 s
pull interval by --poll (same for all three modes), so stage times are not
quantised to 3 s; the SuperNodes still poll the SuperLink on their own schedule.

    python bench/bench_secagg_rounds.py [--sizes 1000000,5000000] [--with-20m]
                                        [--rounds 2] [--poll 0.25] [--no-secaggplus]

Last line: one JSON object (per-P seconds and bytes for a/b/c and the ratios).
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

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from fl_common.supervise import ProcessGroup  # noqa: E402
from fvbench_federation import make_app, run_app, site_key, start_federation  # noqa: E402

HERE = Path(__file__).resolve().parent
APP_MODULE = HERE / "fvbench_rounds_app.py"
SITES = ["site-1", "site-2", "site-3"]
APP_CONFIG = {"out-file": "", "sizes": "1000", "rounds": 1, "min-nodes": 3, "threshold": 2, "poll": 0.25,
              "stage-timeout": 300.0, "wait-nodes-timeout": 120.0, "roster": "", "site-names": ""}


def _app(dst: Path, name: str, server: str, client: str) -> Path:
    return make_app(dst, APP_MODULE, name, "fedvox secure-aggregation round benchmark app", server, client,
                    APP_CONFIG)


def med(xs):
    return float(statistics.median(xs)) if xs else None


def main(argv=None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", default="1000000,5000000")
    ap.add_argument("--with-20m", action="store_true", help="add P = 20M")
    ap.add_argument("--rounds", type=int, default=2, help="rounds per mode and size")
    ap.add_argument("--poll", type=float, default=0.25, help="server pull interval (Flower: 3 s)")
    ap.add_argument("--no-secaggplus", action="store_true")
    ap.add_argument("--run-timeout", type=float, default=900.0)
    ap.add_argument("--work", default=None, help="work directory (default: a temp dir, removed)")
    a = ap.parse_args(argv)
    sizes = [int(x) for x in a.sizes.split(",") if x]
    if a.with_20m and 20_000_000 not in sizes:
        sizes.append(20_000_000)
    work = Path(a.work).absolute() if a.work else Path(tempfile.mkdtemp(prefix="fvbench-rounds-"))
    work.mkdir(parents=True, exist_ok=True)
    t_all = time.monotonic()
    result = {"bench": "secagg_rounds", "sites": len(SITES), "sizes": sizes, "rounds": a.rounds,
              "poll_s": a.poll, "tls": True, "node_auth": True}
    with ProcessGroup("fvbench-rounds") as group:
        prov, cli = start_federation(work, SITES, group, lambda s, kit, sw: {
            "site-name": s, "auth-key": str(site_key(work, s)), "roster": str(kit / "roster.json"),
            "state-dir": str(sw / "state")})

        common = {"sizes": ",".join(map(str, sizes)), "rounds": a.rounds,
                  "min-nodes": len(SITES), "poll": a.poll, "roster": str(prov.roster_path),
                  "site-names": ",".join(SITES), "threshold": 2}
        ab = run_app(_app(work / "app-rounds", "fvbench-rounds", "server", "client"), cli, common, work,
                     "rounds", a.run_timeout)
        c = None
        if not a.no_secaggplus:
            c = run_app(_app(work / "app-secaggplus", "fvbench-secaggplus", "legacy_server", "legacy_client"),
                        cli, common, work, "secaggplus", a.run_timeout)
    result["wall_s"] = round(time.monotonic() - t_all, 1)

    # ---- summary
    setup = ab.get("setup") or {}
    result["setup"] = {"seconds": round(setup.get("seconds", float("nan")), 2),
                       "bytes_per_site": setup.get("bytes_per_site", {}).get("total"),
                       "stages": setup.get("stages")}
    per = {}
    rows = []
    for n in sizes:
        d = {}
        for mode, src in (("a", ab), ("b", ab), ("c", c or {})):
            want = {"a": "plain", "b": "masked", "c": "secaggplus"}[mode]
            rs = [r for r in src.get("rounds", []) if r["params"] == n and r["mode"] == want]
            if not rs:
                d[mode] = None
                continue
            d[mode] = {"seconds": round(med([r["seconds"] for r in rs]), 3),
                       "seconds_all": [round(r["seconds"], 3) for r in rs],
                       "bytes_per_site": int(med([r["bytes_per_site"]["total"] for r in rs])),
                       "up_bytes_per_site": int(med([r["bytes_per_site"]["up"] for r in rs]))}
            if mode in ("a", "b"):
                d[mode]["train_stage_s"] = round(med([r["train_stage_s"] for r in rs]), 3)
                d[mode]["eval_stage_s"] = round(med([r["eval_stage_s"] for r in rs]), 3)
                d[mode]["server_s"] = round(med([r["server_between_s"] + r["server_aggregate_s"]
                                                 for r in rs]), 3)
                d[mode]["site_train_handler_s"] = round(med(
                    [statistics.mean(r["site_train_handler_s"].values()) for r in rs]), 3)
                d[mode]["max_abs_err"] = max(r["max_abs_err"] for r in rs)
                if mode == "b":
                    d[mode]["tolerance"] = max(r["tolerance"] for r in rs)
            else:
                sz = [x for x in src.get("sizes", []) if x["params"] == n]
                if sz:
                    d[mode]["max_abs_err"] = sz[0]["max_abs_err_last_round"]
                d[mode]["stages_s"] = [round(e["seconds"], 2) for e in rs[0]["stages"]]
        ratios = {}
        if d.get("a") and d.get("b"):
            ratios["masked_vs_unmasked_time"] = round(d["b"]["seconds"] / d["a"]["seconds"], 3)
            ratios["masked_vs_unmasked_bytes"] = round(d["b"]["bytes_per_site"]
                                                       / d["a"]["bytes_per_site"], 4)
        if d.get("b") and d.get("c"):
            ratios["secaggplus_vs_masked_time"] = round(d["c"]["seconds"] / d["b"]["seconds"], 3)
        if d.get("a") and d.get("c"):
            ratios["secaggplus_vs_unmasked_bytes"] = round(d["c"]["bytes_per_site"]
                                                           / d["a"]["bytes_per_site"], 4)
        d["ratios"] = ratios
        d["goals_met"] = {
            "time_masked<=1.05x": ratios.get("masked_vs_unmasked_time", 9) <= 1.05,
            "bytes_masked<=1.1x": ratios.get("masked_vs_unmasked_bytes", 9) <= 1.1,
            "secaggplus>=4x_slower": ratios.get("secaggplus_vs_masked_time", 0) >= 4}
        per[str(n)] = d
        for mode in "abc":
            if d.get(mode):
                rows.append((n, mode, d[mode]["seconds"], d[mode]["bytes_per_site"],
                             d[mode].get("max_abs_err")))
    result["per_params"] = per
    result["status"] = {"ab": ab.get("status"), "c": (c or {}).get("status", "skipped")}

    print(f"\nsetup (b, once): {result['setup']['seconds']} s, "
          f"{result['setup']['bytes_per_site']} bytes/site")
    print(f"{'params':>10} {'mode':<13} {'round s':>9} {'MB/site':>9} {'max|err|':>10}")
    names = {"a": "a unmasked", "b": "b masked", "c": "c SecAgg+"}
    for n, mode, s, b, e in rows:
        es = f"{e:.2e}" if e is not None else "-"
        print(f"{n:>10} {names[mode]:<13} {s:>9.2f} {b / 1e6:>9.2f} {es:>10}")
    for n, d in per.items():
        print(f"P={n}: {d['ratios']}  goals {d['goals_met']}")
    print(json.dumps(result, separators=(",", ":")))
    if not a.work:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
