"""Federated algorithms at equal compute, in one process and over several seeds.

The real federation (bench_quality.py) takes about 16 minutes for 30 rounds,
most of it Flower's message latency, and one run's lesion Dice moves by
±0.1 between seeds. Choosing a strategy needs many runs, so this bench runs
the same site code (fl_client.worker.SiteWorker.train: same seeds, patches,
learning-rate schedule) and the same server code (fl_server.strategy) without
Flower and without masking, and compares each configuration with pooled
training of rounds x local_epochs epochs, per seed and averaged.

Only final models are scored, on the sites' validation cases (where a
hospital may tune) and on the coordinator's held-out cases (report only).

    python bench/bench_fl_algorithms.py --federation F --data-base D --work W \\
        --seeds 0,1,2 --configs fedavg "fedavg:server_lr=2" "fedadam:eta=0.01"

A configuration is a strategy name, optionally followed by ``:key=value,...``
for [federation] keys (server_lr, eta, beta1, beta2, tau, prox_mu,
local_epochs, rounds) or, prefixed ``train.``, for the sites' [train] keys
(``train.lr``, ``train.patches_per_step``). The reference is pooled training
with the federation's own [train] recipe; ``pooled:train.patches_per_step=1``
adds pooled training with another recipe. Last line: one JSON object.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def parse_config(text: str) -> tuple[str, dict]:
    name, _, rest = text.partition(":")
    opts = {}
    for item in filter(None, rest.split(",")):
        k, _, v = item.partition("=")
        k = k.strip()
        try:
            opts[k] = int(v) if k in ("local_epochs", "rounds", "train.patches_per_step") else float(v)
        except ValueError:
            raise SystemExit(f"--configs {text!r}: {k} needs a number, got {v!r}") from None
    return name.strip(), opts


def split_opts(opts: dict) -> tuple[dict, dict]:
    """A configuration's [federation] keys and its ``train.`` keys (prefix dropped)."""
    return ({k: v for k, v in opts.items() if not k.startswith("train.")},
            {k[len("train."):]: v for k, v in opts.items() if k.startswith("train.")})


def pooled_cached(fed, data: dict, work: Path):
    """Pooled training of rounds x local_epochs epochs. It is deterministic given
    the federation (seed included), so its model is saved under a hash of the
    whole config and reused."""
    import hashlib
    import torch
    from fl_server.baseline import baseline_trainer
    from imaging_core.task import build_net
    fl = fed.federation
    epochs = fl.rounds * fl.local_epochs
    key = hashlib.sha256(json.dumps(fed.model_dump(), sort_keys=True, default=str).encode()).hexdigest()[:12]
    saved = work / f"pooled-{key}-{epochs}ep.pt"
    if saved.exists():
        net = build_net(fed.model, fed.num_classes, seed=fl.seed)
        net.load_state_dict(torch.load(saved, weights_only=True))
        return net
    trainer = baseline_trainer(fed, data, list(data), epochs, validate=False)  # final model only
    trainer.fit(show_progress=False)
    torch.save(trainer.net.state_dict(), saved)
    return trainer.net


def federated(fed, work: Path):
    """FedAvg-family rounds with the sites' and the server's own code, in process."""
    import torch
    from fl_common.tensors import flatten, unflatten
    from fl_client.worker import SiteWorker
    from fl_server.strategy import ServerOptimizer, site_lr, site_round_config, weighted_mean
    from imaging_core.task import build_net, float_state
    fl = fed.federation
    rounds, epochs = fl.rounds, fl.local_epochs
    workers = [SiteWorker(fed, s, work / s.name) for s in fed.sites]
    net = build_net(fed.model, fed.num_classes, seed=fl.seed)
    weights = {k: v.numpy() for k, v in float_state(net).items()}
    opt = ServerOptimizer.from_federation(fl)
    site_cfg = {**site_round_config(fl), "local_baseline": False}  # only the global model is compared
    for r in range(1, rounds + 1):
        cfg = {**site_cfg, "lr": site_lr(fed.train, rounds, epochs, r)}
        deltas, ws = [], []
        for w in workers:
            delta, n, _ = w.train(r, weights, cfg)
            deltas.append(flatten(delta))
            ws.append(n)
        weights = unflatten(opt.step(flatten(weights), weighted_mean(deltas, ws)), weights)
    net.load_state_dict({k: torch.from_numpy(v) for k, v in weights.items()}, strict=False)
    return net


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--federation", required=True)
    ap.add_argument("--data-base", required=True)
    ap.add_argument("--work", required=True, type=Path)
    ap.add_argument("--seeds", default="0")
    ap.add_argument("--configs", nargs="+", default=["fedavg"])
    a = ap.parse_args()
    from fl_server.baseline import evaluate_on_sets, load_site_data
    from fl_common.config import load_federation

    from fl_common.config import STRATEGIES
    configs = {c: parse_config(c) for c in a.configs}  # bad input fails before any training
    for c, (name, _) in configs.items():
        if c == "pooled":
            raise SystemExit("--configs: plain pooled is always run (the reference); give it train.* keys")
        if name not in (*STRATEGIES, "pooled"):
            raise SystemExit(f"--configs {c!r}: unknown strategy {name!r} "
                             f"(pooled or one of {', '.join(STRATEGIES)})")
    from imaging_core.errors import ImagingError
    try:
        base = load_federation(a.federation, data_base=a.data_base)
    except ImagingError as e:  # one line naming the file, not a traceback
        raise SystemExit(str(e)) from None
    for c, (_, opts) in configs.items():
        fl_opts, train_opts = split_opts(opts)
        try:
            base.updated({"federation": fl_opts, "train": train_opts})
        except ImagingError as e:
            raise SystemExit(f"--configs {c!r}: {e}") from None
    cache = a.work.resolve() / "cache"
    data = load_site_data(base, cache)
    seeds = [int(s) for s in a.seeds.split(",")]
    labels = [c for c in base.labels if c]
    rows, times = [], {}
    for seed in seeds:
        fed = base.updated({"federation": {"seed": seed}})
        for label, (name, opts) in [("pooled", ("pooled", {})), *configs.items()]:
            t0 = time.perf_counter()
            fl_opts, train_opts = split_opts(opts)
            if name != "pooled":
                fl_opts = {**fl_opts, "strategy": name}
            f = fed.updated({"federation": fl_opts, "train": train_opts})
            if name == "pooled":
                net = pooled_cached(f, data, a.work.resolve())
            else:
                net = federated(f, a.work.resolve() / "sites")  # the sites' caches are reused
            times[(label, seed)] = time.perf_counter() - t0
            for row in evaluate_on_sets(fed, net.eval(), data, cache, model=label):
                rows.append({**row, "seed": seed})
            print(f"seed {seed} {label}: {times[(label, seed)]:.0f} s " + "  ".join(
                f"{r['eval_set']} " + "/".join(f"{r[f'dice_{c}']:.3f}" for c in labels)
                for r in rows if r["model"] == label and r["seed"] == seed), flush=True)

    sets = list(dict.fromkeys(r["eval_set"] for r in rows))
    by = {(r["model"], r["seed"], r["eval_set"]): r for r in rows}
    summary = {}
    print(f"\nmean over seeds {seeds} of Dice organ / lesion, and [ratio to pooled of the same seed]")
    for label in ["pooled", *a.configs]:
        cells = {}
        for s in sets:
            d = {c: float(np.mean([by[(label, sd, s)][f"dice_{c}"] for sd in seeds])) for c in labels}
            ratio = {c: float(np.mean([by[(label, sd, s)][f"dice_{c}"] /
                                       max(by[("pooled", sd, s)][f"dice_{c}"], 1e-9) for sd in seeds]))
                     for c in labels}
            cells[s] = {"dice": d, "ratio": ratio}
        summary[label] = cells
        print(f"{label:28s}" + "".join(
            f"  {s}: " + "/".join(f"{cells[s]['dice'][c]:.3f}" for c in labels)
            + " [" + "/".join(f"{cells[s]['ratio'][c]:.2f}" for c in labels) + "]" for s in sets))
    print(json.dumps({"bench": "fl_algorithms", "seeds": seeds, "summary": summary, "rows": rows,
                      "wall_s": {f"{k[0]}@{k[1]}": round(v, 1) for k, v in times.items()}}, default=float))


if __name__ == "__main__":
    main()
