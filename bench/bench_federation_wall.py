"""What a federated round costs beyond its compute: a real federation vs pooled
training at equal epochs, in one run, on one machine (issue 19).

Federation: the product's processes on loopback, as `fedvox demo` starts them
(SuperLink with TLS and node authentication, per site a worker + SuperNode +
the long-lived ClientApp runner, secure aggregation, the plan stage, per-round
site and central evaluation, the final and cross-site evaluations). R rounds x
E local epochs. Pooled: the same data, model, patches and [train] settings,
R*E epochs over all sites' training cases in one process (fl_server.baseline's
trainer, no per-epoch validation), then one evaluation of every evaluation
set. Both start from the same prepared caches (built before timing).

Stage overhead: a round's train (or evaluate) stage wall time, from its
events.jsonl record, minus the slowest site's handler time for that stage
(the runner's "task ... completed in S" line: everything the site did,
compute included). That is what the engine adds per stage (goal <= 0.5 s).

    python bench/bench_federation_wall.py [--example synthetic|real] [--rounds 3] [--epochs 1]
        [--local-baseline on|off]

Last line: one JSON object (federation and pooled seconds, ratio, stage overheads).
"""
from __future__ import annotations

import argparse
import json
import re
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

TASK_LINE = re.compile(r"task (\S+) completed in ([0-9.]+) s")


def _variant(src: Path, out: Path, rounds: int, epochs: int, local: bool) -> Path:
    """The example's federation TOML with this run's rounds, epochs and local baseline."""
    text = src.read_text()
    for key, val in (("rounds", rounds), ("local_epochs", epochs), ("local_baseline", str(local).lower())):
        text, n = re.subn(rf"^{key} = \S+", f"{key} = {val}", text, count=1, flags=re.M)
        if not n:
            raise SystemExit(f"{src}: no `{key} = ...` line to set")
    for d in ("sites",):  # site TOMLs are referenced relative to the federation file
        if (src.parent / d).is_dir() and not (out / d).exists():
            import shutil
            shutil.copytree(src.parent / d, out / d)
    p = out / "federation.toml"
    p.write_text(text)
    return p


def _site_task_times(work: Path, site: str) -> dict[str, list[float]]:
    times: dict[str, list[float]] = {}
    log = work / "sites-work" / site / "runner.log"
    for m in TASK_LINE.finditer(log.read_text(errors="replace") if log.exists() else ""):
        times.setdefault(m.group(1), []).append(float(m.group(2)))
    return times


def run_federation(fed_path: Path, data_base: Path, work: Path, timeout: float) -> dict:
    from fl_client.site import start_site
    from fl_common.config import load_federation
    from fl_common.kit import read_kit
    from fl_common.supervise import ProcessGroup
    from fl_server import deploy
    from fl_server.demo import enroll_and_provision
    from fl_server.plan import run_check
    from fl_server.records import RunRecord
    fed = load_federation(fed_path, data_base=data_base)
    names = [s.name for s in fed.sites]
    prov, keys = enroll_and_provision(work, names, "bench-wall")
    run_dir = work / "run"
    RunRecord(run_dir).save_harmonisation(run_check(fed_path, data_base))
    with ProcessGroup("bench-federation-wall") as group:
        sl, cli = deploy.start_superlink(group, prov, work / "server", None, insecure=False)
        for s in fed.sites:
            start_site(group, read_kit(prov.site_kits[s.name]), keys[s.name], fed_path, Path(s.config_path),
                       work / "sites-work" / s.name, sl.address, data_base=data_base)
        spec = deploy.write_spec(run_dir, fed_path, data_base, True, prov.roster_path, provision=prov.root,
                                 min_sites=min(len(names), 2))
        t0 = time.monotonic()
        res = deploy.run_federation(cli, prov.federation, spec, timeout, work / "server" / "run.log")
        wall = time.monotonic() - t0
    if not res.ok:
        raise SystemExit(f"federation did not complete: {res.status} {res.details}\nlogs: {work}")
    rec = RunRecord.open(run_dir)
    events, _ = rec.events()
    task = {n: _site_task_times(work, n) for n in names}
    overhead: dict[str, list[float]] = {"train": [], "evaluate": []}
    seen = {"train": 0, "evaluate": 0}
    for e in events:
        if e.get("event") != "stage_done" or e.get("stage") not in overhead:
            continue
        st, k = e["stage"], seen[e["stage"]]
        seen[st] += 1
        site_s = [task[n][st][k] for n in e.get("ok", []) if len(task[n].get(st, [])) > k]
        if site_s:
            overhead[st].append(float(e["seconds"]) - max(site_s))
    rounds = [r for r in rec.rounds if r.get("round", 0) >= 1]
    return {"wall_s": round(wall, 1), "round_s": [r.get("seconds") for r in rounds],
            "stage_overhead_s": {k: [round(x, 3) for x in v] for k, v in overhead.items()},
            "stage_overhead_median_s": {k: round(statistics.median(v), 3) if v else None
                                        for k, v in overhead.items()}}


def run_pooled(fed_path: Path, data_base: Path, work: Path, epochs: int) -> dict:
    from fl_common.config import load_federation
    from fl_server.baseline import baseline_trainer, evaluate_on_sets, load_site_data
    fed = load_federation(fed_path, data_base=data_base)
    cache = work / "pooled-cache"
    data = load_site_data(fed, cache)  # prepared before timing, as the sites' caches are
    t0 = time.monotonic()
    trainer = baseline_trainer(fed, data, [s.name for s in fed.sites], epochs, run_dir=work / "pooled",
                               validate=False)
    trainer.fit(show_progress=False)
    t_train = time.monotonic() - t0
    evaluate_on_sets(fed, trainer.net, data, cache)
    return {"wall_s": round(time.monotonic() - t0, 1), "train_s": round(t_train, 1)}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--example", choices=("synthetic", "real"), default="synthetic")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--epochs", type=int, default=1, help="local epochs per round")
    ap.add_argument("--local-baseline", choices=("on", "off"), default="on",
                    help="sites also train a local-only model each round (the demo's setting: on)")
    ap.add_argument("--cases", type=float, default=1.0)
    ap.add_argument("--timeout", type=float, default=1500.0)
    ap.add_argument("--work", default=None)
    a = ap.parse_args(argv)
    from fl_server.demo import _generate_example
    work = Path(a.work).absolute() if a.work else Path(tempfile.mkdtemp(prefix="fvbench-wall-"))
    work.mkdir(parents=True, exist_ok=True)
    src, data_base = _generate_example(a.example, work / "data", 1.0, a.cases, 0)
    fed_path = _variant(Path(src), work, a.rounds, a.epochs, a.local_baseline == "on")
    fedr = run_federation(fed_path, data_base, work / "federation", a.timeout)
    pooled = run_pooled(fed_path, data_base, work, a.rounds * a.epochs)
    ratio = round(fedr["wall_s"] / pooled["wall_s"], 2)
    print(f"federation ({a.rounds} rounds x {a.epochs} epochs, local baseline {a.local_baseline}): "
          f"{fedr['wall_s']} s; pooled {a.rounds * a.epochs} epochs: {pooled['wall_s']} s "
          f"(training {pooled['train_s']} s); ratio {ratio} (goal <= 2)")
    print(f"stage overhead beyond the slowest site, median s: {fedr['stage_overhead_median_s']} (goal <= 0.5)")
    print(json.dumps({"bench": "federation_wall", "example": a.example, "rounds": a.rounds, "local_epochs": a.epochs,
                      "local_baseline": a.local_baseline, "federation": fedr, "pooled": pooled,
                      "ratio_federation_over_pooled": ratio, "work": str(work)}, separators=(",", ":")))
    return 0


if __name__ == "__main__":
    sys.exit(main())
