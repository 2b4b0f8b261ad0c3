"""Generalisation to a site nobody trained on (issue 17 item 3), on the real-anatomy
rehearsal federation (sites_example/real: ICBM152 anatomy, simulated subjects and
scanners; the held-out site has a zero-filled background, the training sites noisy ones).

Models, at equal compute (R rounds x E local epochs):
- federated: FedAvg over the training sites, the sites' and the server's own code in
  one process (bench_fl_algorithms.federated: no Flower, no masking);
- pooled: every training site's cases in one trainer, R*E epochs (the reference);
- local-only: each training site alone, R*E epochs on its own cases.
Every model is taken as it is at the end and scored on the held-out site's cases by
the task's one evaluation path (preprocessed space), per structure and per case;
"brain" is grey | white matter. Each z-score mask in --masks gets its own caches and
models, so "nonzero" (MONAI's default, issue 16's Dice 0.03) and "head" are compared
on the same data. --loso adds leave-one-site-out: trained without training site k
(federated over the other two, pooled over them), scored on all of site k's cases.

    python bench/bench_generalisation.py --work /tmp/gen [--rounds 6] [--local-epochs 2] \\
        [--masks nonzero,head] [--loso]

Last line: one JSON object.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))


def brain_dice(pred: np.ndarray, gt: np.ndarray) -> float:
    p, g = pred > 0, gt > 0
    denom = int(p.sum() + g.sum())
    return 2.0 * int((p & g).sum()) / denom if denom else 1.0


def score(fed, net, cases) -> dict:
    """Per-case and mean Dice (each structure and brain) of ``net`` on ``cases``."""
    from imaging_core.task import Task
    brains = {}
    ev = Task(fed).evaluate(net.eval(), cases, on_prediction=lambda cc, item, pred: brains.__setitem__(
        cc.case_id, brain_dice(pred, np.asarray(item["label"].array[0]))))
    names = {c: n for c, n in fed.labels.items() if c}
    per_case = [{"case": r["case_id"], "brain": brains[r["case_id"]],
                 **{names[c]: float(r["dice"][str(c)]) for c in names}} for r in ev.per_case]
    keys = ["brain", *names.values()]
    return {"mean": {k: float(np.mean([p[k] for p in per_case])) for k in keys}, "per_case": per_case}


def train_local(fed, data, sites: list[str], epochs: int):
    from fl_server.baseline import baseline_trainer
    tr = baseline_trainer(fed, data, sites, epochs, validate=False)  # the final model only
    tr.fit(show_progress=False)
    return tr.net


def with_sites(fed, names: list[str]):
    return fed.model_copy(update={"sites": [s for s in fed.sites if s.name in names]})


def run_mask(base, mask: str, work: Path, loso: bool, times: dict, heldout: bool = True) -> dict:
    from bench_fl_algorithms import federated
    from fl_server.baseline import evaluation_sets, load_site_data
    fed = base.updated({"preprocess": {"intensity": {"MR": {"kind": "zscore", "mask": mask}}}})
    fl = fed.federation
    epochs = fl.rounds * fl.local_epochs
    names = [s.name for s in fed.sites]
    cache = work / f"cache-{mask}"
    data = load_site_data(fed, cache)
    held = evaluation_sets(fed, data, cache)["held-out"]

    def timed(label, fn):
        t0 = time.perf_counter()
        out = fn()
        times[f"{mask}:{label}"] = round(time.perf_counter() - t0, 1)
        return out

    out: dict = {"heldout": {}}
    if heldout:
        models = {"federated": timed("federated", lambda: federated(fed, work / f"sites-{mask}")),
                  "pooled": timed("pooled", lambda: train_local(fed, data, names, epochs))}
        for n in names:
            models[f"local:{n}"] = timed(f"local:{n}", lambda n=n: train_local(fed, data, [n], epochs))
        out["heldout"] = {m: score(fed, net, held) for m, net in models.items()}
    for m, r in out["heldout"].items():
        print(f"[{mask}] held-out {m:16s} " + "  ".join(f"{k} {v:.3f}" for k, v in r["mean"].items()), flush=True)
    if loso:
        out["loso"] = {}
        for k in names:
            rest = [n for n in names if n != k]
            sub = with_sites(fed, rest)
            cases = data[k].cases("training") + data[k].cases("validation")
            fedk = timed(f"loso-{k}:federated", lambda: federated(sub, work / f"sites-{mask}-no-{k}"))
            poolk = timed(f"loso-{k}:pooled", lambda: train_local(sub, data, rest, epochs))
            out["loso"][k] = {"federated": score(fed, fedk, cases), "pooled": score(fed, poolk, cases)}
            print(f"[{mask}] LOSO at {k}: " + "  ".join(
                f"{m} brain {r['mean']['brain']:.3f}" for m, r in out["loso"][k].items()), flush=True)
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--work", required=True, type=Path)
    ap.add_argument("--rounds", type=int, help="override [federation] rounds")
    ap.add_argument("--local-epochs", type=int, help="override [federation] local_epochs")
    ap.add_argument("--masks", default="nonzero,head", help="z-score masks to compare")
    ap.add_argument("--cases", type=float, default=1.0, help="multiply the example's case counts")
    ap.add_argument("--loso", action="store_true", help="also leave-one-site-out over the training sites")
    ap.add_argument("--loso-only", action="store_true", help="leave-one-site-out only (no held-out models)")
    a = ap.parse_args()
    from fl_common.config import load_federation
    from sites_example.real.generate import federation_path, generate
    work = a.work.resolve()
    times: dict = {}
    t0 = time.perf_counter()
    generate(work / "data", cases=a.cases)
    times["generate"] = round(time.perf_counter() - t0, 1)
    base = load_federation(federation_path(), data_base=work / "data")
    over = {k: v for k, v in (("rounds", a.rounds), ("local_epochs", a.local_epochs)) if v}
    base = base.updated({"federation": over}) if over else base
    results = {m: run_mask(base, m, work, a.loso or a.loso_only, times, heldout=not a.loso_only)
               for m in a.masks.split(",")}

    summary = {}
    print(f"\nheld-out site, mean Dice (brain / grey / white), {base.federation.rounds} rounds x "
          f"{base.federation.local_epochs} local epochs; equal compute for every model")
    for mask, res in results.items():
        h = res["heldout"]
        for k, r in res.get("loso", {}).items():
            f, p = r["federated"]["mean"], r["pooled"]["mean"]
            summary.setdefault(f"{mask}:loso", {})[k] = {"federated": f, "pooled": p,
                                                        "ratio_brain": f["brain"] / max(p["brain"], 1e-9)}
            print(f"  [{mask:7s}] trained without {k}, scored at {k}: federated / pooled brain "
                  f"{f['brain']:.3f} / {p['brain']:.3f}")
        if not h:
            continue
        fedm, pool = h["federated"]["mean"], h["pooled"]["mean"]
        ratio = {k: fedm[k] / max(pool[k], 1e-9) for k in fedm}
        locals_ = {m: r["mean"]["brain"] for m, r in h.items() if m.startswith("local:")}
        beats = all(fedm["brain"] > v for v in locals_.values())
        summary[mask] = {"federated": fedm, "pooled": pool, "ratio_federated_over_pooled": ratio,
                         "local_brain": locals_, "federated_beats_every_local": beats,
                         "goal_brain_0.90": fedm["brain"] >= 0.90, "goal_ratio_0.99": ratio["brain"] >= 0.99}
        for m, r in h.items():
            print(f"  [{mask:7s}] {m:16s} " + " / ".join(f"{v:.3f}" for v in r["mean"].values()))
        print(f"  [{mask:7s}] ours (federated) / reference (pooled), brain: {fedm['brain']:.3f} / "
              f"{pool['brain']:.3f} = {ratio['brain']:.3f}; beats every local-only: {beats}")
    print("wall s: " + ", ".join(f"{k} {v:.0f}" for k, v in times.items()))
    print(json.dumps({"bench": "generalisation", "rounds": base.federation.rounds,
                      "local_epochs": base.federation.local_epochs, "summary": summary,
                      "results": results, "wall_s": times}, default=float))


if __name__ == "__main__":
    main()
