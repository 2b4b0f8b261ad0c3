"""What the report shows, taken from the run record: one comparison row per
(evaluation set, model), and the global model's gain over each site's local-only one.

Which round's numbers belong to which model is the run record's business
(fl_server/records.py); this module only arranges them.
"""
from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

from fl_common.keys import GLOBAL, LOCAL as LOCAL_PREFIX
from imaging_core.errors import ImagingError
from imaging_core.io.tables import read_json

from ..records import RunRecord, strip_prefix

HELD_OUT = "held-out"
GLOBAL_FINAL, GLOBAL_BEST, LOCAL = "global (final)", "global (best)", "local-only"


def num(v) -> float:
    try:
        return float(v)
    except (TypeError, ValueError):
        return math.nan


def load_run(run_dir: str | os.PathLike) -> RunRecord:
    """The run record, read only."""
    return RunRecord.open(run_dir)


def load_baseline(path: str | os.PathLike) -> dict:
    """A `fedvox train` run: its final.json (``rows`` per evaluation set) and model name."""
    p = Path(path)
    f = p / "final.json" if p.is_dir() else p
    doc = read_json(f)
    if "rows" not in doc:
        raise ImagingError(f, "not a baseline final.json (no 'rows')")
    return {"dir": p if p.is_dir() else p.parent, "model": str(doc.get("model", p.name)), "rows": doc["rows"]}


def foreground(labels: dict) -> list[str]:
    return [c for c in labels if c != "0"]


def metric_keys(labels: dict) -> list[str]:
    keys = ["dice_fg_mean"]
    for k in foreground(labels):
        keys += [f"dice_{k}", f"hd95_{k}", f"assd_{k}", f"missed_{k}"]
    return keys


def _pick(d: dict, keys: Iterable[str]) -> dict:
    return {k: d[k] for k in keys if k in d}


def comparison_rows(run: RunRecord, baselines: Sequence[dict] = ()) -> list[dict]:
    """One row per (evaluation set, model) with whatever metrics the records hold."""
    labels = run.labels
    keys = metric_keys(labels)
    rows: list[dict] = []
    last = run.final_round if run.ok_rounds() else None
    best, _ = run.best()

    def add(eval_set, model, kind, metrics, **extra):
        m = _pick(metrics, keys)
        if m:
            rows.append({"eval_set": eval_set, "model": model, "kind": kind, **extra, **m})

    # held-out (coordinator): central metrics of the global model after the chosen round
    if last is not None:
        add(HELD_OUT, GLOBAL_FINAL, "global", run.central(last), round=last)
    add(HELD_OUT, GLOBAL_BEST, "global", run.central(best), round=best)
    # each site's validation cases (the same cases for every model evaluated there)
    final = {r["site"]: r for r in run.final_sites.get("sites", [])}
    n_val = {s: int(r["num_val"]) for s, r in final.items()
             if isinstance(r.get("num_val"), (int, float)) and math.isfinite(r["num_val"])}

    def cases(site):
        return {"cases": n_val[site]} if site in n_val else {}
    for site in sorted(final):
        add(site, GLOBAL_FINAL, "global", strip_prefix(final[site], GLOBAL), round=last, **cases(site))
    for site, m in sorted(run.site_metrics_after(best).items()):
        add(site, GLOBAL_BEST, "global", strip_prefix(m, GLOBAL), round=best, **cases(site))
    for site in sorted(final):
        add(site, LOCAL, "local", strip_prefix(final[site], LOCAL_PREFIX), round=last, **cases(site))
    for b in baselines:
        for r in b["rows"]:
            extra = {"cases": r["cases"]} if "cases" in r else {}
            add(str(r.get("eval_set", "?")), f"{b['model']} (baseline)", "baseline", r, **extra)
    return rows


def fill_from_cases(rows: list[dict], per_case: Sequence[dict], labels: dict) -> None:
    """Held-out rows get what only a per-case re-evaluation knows: the case count and
    ASSD (the run records carry Dice/HD95/missed only)."""
    for r in rows:
        if r["eval_set"] != HELD_OUT:
            continue
        cases = [c for c in per_case if c["model"] == r["model"] and c.get("eval_set", HELD_OUT) == HELD_OUT]
        if not cases:
            continue
        r.setdefault("cases", len(cases))
        for c in foreground(labels):
            vals = [num(x.get(f"assd_{c}")) for x in cases]
            vals = [v for v in vals if math.isfinite(v)]
            if vals and f"assd_{c}" not in r:
                r[f"assd_{c}"] = float(np.mean(vals))


def gain_rows(rows: list[dict], labels: dict) -> list[dict]:
    """Per site: the global models minus that site's local-only model, on its own validation set."""
    out = []
    local = {r["eval_set"]: r for r in rows if r["model"] == LOCAL}
    for site, lo in sorted(local.items()):
        for gm in (GLOBAL_FINAL, GLOBAL_BEST):
            g = next((r for r in rows if r["eval_set"] == site and r["model"] == gm), None)
            if g is None:
                continue
            row = {"site": site, "model": gm}
            for k in ["dice_fg_mean"] + [f"dice_{c}" for c in foreground(labels)]:
                row[f"gain_{k}"] = num(g.get(k)) - num(lo.get(k))
            for c in foreground(labels):  # negative = the global model's surfaces are closer
                row[f"delta_hd95_{c}"] = num(g.get(f"hd95_{c}")) - num(lo.get(f"hd95_{c}"))
            out.append(row)
    return out


def eval_sets(rows: list[dict]) -> list[str]:
    """Held-out first, then the sites in name order."""
    sets = list(dict.fromkeys(r["eval_set"] for r in rows))
    return ([HELD_OUT] if HELD_OUT in sets else []) + sorted(s for s in sets if s != HELD_OUT)
