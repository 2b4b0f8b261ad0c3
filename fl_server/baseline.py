"""`fedvox train`: the non-federated baselines, on the same pipeline and model.

- local-only: one site trains on its own training cases;
- pooled: all sites' training cases together (the centralised upper bound
  that federation is measured against; only possible when data can be pooled).
The run directory gets per-epoch metrics (JSON/CSV), best/last checkpoints and
final.json / final.csv: the best model on every site's validation cases and on
the coordinator's held-out cases.
"""
from __future__ import annotations

from pathlib import Path

from rich.console import Console
from rich.table import Table

from fl_common.config import Federation, SiteConfig, load_federation

from .records import write_csv, write_json

console = Console(stderr=True)


def _task(fed: Federation, device: str = "cpu"):
    from imaging_core.task import Task
    return Task(fed, device)


def _site_data(fed: Federation, site: SiteConfig, cache_base: Path):
    sd = _task(fed).site_data(site, cache_base / site.name, fed.federation.seed)
    rep = sd.prepare()
    for cid, err in rep.failed.items():
        console.print(f"[yellow]{site.name}: skipped {cid}: {err}")
    return sd


def evaluation_sets(fed: Federation, data: dict, cache_base: Path) -> dict:
    """Every site's validation cases and the coordinator's held-out cases, by name."""
    sets = {n: sd.cases("validation") for n, sd in data.items()}
    if fed.coordinator is not None:
        sets["held-out"] = list(_site_data(fed, fed.coordinator, cache_base).report.cases)
    return {k: v for k, v in sets.items() if v}


def evaluate_on_sets(fed: Federation, net, data: dict, cache_base: Path, device: str = "cpu",
                     model: str = "model") -> list[dict]:
    """One row per evaluation set: the summary metrics of ``net`` there, through the
    task's one evaluation path (the federation's overlap, sw_batch_size, chain, AMP)."""
    task = _task(fed, device)
    return [{"model": model, "eval_set": name, "cases": len(cases), **task.evaluate(net, cases).scores}
            for name, cases in evaluation_sets(fed, data, cache_base).items()]


def load_site_data(fed: Federation, cache_base: Path) -> dict:
    """Every site's prepared (cached) data, by site name."""
    return {s.name: _site_data(fed, s, cache_base) for s in fed.sites}


def baseline_trainer(fed: Federation, data: dict, sites: list[str], epochs: int | None = None,
                     run_dir: str | Path | None = None, device: str = "cpu", validate: bool = True):
    """A Trainer on the training cases of ``sites`` (all of them: pooled), with the
    federation's model, loss, [train] settings and seed; ``validate``: score
    the same sites' validation cases each epoch (best.pt)."""
    from imaging_core.data.patch_dataset import PatchDataset, patch_loader
    from imaging_core.train.trainer import Trainer
    train_cases = [c for n in sites for c in data[n].cases("training")]
    val_cases = [c for n in sites for c in data[n].cases("validation")] if validate else []
    if not train_cases:
        raise ValueError(f"{'+'.join(sites)}: no usable training cases")
    seed = fed.federation.seed
    task = _task(fed, device)
    loader, sampler = patch_loader(PatchDataset(train_cases, data[sites[0]].train_transforms, seed),
                                   num_workers=fed.sites[0].num_workers, seed=seed)
    cfg = fed.train.with_(**({"epochs": epochs} if epochs else {}), seed=seed)
    return Trainer(task.build_net(seed=seed), task.loss(), loader, sampler, cfg, val_cases=val_cases,
                   evaluate=task.evaluate, run_dir=run_dir, device=device)


def run_baseline(federation: str | Path, which: str, out_dir: str | Path, data_base: str | Path | None = None,
                 cache_base: str | Path | None = None, epochs: int | None = None, device: str = "cpu",
                 show_progress: bool = True, plan: str | Path | None = None) -> dict:
    """``which`` is a site name or "pooled"; ``plan``: a plan.json whose [preprocess] an
    "auto" federation trains with. Returns the final metrics rows."""
    from .plan import with_plan
    fed = with_plan(load_federation(federation, data_base=data_base), plan)
    fed.preprocess_table("`fedvox train`")  # "auto" without --plan: one line, before any work
    out_dir = Path(out_dir)
    cache_base = Path(cache_base) if cache_base else out_dir / "cache"
    names = [s.name for s in fed.sites]
    if which != "pooled" and which not in names:
        raise ValueError(f"unknown site {which!r}: one of {', '.join(names)} or 'pooled'")
    data = load_site_data(fed, cache_base)
    chosen = names if which == "pooled" else [which]
    trainer = baseline_trainer(fed, data, chosen, epochs, run_dir=out_dir, device=device)
    net = trainer.net
    if trainer.resume():
        console.print(f"resuming {which} from epoch {trainer.start_epoch}")
    trainer.fit(show_progress=show_progress)

    # final table: the best checkpoint (last if no validation improved) on every evaluation set
    from imaging_core.train.checkpoint import load_checkpoint
    best = out_dir / ("best.pt" if (out_dir / "best.pt").exists() else "last.pt")
    net.load_state_dict(load_checkpoint(best)["net"])
    rows = evaluate_on_sets(fed, net, data, cache_base, device, model=which)
    write_json(out_dir / "final.json", {"model": which, "checkpoint": best.name, "rows": rows})
    write_csv(out_dir / "final.csv", rows)
    table = Table(title=f"{which} model ({best.name}) on each evaluation set")
    cols = ["eval_set", "cases", "dice_fg_mean"] + [k for k in rows[0] if k.startswith(("dice_", "hd95_"))
                                                     and k != "dice_fg_mean"] if rows else []
    for c in cols:
        table.add_column(c, justify="left" if c == "eval_set" else "right")
    for r in rows:
        table.add_row(*[f"{r[c]:.3f}" if isinstance(r[c], float) else str(r[c]) for c in cols])
    console.print(table)
    return {"rows": rows, "run_dir": str(out_dir)}
