"""`fedvox report RUN`: per-site vs global comparison of a federated run.

Reads the run through its record (fl_server/records.py) and optional baseline
run directories from `fedvox train` (final.json), and writes to RUN/report/:

    summary.csv / summary.json   one row per (evaluation set, model): Dice, HD95,
                                 ASSD (when recorded) per structure, missed counts
    gains.csv                    global vs each site's local-only model, per site
    learning_curves.png          per-round Dice (held-out global, each site's
                                 global and local-only) and training losses
    local_vs_global.png          grouped bars per site and structure
    hd95_box.png                 HD95 per structure and model
    cross_site.png               every model x every evaluation set heatmap (when the run has cross_site.json)
    overlay_*.png                image + ground truth + prediction on the case's original grid, with
                                 orientation labels and a mm scale bar (when cases are given)
    held_out_cases.csv           per-case metrics of the held-out re-evaluation (when run)
    figures.json                 what each plot shows (series counts), for checks
    report.md                    the whole summary, embedding the PNGs by relative path
    report.html                  the same, one self-contained page (PNGs inlined)

and RUN/tensorboard/ (+ MLflow when configured) through fl_server/tracking.py.

Modules by job: reading (what is shown), plots and overlay (figures), writer
(terminal tables, markdown, HTML), titles (human names of metric keys), stats
(paired bootstrap CIs), evaluate (the held-out re-evaluation: the report's only
torch), make (all of it).
"""
from __future__ import annotations

from .make import make_report
from .overlay import overlay_png, representative_slices
from .plots import plot_hd95_box, plot_learning_curves, plot_local_vs_global, series_count
from .reading import (GLOBAL_BEST, GLOBAL_FINAL, HELD_OUT, LOCAL, comparison_rows, gain_rows, load_baseline,
                      load_run)

__all__ = ["make_report", "overlay_png", "representative_slices", "plot_hd95_box", "plot_learning_curves",
           "plot_local_vs_global", "series_count", "comparison_rows", "gain_rows", "load_baseline", "load_run",
           "GLOBAL_BEST", "GLOBAL_FINAL", "HELD_OUT", "LOCAL"]
