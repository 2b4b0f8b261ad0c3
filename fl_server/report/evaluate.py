"""The held-out re-evaluation: the run's saved global models (and baselines)
on the coordinator's cases, per case, with overlay cases.

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

from ..records import RunRecord
from .reading import GLOBAL_BEST, GLOBAL_FINAL, HELD_OUT, foreground, load_baseline, num as _num
from .titles import fmt as _fmt


def _case_row(model: str, kind: str, case_id: str, m: dict, labels: dict) -> dict:
    row = {"model": model, "kind": kind, "eval_set": HELD_OUT, "case_id": case_id}
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
    import torch
    from imaging_core.data.site_data import SiteData
    from imaging_core.inference.evaluate import predict_labels
    from imaging_core.metrics import case_metrics
    from imaging_core.nets.unet3d import unet_from_config
    from imaging_core.train.checkpoint import load_checkpoint
    from ..config import load_federation

    run = run if isinstance(run, RunRecord) else RunRecord.open(run)
    say = (console.print if console is not None else print)
    fpath = federation_path or run.federation_path
    if not fpath:
        say("report: run.json does not record the federation config; held-out cases not drawn "
            "(pass --federation)")
        return [], []
    fed = load_federation(fpath, data_base=data_base or run.data_base)  # config reads: here only
    if "coordinator" not in fed:
        return [], []
    co = fed["coordinator"]
    data = SiteData(co["datalist_path"], run.coordinator_cache, fed["preprocess"], fed["sampling"],
                    fed["augment"], co["modality"], int(fed["federation"].get("seed", 0)))
    rep = data.prepare(prune=False)
    cases = sorted((c for c in rep.cases), key=lambda c: c.case_id)
    labels = run.labels
    k = len(labels)
    model_cfg = {kk: v for kk, v in dict(run.info.get("model") or fed["model"]).items() if kk != "name"}
    tc = fed["train"]
    roi = tuple(fed["sampling"]["patch_size"])
    models = []
    for which, name in (("best", GLOBAL_BEST), ("final", GLOBAL_FINAL)):
        try:
            p = run.model_path(which)
        except ImagingError as e:
            say(f"report: {e}; {name} not re-evaluated")
            continue
        models.append((name, "global", load_checkpoint(p)))
    for b in baselines:
        bd = Path(b)
        ck = next((bd / n for n in ("best.pt", "last.pt") if (bd / n).is_file()), None)
        if ck is not None:
            st = load_checkpoint(ck)
            models.append((f"{load_baseline(bd)['model']} (baseline)", "baseline", st.get("net", st)))
    rows, preds = [], {}
    dev = torch.device(device)
    for name, kind, state in models:
        net = unet_from_config({**model_cfg, "in_channels": 1, "out_channels": k})
        net.load_state_dict({kk: torch.as_tensor(v) for kk, v in state.items()}, strict=False)
        net.to(dev).eval()
        for cc in cases:
            item = cc.load(mmap=False)  # writable arrays: torch warns on read-only memmaps
            if "label" not in item:
                continue
            pred = predict_labels(net, item["image"].array, roi, dev, None, float(tc.get("overlap", 0.5)),
                                  int(tc.get("sw_batch_size", 4)))
            gt = np.asarray(item["label"].array[0])
            sp = tuple(float(s) for s in item["image"].spacing)
            rows.append(_case_row(name, kind, cc.case_id, case_metrics(pred, gt, k, spacing=sp), labels))
            if kind == "global" and (name == GLOBAL_BEST or not any(m[0] == GLOBAL_BEST for m in models)):
                preds[cc.case_id] = (item, pred, sp)
    # representative cases: best, median and worst held-out Dice of the chosen global model
    chosen = GLOBAL_BEST if any(m[0] == GLOBAL_BEST for m in models) else GLOBAL_FINAL
    ranked = sorted((r for r in rows if r["model"] == chosen and r["case_id"] in preds),
                    key=lambda r: -_num(r["dice_fg_mean"]) if math.isfinite(_num(r["dice_fg_mean"])) else 1e9)
    pick = list(dict.fromkeys([ranked[i]["case_id"] for i in
                               sorted({0, len(ranked) // 2, len(ranked) - 1})] if ranked else []))[:n_overlays]
    overlays = []
    for cid in pick:
        item, pred, sp = preds[cid]
        r = next(r for r in ranked if r["case_id"] == cid)
        dice = ", ".join(f"{labels[c]} {_fmt(r[f'dice_{c}'])}" for c in labels if c != "0")
        overlays.append({"name": cid, "image": np.asarray(item["image"].array[0]),
                         "gt": np.asarray(item["label"].array[0]), "pred": pred, "spacing": sp,
                         "title": f"held-out {cid}, {chosen}: Dice {dice}"})
    return rows, overlays


