"""Quality at equal compute: the federated global model vs pooled training vs
each site's local-only model, on every site's validation cases and on the
coordinator's held-out cases (issues 3 and 5).

Equal compute: the federation ran R rounds of E local epochs at every site,
so each baseline trains R*E epochs: local-only on its own site's cases (the
same work each site did for the federation) and pooled on all sites' cases
(the sum of it). Every model is taken as it is at the end (global_final.pt,
each baseline's last.pt): no model is picked with the evaluation data, and
the federation's "best" round is chosen on the held-out set, so it is not
used here. All models are evaluated by the same code on the same cached cases.

    python bench/bench_quality.py --work /tmp/q [--rounds 15] [--cases 2]
    python bench/bench_quality.py --work /tmp/q --run RUN_DIR   # reuse a finished federation run

The federation is `fedvox demo` (TLS, node auth, secure aggregation).
Last line: one JSON object (the matrix, the goal checks, wall times).
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def _load(fed, path: Path):
    from imaging_core.train.checkpoint import load_checkpoint
    from imaging_core.task import build_net
    net = build_net(fed.model, fed.num_classes, seed=0)
    state = load_checkpoint(path)
    state = state.get("net", state)
    missing, unexpected = net.load_state_dict(state, strict=False)
    # federation exchanges only floating-point entries; anything else must be absent from both
    if unexpected or any(net.state_dict()[k].is_floating_point() for k in missing):
        raise RuntimeError(f"{path}: state dict does not fit the federation's model ({missing}, {unexpected})")
    return net.eval()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--work", required=True, type=Path)
    ap.add_argument("--rounds", type=int, default=15)
    ap.add_argument("--cases", type=float, default=2.0, help="multiply sites_example's case counts")
    ap.add_argument("--run", type=Path, help="a finished federation run directory to reuse")
    a = ap.parse_args()
    from fl_server.baseline import evaluate_on_sets, load_site_data, run_baseline
    from fl_common.config import load_federation
    from fl_server.records import read_json

    work = a.work.resolve()
    times = {}
    run = a.run
    if run is None:
        from fl_server.demo import run_demo
        t0 = time.perf_counter()
        if run_demo(work / "federation", cases=a.cases, rounds=a.rounds) != 0:
            raise SystemExit("the federation failed; see its output above")
        times["federation"] = time.perf_counter() - t0
        run = work / "federation" / "run"
    spec = read_json(run / "spec.json")
    fed = load_federation(spec["federation"], data_base=spec.get("data_base"))
    rounds = int(read_json(run / "state.json")["last_round"])
    local_epochs = fed.federation.local_epochs
    epochs = rounds * local_epochs
    names = [s.name for s in fed.sites]

    models = {"global": run / "global_final.pt"}
    for which in ["pooled", *names]:
        out = work / f"baseline-{which}"
        t0 = time.perf_counter()
        run_baseline(spec["federation"], which, out, data_base=spec.get("data_base"), epochs=epochs,
                     show_progress=False)
        times[which] = time.perf_counter() - t0
        models["pooled" if which == "pooled" else f"local:{which}"] = out / "last.pt"

    cache = work / "eval-cache"
    data = load_site_data(fed, cache)
    rows = []
    for name, path in models.items():
        rows += evaluate_on_sets(fed, _load(fed, path), data, cache, model=name)
    by = {(r["model"], r["eval_set"]): r for r in rows}
    sets = list(dict.fromkeys(r["eval_set"] for r in rows))
    labels = {k: v for k, v in fed.labels.items() if k}

    print(f"\n{rounds} rounds x {local_epochs} local epochs = {epochs} epochs per baseline\n")
    for metric in [*(f"dice_{c}" for c in labels), "dice_fg_mean", *(f"hd95_{c}" for c in labels)]:
        print(f"{metric:14s}" + "".join(f"{s:>12s}" for s in sets))
        for m in models:
            print(f"  {m:12s}" + "".join(f"{by[(m, s)].get(metric, float('nan')):12.3f}" for s in sets))

    # goal 1: global >= 0.97x pooled Dice, per structure, on every evaluation set
    ratios = {s: {labels[c]: by[("global", s)][f"dice_{c}"] / max(by[("pooled", s)][f"dice_{c}"], 1e-9)
                  for c in labels} for s in sets}
    worst = min(v for d in ratios.values() for v in d.values())
    # goal 2: global beats every local-only model on the other sites' validation cases
    duels = [{"local": n, "eval_set": s, "global": by[("global", s)]["dice_fg_mean"],
              "local_dice": by[(f"local:{n}", s)]["dice_fg_mean"]}
             for n in names for s in names if s != n]
    wins = sum(d["global"] > d["local_dice"] for d in duels)
    print("\nglobal / pooled Dice, per set and structure: "
          + "; ".join(f"{s}: " + ", ".join(f"{k} {v:.3f}" for k, v in d.items()) for s, d in ratios.items()))
    print(f"worst ratio {worst:.3f} (goal >= 0.97); global beats local-only on other sites' data "
          f"in {wins}/{len(duels)} pairs")
    print("wall s: " + ", ".join(f"{k} {v:.0f}" for k, v in times.items()))
    print(json.dumps({"bench": "quality", "rounds": rounds, "local_epochs": local_epochs, "epochs": epochs,
                      "rows": rows, "ratio_global_over_pooled": ratios, "worst_ratio": worst, "goal_ratio": 0.97,
                      "global_beats_local_elsewhere": f"{wins}/{len(duels)}", "duels": duels,
                      "wall_s": {k: round(v, 1) for k, v in times.items()}}, default=float))


if __name__ == "__main__":
    main()
