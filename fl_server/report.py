"""`fedvox report RUN`: per-site vs global comparison of a federated run.

Reads the run directory (run.json, rounds.json, sites.json, final_sites.json)
and optional baseline run directories from `fedvox train` (final.json), and
writes to RUN/report/:

    summary.csv / summary.json   one row per (evaluation set, model): Dice, HD95,
                                 ASSD (when recorded) per structure, missed counts
    gains.csv                    global vs each site's local-only model, per site
    learning_curves.png          per-round Dice (held-out global, each site's
                                 global and local-only) and training losses
    local_vs_global.png          grouped bars per site and structure
    hd95_box.png                 HD95 per structure and model
    overlay_*.png                image + ground truth + prediction (when cases are given)
    figures.json                 what each plot shows (series counts), for checks
    report.md                    the whole summary, embedding the PNGs by relative path

Which model a number belongs to: a round-t row of sites.json evaluates the
global model the round started from (after round t-1) and the site's
local-only model after t rounds; rounds.json's round-t central metrics are for
the global model after round t (round 0 = the initial model).
"""
from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
from matplotlib.figure import Figure

from imaging_core.errors import ImagingError

from .records import read_json, write_csv, write_json

HELD_OUT = "held-out"
GLOBAL_FINAL, GLOBAL_BEST, LOCAL = "global (final)", "global (best)", "local-only"
# label colours for overlays: label 1, 2, ... (cycled)
LABEL_COLORS = [(0.95, 0.15, 0.15), (1.0, 0.85, 0.0), (0.1, 0.75, 1.0), (0.3, 0.95, 0.3),
                (0.9, 0.3, 0.9), (1.0, 0.55, 0.1)]
MODEL_COLORS = {LOCAL: "#8c8c8c", GLOBAL_FINAL: "#1f77b4", GLOBAL_BEST: "#17becf"}
_BASELINE_COLORS = ["#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b"]


# ----------------------------------------------------------------------------- reading
_read_json = read_json  # one reader for run-directory files (records.py)


def load_run(run_dir: str | os.PathLike) -> dict:
    d = Path(run_dir)
    if not d.is_dir():
        raise ImagingError(d, "run directory not found")
    info = _read_json(d / "run.json")
    return {"dir": d, "info": info, "rounds": _read_json(d / "rounds.json", []),
            "sites": _read_json(d / "sites.json", []),
            "final_sites": _read_json(d / "final_sites.json", {"sites": [], "failures": []}),
            "labels": {str(k): str(v) for k, v in (info.get("labels") or {"0": "background",
                                                                          "1": "foreground"}).items()}}


def load_baseline(path: str | os.PathLike) -> dict:
    p = Path(path)
    f = p / "final.json" if p.is_dir() else p
    doc = _read_json(f)
    if "rows" not in doc:
        raise ImagingError(f, "not a baseline final.json (no 'rows')")
    return {"dir": p if p.is_dir() else p.parent, "model": str(doc.get("model", p.name)), "rows": doc["rows"]}


def _num(v) -> float:
    try:
        return float(v)
    except (TypeError, ValueError):
        return math.nan


def _strip(row: dict, prefix: str) -> dict:
    return {k[len(prefix):]: v for k, v in row.items() if k.startswith(prefix)}


def _ok_rounds(run: dict) -> list[int]:
    return sorted(r["round"] for r in run["rounds"] if r.get("status", "ok") == "ok")


def _best_round(run: dict) -> int | None:
    br = run["info"].get("best_round")
    if br is not None:
        return int(br)
    metric = f"central/{run['info'].get('best_metric', 'dice_fg_mean')}"
    vals = [(r["round"], _num(r.get(metric))) for r in run["rounds"]]
    vals = [(r, v) for r, v in vals if math.isfinite(v)]
    return max(vals, key=lambda t: t[1])[0] if vals else None


# -------------------------------------------------------------------------- comparison
def _metric_keys(labels: dict) -> list[str]:
    keys = ["dice_fg_mean"]
    for k in labels:
        if k != "0":
            keys += [f"dice_{k}", f"hd95_{k}", f"assd_{k}", f"missed_{k}"]
    return keys


def _pick(d: dict, keys: Iterable[str]) -> dict:
    return {k: d[k] for k in keys if k in d}


def comparison_rows(run: dict, baselines: Sequence[dict] = ()) -> list[dict]:
    """One row per (evaluation set, model) with whatever metrics the records hold."""
    labels = run["labels"]
    keys = _metric_keys(labels)
    rows: list[dict] = []
    ok = _ok_rounds(run)
    last = ok[-1] if ok else None
    best = _best_round(run)
    by_round = {r["round"]: r for r in run["rounds"]}

    def add(eval_set, model, kind, metrics, **extra):
        m = _pick(metrics, keys)
        if m:
            rows.append({"eval_set": eval_set, "model": model, "kind": kind, **extra, **m})

    # held-out (coordinator): central metrics of the global model after the chosen round
    if last is not None:
        add(HELD_OUT, GLOBAL_FINAL, "global", _strip(by_round.get(last, {}), "central/"), round=last)
    if best is not None:
        add(HELD_OUT, GLOBAL_BEST, "global", _strip(by_round.get(best, {}), "central/"), round=best)
    # each site's validation cases (the same cases for every model evaluated there)
    final = {r["site"]: r for r in run["final_sites"].get("sites", [])}
    n_val = {s: int(r["num_val"]) for s, r in final.items()
             if isinstance(r.get("num_val"), (int, float)) and math.isfinite(r["num_val"])}

    def cases(site):
        return {"cases": n_val[site]} if site in n_val else {}
    for site in sorted(final):
        add(site, GLOBAL_FINAL, "global", _strip(final[site], "global/"), round=last, **cases(site))
    if best is not None:
        for site, m in sorted(_site_metrics_after(run, best, last).items()):
            add(site, GLOBAL_BEST, "global", _strip(m, "global/"), round=best, **cases(site))
    for site in sorted(final):
        add(site, LOCAL, "local", _strip(final[site], "local/"), round=last, **cases(site))
    for b in baselines:
        for r in b["rows"]:
            extra = {"cases": r["cases"]} if "cases" in r else {}
            add(str(r.get("eval_set", "?")), f"{b['model']} (baseline)", "baseline", r, **extra)
    return rows


def _site_metrics_after(run: dict, r: int, last: int | None) -> dict[str, dict]:
    """Site rows evaluating the global model after round ``r`` (see module doc)."""
    if last is not None and r >= last:
        return {row["site"]: row for row in run["final_sites"].get("sites", [])}
    return {row["site"]: _strip(row, "val/") for row in run["sites"] if row.get("round") == r + 1}


def _fill_from_cases(rows: list[dict], per_case: Sequence[dict], labels: dict) -> None:
    """Held-out rows get what only a per-case re-evaluation knows: the case count and
    ASSD (the run records carry Dice/HD95/missed only)."""
    for r in rows:
        if r["eval_set"] != HELD_OUT:
            continue
        cases = [c for c in per_case if c["model"] == r["model"] and c.get("eval_set", HELD_OUT) == HELD_OUT]
        if not cases:
            continue
        r.setdefault("cases", len(cases))
        for c in labels:
            vals = [_num(x.get(f"assd_{c}")) for x in cases]
            vals = [v for v in vals if math.isfinite(v)]
            if c != "0" and vals and f"assd_{c}" not in r:
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
            for k in ["dice_fg_mean"] + [f"dice_{c}" for c in labels if c != "0"]:
                row[f"gain_{k}"] = _num(g.get(k)) - _num(lo.get(k))
            for c in labels:
                if c != "0":  # negative = the global model's surfaces are closer
                    row[f"delta_hd95_{c}"] = _num(g.get(f"hd95_{c}")) - _num(lo.get(f"hd95_{c}"))
            out.append(row)
    return out


# ------------------------------------------------------------------------------ plots
def _series_count(fig: Figure) -> dict:
    return {"axes": [{"title": ax.get_title(), "lines": len(ax.get_lines()),
                      "bar_groups": len(ax.containers), "legend": [t.get_text() for t in
                                                                   (ax.get_legend().get_texts()
                                                                    if ax.get_legend() else [])]}
                     for ax in fig.axes]}


def plot_learning_curves(run: dict, metric: str = "dice_fg_mean") -> Figure:
    """Left: per-round Dice of the global model on held-out cases and on each site's
    validation cases, and of each site's local-only model (dashed). Right: training losses."""
    fig = Figure(figsize=(12, 4.6), constrained_layout=True)
    ax, ax2 = fig.subplots(1, 2)
    cent = [(r["round"], _num(r.get(f"central/{metric}"))) for r in sorted(run["rounds"], key=lambda r: r["round"])]
    cent = [(x, y) for x, y in cent if math.isfinite(y)]
    if cent:
        ax.plot(*zip(*cent), "k-o", lw=2.2, label=f"global, {HELD_OUT}")
    sites = sorted({r["site"] for r in run["sites"]})
    last = (_ok_rounds(run) or [None])[-1]
    final = {r["site"]: r for r in run["final_sites"].get("sites", [])}
    cmap = _site_colors(sites)
    for s in sites:
        rows = sorted((r for r in run["sites"] if r["site"] == s), key=lambda r: r["round"])
        g = [(r["round"] - 1, _num(r.get(f"val/global/{metric}"))) for r in rows]
        lo = [(r["round"], _num(r.get(f"val/local/{metric}"))) for r in rows]
        if s in final and last is not None:  # the final evaluation: both models after the last round
            g.append((last, _num(final[s].get(f"global/{metric}"))))
            lo = [p for p in lo if p[0] != last] + [(last, _num(final[s].get(f"local/{metric}")))]
        g = [p for p in g if math.isfinite(p[1])]
        lo = [p for p in lo if math.isfinite(p[1])]
        if g:
            ax.plot(*zip(*g), "-o", color=cmap[s], ms=4, label=f"global, {s}")
        if lo:
            ax.plot(*zip(*lo), "--s", color=cmap[s], ms=4, alpha=0.8, label=f"local-only, {s}")
    from matplotlib.ticker import MaxNLocator
    for a in (ax, ax2):
        a.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_title(f"{metric} per round")
    ax.set_xlabel("model after round")
    ax.set_ylabel("Dice")
    ax.grid(alpha=0.3)
    if ax.get_lines():
        ax.legend(fontsize=7, loc="lower right")
    for s in sites:
        rows = sorted((r for r in run["sites"] if r["site"] == s), key=lambda r: r["round"])
        for key, style, name in (("train/train_loss", "-o", "federated"),
                                 ("train/local_train_loss", "--s", "local-only")):
            pts = [(r["round"], _num(r.get(key))) for r in rows]
            pts = [p for p in pts if math.isfinite(p[1])]
            if pts:
                ax2.plot(*zip(*pts), style, color=cmap[s], ms=4, label=f"{name}, {s}")
    ax2.set_title("training loss per round")
    ax2.set_xlabel("round")
    ax2.set_ylabel("loss (last local epoch)")
    ax2.grid(alpha=0.3)
    if ax2.get_lines():
        ax2.legend(fontsize=7)
    return fig


def _site_colors(sites) -> dict:
    import matplotlib
    cm = matplotlib.colormaps["tab10"]
    return {s: cm(i % 10) for i, s in enumerate(sorted(sites))}


def _model_color(model: str, baselines: list[str]) -> str:
    if model in MODEL_COLORS:
        return MODEL_COLORS[model]
    return _BASELINE_COLORS[baselines.index(model) % len(_BASELINE_COLORS)] if model in baselines else "#444444"


def plot_local_vs_global(rows: list[dict], labels: dict) -> Figure:
    """One panel per foreground structure: for each site's validation set, bars for the
    local-only model, the global models and any baselines evaluated there."""
    sites = sorted({r["eval_set"] for r in rows if r["model"] == LOCAL})
    if not sites:  # no local-only baselines recorded: compare models per site anyway
        sites = sorted({r["eval_set"] for r in rows if r["eval_set"] != HELD_OUT})
    models = [LOCAL, GLOBAL_FINAL, GLOBAL_BEST]
    baselines = sorted({r["model"] for r in rows if r["kind"] == "baseline"})
    models = [m for m in models + baselines if any(r["model"] == m and r["eval_set"] in sites for r in rows)]
    fg = [c for c in labels if c != "0"]
    fig = Figure(figsize=(max(6, 2.2 * len(sites) * len(fg)), 4.4), constrained_layout=True)
    axes = fig.subplots(1, len(fg), squeeze=False)[0]
    width = 0.8 / max(len(models), 1)
    for ax, c in zip(axes, fg):
        x = np.arange(len(sites))
        for i, m in enumerate(models):
            vals = []
            for s in sites:
                r = next((r for r in rows if r["eval_set"] == s and r["model"] == m), None)
                vals.append(_num(r.get(f"dice_{c}")) if r else math.nan)
            bars = ax.bar(x + (i - (len(models) - 1) / 2) * width, np.nan_to_num(vals, nan=0.0), width,
                          label=m, color=_model_color(m, baselines))
            for b, v in zip(bars, vals):
                ax.annotate("n/a" if not math.isfinite(v) else f"{v:.2f}",
                            (b.get_x() + b.get_width() / 2, b.get_height()), ha="center", va="bottom",
                            fontsize=7, xytext=(0, 1), textcoords="offset points")
        ax.set_xticks(x, sites)
        ax.set_ylim(0, 1.08)
        ax.set_ylabel("Dice")
        ax.set_title(f"Dice: {labels[c]} (each site's validation cases)")
        ax.grid(axis="y", alpha=0.3)
        if ax.containers:
            ax.legend(fontsize=7, loc="upper left")
        else:
            ax.text(0.5, 0.5, "no per-site results recorded", ha="center", va="center", transform=ax.transAxes)
    return fig


def plot_hd95_box(rows: list[dict], labels: dict, per_case: Sequence[dict] | None = None) -> Figure:
    """One panel per structure, one box per model. Values: per-case HD95 when
    ``per_case`` rows ({"model", "hd95_<c>", ...}) are given, otherwise each
    evaluation set's mean HD95. Missed structures (HD95 undefined) are counted
    under the box, not silently dropped."""
    src = list(per_case) if per_case else rows
    models = list(dict.fromkeys(r["model"] for r in src))
    baselines = sorted({r["model"] for r in src if r.get("kind") == "baseline"})
    fg = [c for c in labels if c != "0"]
    fig = Figure(figsize=(max(6, 1.6 * len(models) * len(fg)), 4.6), constrained_layout=True)
    axes = fig.subplots(1, len(fg), squeeze=False)[0]
    unit = "cases" if per_case else "evaluation sets"
    for ax, c in zip(axes, fg):
        data, names, missed = [], [], []
        for m in models:
            vals = [_num(r.get(f"hd95_{c}")) for r in src if r["model"] == m]
            miss = sum(int(_num(r.get(f"missed_{c}"))) for r in src if r["model"] == m
                       and math.isfinite(_num(r.get(f"missed_{c}"))))
            data.append([v for v in vals if math.isfinite(v)])
            names.append(m)
            missed.append(miss)
        pos = np.arange(1, len(models) + 1)
        keep = [i for i, d in enumerate(data) if d]
        if keep:
            bp = ax.boxplot([data[i] for i in keep], positions=pos[keep], widths=0.6, patch_artist=True,
                            showmeans=True)
            for patch, i in zip(bp["boxes"], keep):
                patch.set_facecolor(_model_color(names[i], baselines))
                patch.set_alpha(0.6)
            for i in keep:  # the points themselves: few of them, so show them
                ax.plot(np.full(len(data[i]), pos[i]), data[i], "k.", alpha=0.6, ms=5)
        ax.set_xticks(pos, [f"{n}\n{len(d)} {unit[:-1] if len(d) == 1 else unit}"
                            + (f"\n{k} missed" if k else "") for n, d, k in zip(names, data, missed)],
                      fontsize=7)
        ax.set_xlim(0.4, len(models) + 0.6)
        ax.set_ylabel("HD95 (mm)")
        ax.set_title(f"HD95: {labels[c]} " + ("(held-out cases)" if per_case else "(mean per evaluation set)"))
        ax.grid(axis="y", alpha=0.3)
    return fig


def _label_rgba(lab: np.ndarray, alpha: float) -> np.ndarray:
    rgba = np.zeros(lab.shape + (4,), dtype=np.float32)
    for v in np.unique(lab):
        if v == 0:
            continue
        rgba[lab == v] = (*LABEL_COLORS[(int(v) - 1) % len(LABEL_COLORS)], alpha)
    return rgba


def representative_slices(gt: np.ndarray, pred: np.ndarray | None = None) -> tuple[int, int, int]:
    """Per axis, the slice with the most ground-truth foreground (prediction if the gt is
    empty, the centre if both are)."""
    ref = gt if np.any(gt) else (pred if pred is not None and np.any(pred) else None)
    if ref is None:
        return tuple(s // 2 for s in gt.shape)
    fgm = ref > 0
    return tuple(int(np.argmax(fgm.sum(axis=tuple(a for a in range(3) if a != ax)))) for ax in range(3))


def overlay_png(image: np.ndarray, gt: np.ndarray, pred: np.ndarray, out_path: str | os.PathLike,
                spacing: Sequence[float] = (1.0, 1.0, 1.0), labels: dict | None = None,
                title: str | None = None, slices: Sequence[int] | None = None, alpha: float = 0.45) -> Path:
    """Image + ground truth (top row) and image + prediction (bottom row) on axial,
    coronal and sagittal slices through the structure. Arrays are (X, Y, Z) in RAS
    order (a leading channel axis of 1 is dropped); ``spacing`` sets the aspect."""
    img, g, p = (np.asarray(a) for a in (image, gt, pred))
    img = img[0] if img.ndim == 4 else img
    g = g[0] if g.ndim == 4 else g
    p = p[0] if p.ndim == 4 else p
    if not (img.shape == g.shape == p.shape) or img.ndim != 3:
        raise ValueError(f"image, gt and pred must be 3D of one shape, got {img.shape}, {g.shape}, {p.shape}")
    sx, sy, sz = (float(s) for s in spacing)
    ix, iy, iz = slices if slices is not None else representative_slices(g, p)
    lo, hi = np.percentile(img, [1, 99]) if img.size else (0, 1)
    hi = hi if hi > lo else lo + 1
    # (extract 2D, aspect = row spacing / column spacing); shown with rows = 2nd axis, origin lower
    views = [("axial z=%d" % iz, lambda a: a[:, :, iz], sy / sx),
             ("coronal y=%d" % iy, lambda a: a[:, iy, :], sz / sx),
             ("sagittal x=%d" % ix, lambda a: a[ix, :, :], sz / sy)]
    fig = Figure(figsize=(11, 7.4), constrained_layout=True)
    axes = fig.subplots(2, 3)
    for col, (name, take, aspect) in enumerate(views):
        for row, (lab, what) in enumerate(((g, "ground truth"), (p, "prediction"))):
            ax = axes[row, col]
            ax.imshow(take(img).T, cmap="gray", vmin=lo, vmax=hi, origin="lower", aspect=aspect,
                      interpolation="nearest")
            ax.imshow(_label_rgba(take(lab).T, alpha), origin="lower", aspect=aspect, interpolation="nearest")
            if row == 1 and np.any(take(g)):  # where the prediction should be
                ax.contour(take(g).T > 0, levels=[0.5], colors="cyan", linewidths=0.9, origin="lower")
            ax.set_title(f"{what}: {name}" + (" (cyan: ground truth outline)" if row == 1 else ""),
                         fontsize=9)
            ax.set_xticks([])
            ax.set_yticks([])
    present = sorted((set(np.unique(g).tolist()) | set(np.unique(p).tolist())) - {0})
    if present:
        from matplotlib.patches import Patch
        names = labels or {}
        fig.legend(handles=[Patch(color=LABEL_COLORS[(int(v) - 1) % len(LABEL_COLORS)],
                                  label=str(names.get(str(int(v)), names.get(int(v), f"label {int(v)}"))))
                            for v in present], loc="outside lower center", ncol=len(present), fontsize=9)
    if title:
        fig.suptitle(title)
    out = Path(out_path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=90)
    return out


# -------------------------------------------------------------- held-out cases (optional)
def _case_row(model: str, kind: str, case_id: str, m: dict, labels: dict) -> dict:
    row = {"model": model, "kind": kind, "eval_set": HELD_OUT, "case_id": case_id}
    fg = [c for c in labels if c != "0"]
    for c in fg:
        row[f"dice_{c}"] = m["dice"].get(c, math.nan)
        row[f"hd95_{c}"] = m["hd95"].get(c, math.nan)
        row[f"assd_{c}"] = m["assd"].get(c, math.nan)
        row[f"missed_{c}"] = int(int(c) in m.get("missed", []))
    d = [row[f"dice_{c}"] for c in fg if math.isfinite(_num(row[f"dice_{c}"]))]
    row["dice_fg_mean"] = float(np.mean(d)) if d else math.nan
    return row


def held_out_evaluation(run_dir: str | os.PathLike, baselines: Sequence[str | os.PathLike] = (),
                        federation_path: str | os.PathLike | None = None,
                        data_base: str | os.PathLike | None = None, n_overlays: int = 3,
                        device: str = "cpu", console=None) -> tuple[list[dict], list[dict]]:
    """Per-case metrics of the global (best, final) and baseline models on the coordinator's
    held-out cases, and overlay cases (best, median and worst Dice of the best global model).

    Uses the server's preprocessed cache (RUN/coordinator-cache). Returns ``([], [])``
    when the run does not say where its federation config is, or it has no coordinator.
    """
    import torch
    from imaging_core.data.site_data import SiteData
    from imaging_core.inference.evaluate import predict_labels
    from imaging_core.metrics import case_metrics
    from imaging_core.nets.unet3d import unet_from_config
    from imaging_core.train.checkpoint import load_checkpoint
    from fl_common.config import load_federation

    run = load_run(run_dir)
    say = (console.print if console is not None else print)
    fpath = federation_path or run["info"].get("federation_path")
    if not fpath:
        say("report: run.json does not record the federation config; held-out cases not drawn "
            "(pass --federation)")
        return [], []
    fed = load_federation(fpath, data_base=data_base)
    if fed.coordinator is None:
        return [], []
    co = fed.coordinator
    data = SiteData(co.datalist_path, run["dir"] / "coordinator-cache", fed.preprocess, fed.sampling,
                    fed.augment, co.modality, fed.federation.seed)
    rep = data.prepare(prune=False)
    cases = sorted((c for c in rep.cases), key=lambda c: c.case_id)
    labels = run["labels"]
    k = len(labels)
    model_cfg = {kk: v for kk, v in dict(run["info"].get("model") or fed.model.model_dump()).items()
                 if kk != "name"}
    tc = fed.train
    roi = fed.roi
    models = []
    for which, name in (("best", GLOBAL_BEST), ("final", GLOBAL_FINAL)):
        p = run["dir"] / f"global_{which}.pt"
        if p.is_file():
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
            pred = predict_labels(net, item["image"].array, roi, dev, None, tc.overlap, tc.sw_batch_size)
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


# ---------------------------------------------------------------------- tables / text
def _fmt(v, nd=3) -> str:
    if isinstance(v, bool) or v is None:
        return "n/a" if v is None else str(v)
    if isinstance(v, int):
        return str(v)
    x = _num(v)
    if math.isnan(x):
        return "n/a"
    if math.isinf(x):
        return "inf"
    if float(x).is_integer() and nd == 0:
        return str(int(x))
    return f"{x:.{nd}f}"


def _columns(rows: list[dict], labels: dict) -> list[tuple[str, str, int]]:
    """(key, header, decimals) for the columns present in ``rows``."""
    cols = [("cases", "cases", 0), ("dice_fg_mean", "Dice fg", 3)]
    for c in labels:
        if c == "0":
            continue
        n = labels[c]
        cols += [(f"dice_{c}", f"Dice {n}", 3), (f"hd95_{c}", f"HD95 {n}", 1),
                 (f"assd_{c}", f"ASSD {n}", 2), (f"missed_{c}", f"missed {n}", 0)]
    return [col for col in cols if any(col[0] in r for r in rows)]


def _md_table(header: list[str], body: list[list[str]]) -> list[str]:
    return (["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
            + ["| " + " | ".join(b) + " |" for b in body])


def print_tables(rows: list[dict], gains: list[dict], labels: dict, console=None) -> None:
    from rich.console import Console
    from rich.table import Table
    if console is None:
        console = Console()
        if not console.is_terminal:  # piped: rich would wrap at 80 columns
            console = Console(width=200)
    cols = _columns(rows, labels)
    for es in _eval_sets(rows):
        t = Table(title=f"evaluation set: {es}", title_justify="left")
        t.add_column("model", no_wrap=True)
        for _, h, _ in cols:
            t.add_column(h, justify="right")
        for r in (r for r in rows if r["eval_set"] == es):
            t.add_row(r["model"], *[_fmt(r.get(k), d) if k in r else "" for k, _, d in cols])
        console.print(t)
    if gains:
        t = Table(title="gain of the global model over each site's local-only model "
                        "(Dice: + is better; HD95 mm: - is better)", title_justify="left")
        keys = [k for k in gains[0] if k.startswith(("gain_", "delta_"))]
        t.add_column("site", no_wrap=True)
        t.add_column("model", no_wrap=True)
        for k in keys:
            t.add_column(_gain_header(k, labels), justify="right")
        for g in gains:
            t.add_row(g["site"], g["model"], *[_signed(g[k], 3 if "dice" in k else 1) for k in keys])
        console.print(t)


def _gain_header(k: str, labels: dict) -> str:
    if k == "gain_dice_fg_mean":
        return "ΔDice fg"
    c = k.rsplit("_", 1)[1]
    return ("ΔDice " if k.startswith("gain_dice") else "ΔHD95 ") + labels.get(c, c)


def _signed(v, nd) -> str:
    x = _num(v)
    return "n/a" if not math.isfinite(x) else f"{x:+.{nd}f}"


def _eval_sets(rows: list[dict]) -> list[str]:
    sets = list(dict.fromkeys(r["eval_set"] for r in rows))
    return ([HELD_OUT] if HELD_OUT in sets else []) + sorted(s for s in sets if s != HELD_OUT)


def _report_md(run: dict, rows, gains, labels, figures: dict, overlays: list[Path], baselines,
               per_case=None) -> str:
    info = run["info"]
    sa = info.get("secure_aggregation")
    sa_txt = (", ".join(f"{k}={v}" for k, v in sa.items() if not isinstance(v, (dict, list)))
              if isinstance(sa, dict) else str(sa or "off"))
    ok = _ok_rounds(run)
    failed = [r for r in run["rounds"] if r.get("status") == "failed"]
    L = [f"# Federated run {info.get('run_id', run['dir'].name)}", "",
         f"Federation **{info.get('federation', '?')}**, strategy **{info.get('strategy', '?')}**, "
         f"{len([r for r in ok if r > 0])} of {info.get('rounds', '?')} rounds completed "
         f"({len(failed)} failed), status **{info.get('status', '?')}**. Secure aggregation: {sa_txt}. "
         f"Best round by held-out {info.get('best_metric', 'dice_fg_mean')}: {_best_round(run)}.", ""]
    if baselines:
        L += ["Baselines: " + ", ".join(f"`{b['model']}` ({b['dir']})" for b in baselines) + ".", ""]
    L += ["Metrics follow MONAI's semantics (Dice with ignore_empty, symmetric HD95 in mm). "
          "A structure a model missed entirely has no HD95; it is counted under *missed* instead "
          "of silently dropping out of the mean."
          + (" Held-out case counts and ASSD come from this report's re-evaluation of the saved "
             "models on the coordinator's cases (`held_out_cases.csv`); the other figures from the run "
             "records." if per_case else ""), ""]
    cols = _columns(rows, labels)
    L += ["## Every evaluation set x every model", ""]
    for es in _eval_sets(rows):
        L += [f"### {es}", ""]
        L += _md_table(["model"] + [h for _, h, _ in cols],
                       [[r["model"]] + [_fmt(r.get(k), d) if k in r else "" for k, _, d in cols]
                        for r in rows if r["eval_set"] == es])
        L.append("")
    if gains:
        keys = [k for k in gains[0] if k.startswith(("gain_", "delta_"))]
        L += ["## Gain of the global model over each site's local-only model", "",
              "On each site's own validation cases; Dice: + is better, HD95 (mm): - is better.", ""]
        L += _md_table(["site", "model"] + [_gain_header(k, labels) for k in keys],
                       [[g["site"], g["model"]] + [_signed(g[k], 3 if "dice" in k else 1) for k in keys]
                        for g in gains])
        L.append("")
    captions = {"learning_curves.png": "Learning curves: Dice per round (global on held-out and on each "
                "site; local-only dashed) and training losses.",
                "local_vs_global.png": "Local-only vs global model on each site's validation cases.",
                "hd95_box.png": "HD95 per structure and model."}
    L += ["## Plots", ""]
    for name in figures:
        L += [f"![{name}]({name})", "", f"*{captions.get(name, name)}*", ""]
    if overlays:
        L += ["## Held-out cases: image, ground truth and prediction", ""]
        for p in overlays:
            L += [f"![{p.name}]({p.name})", ""]
    L += ["## Files", "", "`summary.csv` / `summary.json` (the tables above), `gains.csv`, "
          "`figures.json` (what each plot contains)"
          + (", `held_out_cases.csv` (per-case metrics on the held-out cases)" if per_case else "") + ".", ""]
    return "\n".join(L)


# -------------------------------------------------------------------------------- main
def make_report(run_dir: str | os.PathLike, baselines: Sequence[str | os.PathLike] = (),
                overlays: Sequence[dict] = (), per_case: Sequence[dict] | None = None,
                console=None, quiet: bool = False, evaluate: bool = False,
                federation_path: str | os.PathLike | None = None, data_base: str | os.PathLike | None = None,
                device: str = "cpu") -> Path:
    """Write RUN/report/ (see module doc) and print the tables; returns the report directory.

    ``overlays``: cases to draw, each ``{"name", "image", "gt", "pred"}`` with (X, Y, Z)
    arrays and optional ``"spacing"``, ``"title"``. ``per_case``: optional per-case rows
    ({"model", "eval_set", "case_id", "hd95_<c>", ...}) for the HD95 box plot.
    ``evaluate``: compute both from the coordinator's held-out cases
    (``held_out_evaluation``; needs the federation config and the coordinator's data).
    """
    run = load_run(run_dir)
    bl = [load_baseline(b) for b in baselines]
    if evaluate and not overlays and per_case is None:
        per_case, overlays = held_out_evaluation(run_dir, baselines, federation_path, data_base,
                                                 device=device, console=console)
        per_case = per_case or None
    labels = run["labels"]
    out = run["dir"] / "report"
    out.mkdir(parents=True, exist_ok=True)
    rows = comparison_rows(run, bl)
    if per_case:
        _fill_from_cases(rows, per_case, labels)
    gains = gain_rows(rows, labels)
    write_csv(out / "summary.csv", rows)
    write_csv(out / "gains.csv", gains)
    if per_case:
        write_csv(out / "held_out_cases.csv", list(per_case))
    write_json(out / "summary.json", {"run": {k: v for k, v in run["info"].items()},
                                      "labels": labels, "rows": rows, "gains": gains,
                                      "baselines": [str(b["dir"]) for b in bl]})
    figs = {"learning_curves.png": plot_learning_curves(run),
            "local_vs_global.png": plot_local_vs_global(rows, labels),
            "hd95_box.png": plot_hd95_box(rows, labels, per_case)}
    described = {}
    for name, fig in figs.items():
        fig.savefig(out / name, dpi=100)
        described[name] = _series_count(fig)
    ov_paths = []
    for i, case in enumerate(overlays):
        name = str(case.get("name", f"case{i}")).replace(os.sep, "_")
        p = overlay_png(case["image"], case["gt"], case["pred"], out / f"overlay_{name}.png",
                        spacing=case.get("spacing", (1.0, 1.0, 1.0)), labels=labels,
                        title=case.get("title", name))
        ov_paths.append(p)
        described[p.name] = {"overlay": True}
    write_json(out / "figures.json", described)
    (out / "report.md").write_text(_report_md(run, rows, gains, labels, figs, ov_paths, bl, per_case))
    if not quiet:
        print_tables(rows, gains, labels, console)
        (console.print if console else print)(f"report written to {out / 'report.md'}")
    return out


def report_main(argv=None) -> int:
    """`fedvox report RUN [--baseline DIR ...]`."""
    import argparse
    ap = argparse.ArgumentParser(prog="fedvox report")
    ap.add_argument("run", help="federated run directory")
    ap.add_argument("--baseline", action="append", default=[], help="baseline run dir from `fedvox train`")
    ap.add_argument("--federation", default=None, help="federation TOML (if run.json does not record it)")
    ap.add_argument("--data-base", default=None, help="base directory of relative site data roots")
    ap.add_argument("--no-cases", action="store_true",
                    help="skip re-evaluating the held-out cases (per-case HD95 and overlay PNGs)")
    ap.add_argument("--device", default="cpu")
    a = ap.parse_args(argv)
    make_report(a.run, a.baseline, evaluate=not a.no_cases, federation_path=a.federation,
                data_base=a.data_base, device=a.device)
    return 0
