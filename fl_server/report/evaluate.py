"""The held-out re-evaluation: the run's saved global models (and baselines)
on the coordinator's cases, per case, with overlay cases. A global model the
run's cross-site stage already measured there (same hash, same cases) is not
evaluated again: its recorded rows are used and only the drawn cases predicted.

Everything the report does with torch is in this module, behind
``held_out_evaluation``; the rest of the report reads records only.
"""
from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Sequence

import numpy as np

from imaging_core.errors import ImagingError

from ..cross_site import model_hash_of
from ..records import RunRecord
from .reading import GLOBAL_BEST, GLOBAL_FINAL, HELD_OUT, foreground, load_baseline, num as _num
from .titles import fmt as _fmt


def _case_row(model: str, kind: str, case_id: str, m: dict, labels: dict) -> dict:
    # "original": measured on the case's own label file, in its grid (Task.evaluate)
    row = {"model": model, "kind": kind, "eval_set": HELD_OUT, "case_id": case_id,
           "space": m.get("space", "preprocessed")}
    fg = foreground(labels)
    for c in fg:
        row[f"dice_{c}"] = m["dice"].get(c, math.nan)
        row[f"hd95_{c}"] = m["hd95"].get(c, math.nan)
        row[f"assd_{c}"] = m["assd"].get(c, math.nan)
        row[f"missed_{c}"] = int(int(c) in m.get("missed", []))
    d = [row[f"dice_{c}"] for c in fg if math.isfinite(_num(row[f"dice_{c}"]))]
    row["dice_fg_mean"] = float(np.mean(d)) if d else math.nan
    return row


def held_out_evaluation(run: RunRecord | str | os.PathLike, baselines: Sequence[str | os.PathLike] = (),
                        federation_path: str | os.PathLike | None = None,
                        data_base: str | os.PathLike | None = None, n_overlays: int = 3,
                        device: str = "cpu", console=None) -> tuple[list[dict], list[dict]]:
    """Per-case metrics of the global (best, final) and baseline models on the coordinator's
    held-out cases, and overlay cases (best, median and worst Dice of the best global model).

    Uses the server's preprocessed cache (RUN/coordinator-cache). ``federation_path``
    and ``data_base`` default to what run.json records. Returns ``([], [])`` when
    the run does not say where its federation config is, or it has no coordinator.
    """
    from fl_common.config import load_federation
    from imaging_core.task import Task
    from imaging_core.train.checkpoint import load_checkpoint

    run = run if isinstance(run, RunRecord) else RunRecord.open(run)
    say = (console.print if console is not None else print)
    fpath = federation_path or run.federation_path
    if not fpath:
        say("report: run.json does not record the federation config; held-out cases not drawn "
            "(pass --federation)")
        return [], []
    fed = load_federation(fpath, data_base=data_base or run.data_base)  # config reads: here only
    if run.preprocess is not None:  # the table the server's cache was built with (the plan's under "auto")
        fed = fed.with_preprocess(run.preprocess)
    if fed.coordinator is None:
        return [], []
    # the one evaluation path (sliding window, [postprocess] chain, AMP policy), as the server scored it
    task = Task(fed, device)
    data = task.site_data(fed.coordinator, run.coordinator_cache, fed.federation.seed)
    rep = data.prepare(prune=False)
    cases = sorted((c for c in rep.cases if (c.path / "label.npy").exists()), key=lambda c: c.case_id)
    labels = run.labels
    models = []
    for which, name in (("best", GLOBAL_BEST), ("final", GLOBAL_FINAL)):
        try:
            p = run.model_path(which)
        except ImagingError as e:
            say(f"report: {e}; {name} not re-evaluated")
            continue
        models.append((name, "global", run.load(p)))  # refused unless it is the file the run recorded
    for b in baselines:
        bd = Path(b)
        ck = next((bd / n for n in ("best.pt", "last.pt") if (bd / n).is_file()), None)
        if ck is not None:
            st = load_checkpoint(ck)
            models.append((f"{load_baseline(bd)['model']} (baseline)", "baseline", st.get("net", st)))
    rows, preds = [], {}
    keep_from = GLOBAL_BEST if any(m[0] == GLOBAL_BEST for m in models) else GLOBAL_FINAL
    recorded = run.held_out_cases  # what the run's cross-site stage measured, by model hash
    ids = {c.case_id for c in cases}
    nets = {}
    for name, kind, state in models:
        nets[name] = net = task.net_from_state(state, run.info.get("model"))
        same = recorded.get(model_hash_of(state)) if kind == "global" else None
        if same is not None and {m.get("case_id") for m in same} == ids:  # the same model on the same cases
            rows += [_case_row(name, kind, m["case_id"], m, labels) for m in same]
            continue

        def keep(cc, item, pred, name=name):
            if name == keep_from:
                preds[cc.case_id] = (item, pred, tuple(float(s) for s in item["image"].spacing))
        ev = task.evaluate(net, cases, on_prediction=keep)
        rows += [_case_row(name, kind, m["case_id"], m, labels) for m in ev.per_case]
    # representative cases: best, median and worst held-out Dice of the chosen global model
    chosen = keep_from
    ranked = sorted((r for r in rows if r["model"] == chosen),
                    key=lambda r: -_num(r["dice_fg_mean"]) if math.isfinite(_num(r["dice_fg_mean"])) else 1e9)
    pick = list(dict.fromkeys([ranked[i]["case_id"] for i in
                               sorted({0, len(ranked) // 2, len(ranked) - 1})] if ranked else []))[:n_overlays]
    missing = [c for c in cases if c.case_id in pick and c.case_id not in preds]
    if missing and chosen in nets:  # its metrics were reused: predict the drawn cases only
        def keep_drawn(cc, item, pred):
            preds[cc.case_id] = (item, pred, tuple(float(s) for s in item["image"].spacing))
        task.evaluate(nets[chosen], missing, on_prediction=keep_drawn)
    pick = [cid for cid in pick if cid in preds]
    overlays = []
    sources = {c.case_id: c for c in data.datalist.cases}
    for cid in pick:
        item, pred, sp = preds[cid]
        r = next(r for r in ranked if r["case_id"] == cid)
        dice = ", ".join(f"{labels[c]} {_fmt(r[f'dice_{c}'])}" for c in labels if c != "0")
        shown = _original_grid(sources.get(cid), item, pred, say)
        if shown is None:  # the original files are gone: the preprocessed grid (RAS) is what is left
            shown = {"image": np.asarray(item["image"].array[0]), "gt": np.asarray(item["label"].array[0]),
                     "pred": pred, "spacing": sp}
        overlays.append({"name": cid, **shown, "title": f"held-out {cid}, {chosen}: Dice {dice}"})
    return rows, overlays


def _original_grid(case, item: dict, pred: np.ndarray, say) -> dict | None:
    """Image, ground truth and prediction on the case's original grid: the stored image and
    label as read from disk, the prediction resampled there (nearest neighbour) from the
    preprocessed grid it was made on, the way `fedvox infer` writes it."""
    from imaging_core.io import Volume, load_volume
    from imaging_core.transforms.spatial import resample_to_grid
    if case is None or case.label is None:
        return None
    try:
        img, lab = load_volume(case.image), load_volume(case.label)
    except (ImagingError, OSError) as e:
        say(f"report: {e}; overlay of {case.case_id} drawn on the preprocessed grid")
        return None
    # one voxel of background around the (possibly cropped) grid: the resampler repeats the
    # border outside it, which would smear a label touching the crop edge over the image
    shift = np.eye(4)
    shift[:3, 3] = -1
    padded = np.pad(np.asarray(pred, dtype=np.uint8), 1)[None]
    pv = Volume(padded, np.asarray(item["image"].affine) @ shift, {})
    back = resample_to_grid(pv, img.affine, img.spatial_shape, mode="nearest", dtype=np.uint8)
    return {"image": np.asarray(img.array[0]), "gt": np.asarray(lab.array[0]), "pred": back.array[0],
            "affine": np.asarray(img.affine)}


