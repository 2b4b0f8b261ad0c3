"""make_report: RUN/report/ from the run record (and, optionally, the held-out re-evaluation)."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

from imaging_core.io.atomic import write_bytes_atomic
from imaging_core.io.tables import write_csv, write_json

from ..records import RunRecord
from .overlay import overlay_png
from .plots import plot_cross_site, plot_hd95_box, plot_learning_curves, plot_local_vs_global, series_count
from .reading import comparison_rows, fill_from_cases, gain_rows, load_baseline
from .writer import blocks, print_tables, render_html, render_markdown


def make_report(run_dir: str | os.PathLike, baselines: Sequence[str | os.PathLike] = (),
                overlays: Sequence[dict] = (), per_case: Sequence[dict] | None = None,
                console=None, quiet: bool = False, evaluate: bool = False,
                federation_path: str | os.PathLike | None = None, data_base: str | os.PathLike | None = None,
                device: str = "cpu", tracking: bool = True) -> Path:
    """Write RUN/report/ (see the package doc) and print the tables; returns the report directory.

    ``overlays``: cases to draw, each ``{"name", "image", "gt", "pred"}`` with (X, Y, Z)
    arrays and optional ``"spacing"``, ``"title"``. ``per_case``: optional per-case rows
    ({"model", "eval_set", "case_id", "hd95_<c>", ...}) for the HD95 box plot.
    ``tracking``: also write RUN/tensorboard/ and log to MLflow when configured
    (fl_server/tracking.py); the report says where. ``evaluate``: compute both from the coordinator's held-out cases
    (``evaluate.held_out_evaluation``; needs the federation config and the coordinator's data,
    both taken from run.json unless given).
    """
    run = RunRecord.open(run_dir)
    bl = [load_baseline(b) for b in baselines]
    if evaluate and not overlays and per_case is None:
        from .evaluate import held_out_evaluation  # the only torch in the report
        per_case, overlays = held_out_evaluation(run, baselines, federation_path, data_base,
                                                 device=device, console=console)
        per_case = per_case or None
    labels = run.labels
    out = run.report_dir
    out.mkdir(parents=True, exist_ok=True)
    rows = comparison_rows(run, bl)
    if per_case:
        fill_from_cases(rows, per_case, labels)
    gains = gain_rows(rows, labels)
    write_csv(out / "summary.csv", rows)
    write_csv(out / "gains.csv", gains)
    if per_case:
        write_csv(out / "held_out_cases.csv", list(per_case))
    write_json(out / "summary.json", {"run": dict(run.info), "labels": labels, "rows": rows, "gains": gains,
                                      "baselines": [str(b["dir"]) for b in bl]})
    figs = {"learning_curves.png": plot_learning_curves(run),
            "local_vs_global.png": plot_local_vs_global(rows, labels),
            "hd95_box.png": plot_hd95_box(rows, labels, per_case)}
    matrix = run.cross_site
    if matrix:
        figs["cross_site.png"] = plot_cross_site(matrix, labels)
    described = {}
    for name, fig in figs.items():
        fig.savefig(out / name, dpi=100)
        described[name] = series_count(fig)
    ov_names = []
    for i, case in enumerate(overlays):
        name = str(case.get("name", f"case{i}")).replace(os.sep, "_")
        p = overlay_png(case["image"], case["gt"], case["pred"], out / f"overlay_{name}.png",
                        spacing=case.get("spacing", (1.0, 1.0, 1.0)), labels=labels,
                        title=case.get("title", name), affine=case.get("affine"))
        ov_names.append(p.name)
        described[p.name] = {"overlay": True}
    write_json(out / "figures.json", described)
    tracked = None
    if tracking:  # TensorBoard events (and MLflow when configured) of the same records
        from ..tracking import track
        tracked = track(run)
    content = blocks(run, rows, gains, labels, list(figs), ov_names, bl, per_case, matrix, tracked)
    write_bytes_atomic(out / "report.md", render_markdown(content).encode())
    write_bytes_atomic(out / "report.html", render_html(content, out, f"Federated run {run.run_id}").encode())
    if not quiet:
        print_tables(rows, gains, labels, console)
        (console.print if console else print)(f"report written to {out / 'report.html'} (and report.md)")
    return out
