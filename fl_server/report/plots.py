"""The report's matplotlib figures: learning curves, local-only vs global bars,
HD95 boxes. Figures are built on ``matplotlib.figure.Figure`` (no pyplot state),
so the report runs headless and in threads."""
from __future__ import annotations

import math
from typing import Sequence

import numpy as np
from matplotlib.figure import Figure

from fl_common.keys import GLOBAL, LOCAL as LOCAL_PREFIX

from ..records import RunRecord
from .reading import GLOBAL_BEST, GLOBAL_FINAL, HELD_OUT, LOCAL, num as _num
from .titles import metric_title

MODEL_COLORS = {LOCAL: "#8c8c8c", GLOBAL_FINAL: "#1f77b4", GLOBAL_BEST: "#17becf"}
_BASELINE_COLORS = ["#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b"]


def series_count(fig: Figure) -> dict:
    """What a figure shows (axes titles, line and bar-group counts, legend), for checks."""
    return {"axes": [{"title": ax.get_title(), "lines": len(ax.get_lines()),
                      "bar_groups": len(ax.containers), "legend": [t.get_text() for t in
                                                                   (ax.get_legend().get_texts()
                                                                    if ax.get_legend() else [])]}
                     for ax in fig.axes]}


def plot_learning_curves(run: RunRecord, metric: str = "dice_fg_mean") -> Figure:
    """Left: per-round Dice of the global model on held-out cases and on each site's
    validation cases, and of each site's local-only model (dashed). Right: training losses."""
    fig = Figure(figsize=(12, 4.6), constrained_layout=True)
    ax, ax2 = fig.subplots(1, 2)
    cent = run.central_series(metric)
    if cent:
        ax.plot(*zip(*cent), "k-o", lw=2.2, label=f"global, {HELD_OUT}")
    sites = run.site_names
    cmap = _site_colors(sites)
    for s in sites:
        g = run.site_series(s, metric, GLOBAL)
        lo = run.site_series(s, metric, LOCAL_PREFIX)
        if g:
            ax.plot(*zip(*g), "-o", color=cmap[s], ms=4, label=f"global, {s}")
        if lo:
            ax.plot(*zip(*lo), "--s", color=cmap[s], ms=4, alpha=0.8, label=f"local-only, {s}")
    from matplotlib.ticker import MaxNLocator
    for a in (ax, ax2):
        a.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_title(f"{metric_title(metric, run.labels)} per round")
    ax.set_xlabel("model after round")
    ax.set_ylabel("Dice")
    ax.grid(alpha=0.3)
    if ax.get_lines():
        ax.legend(fontsize=7, loc="lower right")
    for s in sites:
        for key, style, name in (("train_loss", "-o", "federated"), ("local_train_loss", "--s", "local-only")):
            pts = run.train_series(s, key)
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




def plot_cross_site(matrix: Sequence[dict], labels: dict) -> Figure:
    """The cross-site matrix as heatmaps, one per foreground structure: rows = models,
    columns = evaluation sets, cells = Dice (annotated; a structure missed in some cases
    says how many). A model not evaluated on a set (e.g. a site that did not consent to
    share its local model) is a hatched empty cell, not a zero."""
    from .reading import eval_sets
    models = list(dict.fromkeys(r["model"] for r in matrix))
    sets = eval_sets(list(matrix))
    fg = [c for c in labels if c != "0"]
    fig = Figure(figsize=(max(6.0, 1.3 * len(sets) * len(fg) + 2.5), 1.0 + 0.55 * len(models)),
                 constrained_layout=True)
    axes = fig.subplots(1, len(fg), squeeze=False)[0]
    im = None
    for k, (ax, c) in enumerate(zip(axes, fg)):
        val = np.full((len(models), len(sets)), np.nan)
        missed = np.zeros_like(val)
        for r in matrix:
            i, j = models.index(r["model"]), sets.index(r["eval_set"])
            val[i, j] = _num(r.get(f"dice_{c}"))
            m = _num(r.get(f"missed_{c}"))
            missed[i, j] = m if math.isfinite(m) else 0
        ax.set_facecolor("#eeeeee")
        im = ax.imshow(np.ma.masked_invalid(val), cmap="viridis", vmin=0, vmax=1, aspect="auto")
        for i in range(len(models)):
            for j in range(len(sets)):
                v = val[i, j]
                if not math.isfinite(v):
                    ax.add_patch(_hatch(j, i))
                    ax.text(j, i, "not\nevaluated", ha="center", va="center", fontsize=6.5, color="#555")
                    continue
                txt = f"{v:.2f}" + (f"\n{int(missed[i, j])} missed" if missed[i, j] else "")
                ax.text(j, i, txt, ha="center", va="center", fontsize=8,
                        color="black" if v > 0.6 else "white")
        ax.set_xticks(range(len(sets)), sets, rotation=30, ha="right", fontsize=8)
        ax.set_yticks(range(len(models)), models if k == 0 else [""] * len(models), fontsize=8)
        ax.set_title(f"Dice: {labels[c]}", fontsize=10)
        ax.set_xlabel("evaluated on", fontsize=8)
    if im is not None:
        fig.colorbar(im, ax=list(axes), shrink=0.9, label="Dice")
    return fig


def _hatch(j: int, i: int):
    from matplotlib.patches import Rectangle
    return Rectangle((j - 0.5, i - 0.5), 1, 1, fill=False, hatch="//", ec="#bbbbbb", lw=0)
