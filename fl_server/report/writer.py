"""The report as text: terminal tables (rich), report.md (PNGs by relative
path) and report.html (one self-contained page, PNGs embedded as base64).

Both files are rendered from one list of blocks, so they say the same thing.
"""
from __future__ import annotations

import base64
import html
import math
import re
from pathlib import Path

from ..records import RunRecord
from .reading import HELD_OUT, eval_sets, foreground
from .titles import fmt, metric_title, signed

CAPTIONS = {"learning_curves.png": "Learning curves: Dice per round (global on held-out and on each "
            "site; local-only dashed) and training losses.",
            "local_vs_global.png": "Local-only vs global model on each site's validation cases.",
            "hd95_box.png": "HD95 per structure and model; a structure a model missed entirely has no "
            "HD95 and is counted under its box.",
            "cross_site.png": "Every model on every evaluation set (Dice per structure). Read a row to see "
            "how one model travels to the other sites' data; hatched cells were not evaluated."}


def columns(rows: list[dict], labels: dict) -> list[tuple[str, int]]:
    """(key, decimals) of the metric columns present in ``rows``."""
    cols = [("cases", 0), ("dice_fg_mean", 3)]
    for c in foreground(labels):
        cols += [(f"dice_{c}", 3), (f"hd95_{c}", 1), (f"assd_{c}", 2), (f"missed_{c}", 0)]
    return [col for col in cols if any(col[0] in r for r in rows)]


def gain_keys(gains: list[dict]) -> list[str]:
    return [k for k in gains[0] if k.startswith(("gain_", "delta_"))] if gains else []


def _cells(r: dict, cols) -> list[str]:
    return [fmt(r.get(k), d) if k in r else "" for k, d in cols]


def _gain_cells(g: dict, keys) -> list[str]:
    return [signed(g[k], 3 if "dice" in k else 1) for k in keys]


def print_tables(rows: list[dict], gains: list[dict], labels: dict, console=None) -> None:
    from rich.console import Console
    from rich.table import Table
    if console is None:
        console = Console()
        if not console.is_terminal:  # piped: rich would wrap at 80 columns
            console = Console(width=200)
    cols = columns(rows, labels)
    for es in eval_sets(rows):
        t = Table(title=f"evaluation set: {es}", title_justify="left")
        t.add_column("model", no_wrap=True)
        for k, _ in cols:
            t.add_column(metric_title(k, labels, short=True), justify="right")
        for r in (r for r in rows if r["eval_set"] == es):
            t.add_row(r["model"], *_cells(r, cols))
        console.print(t)
    if gains:
        t = Table(title="gain of the global model over each site's local-only model "
                        "(Dice: + is better; HD95 mm: - is better)", title_justify="left")
        keys = gain_keys(gains)
        t.add_column("site", no_wrap=True)
        t.add_column("model", no_wrap=True)
        for k in keys:
            t.add_column(metric_title(k, labels, short=True), justify="right")
        for g in gains:
            t.add_row(g["site"], g["model"], *_gain_cells(g, keys))
        console.print(t)


def blocks(run: RunRecord, rows, gains, labels, figures: list[str], overlays: list[str], baselines,
           per_case=None, matrix=None, tracked: dict | None = None) -> list[tuple]:
    """The report's content: ("h", level, text) | ("p", text) | ("table", header, body) | ("img", file, caption)."""
    info = run.info
    sa = info.get("secure_aggregation")
    sa_txt = (", ".join(f"{k}={v}" for k, v in sa.items() if not isinstance(v, (dict, list)))
              if isinstance(sa, dict) else str(sa or "off"))
    best, score = run.best()
    done = len([r for r in run.ok_rounds() if r > 0])
    B: list[tuple] = [("h", 1, f"Federated run {run.run_id}"), ("p",
        f"Federation **{info.get('federation', '?')}**, strategy **{info.get('strategy', '?')}**, "
        f"{done} of {info.get('rounds', '?')} rounds completed ({len(run.failed_rounds())} failed), "
        f"status **{info.get('status', '?')}**. Secure aggregation: {sa_txt}. "
        f"Best model by held-out {metric_title(run.best_metric, labels)}: after round {best}"
        f" ({fmt(score)}).")]
    bottom = verdict(rows, gains, labels)
    if bottom:
        B.append(("p", "**Bottom line.** " + bottom))
    if baselines:
        B.append(("p", "Baselines: " + ", ".join(f"`{b['model']}` ({b['dir']})" for b in baselines) + "."))
    B.append(("p", "Metrics follow MONAI's semantics (Dice with ignore_empty, symmetric HD95 in mm). "
              "A structure a model missed entirely has no HD95; it is counted under *cases missed* instead "
              "of silently dropping out of the mean."
              + (" Held-out case counts and ASSD come from this report's re-evaluation of the saved "
                 "models on the coordinator's cases (`held_out_cases.csv`); the other figures from the run "
                 "records." if per_case else "")))
    if matrix:
        mcols = columns(matrix, labels)
        B += [("h", 2, "Cross-site evaluation: every model on every site")]
        consent = run.cross_site_consent
        if consent:
            # a site whose local-model request failed was never asked: not a refusal
            unasked = {f["site"] for f in run.cross_site_failures if f.get("model", "").endswith(f"({f['site']})")}
            yes = sorted(s for s, v in consent.items() if v)
            no = sorted(s for s, v in consent.items() if not v and s not in unasked)
            B.append(("p", "Consent (each site's policy): "
                      + (f"{', '.join(yes)} shared their local-only model with the other sites for this "
                         "evaluation (its weights left the site). " if yes else "")
                      + (f"{', '.join(no)} did not: their local-only model was evaluated on their own data "
                         "only and never left them. " if no else "")
                      + (f"{', '.join(sorted(unasked))}: the request for their local-only model failed, "
                         "so it is not in the matrix (see cross_site.json failures)." if unasked else "")))
        B += [("img", "cross_site.png", CAPTIONS["cross_site.png"]),
              ("table", ["model", "evaluated on"] + [metric_title(k, labels) for k, _ in mcols],
               [[r["model"], r["eval_set"]] + _cells(r, mcols) for r in matrix])]
    cols = columns(rows, labels)
    B.append(("h", 2, "Every evaluation set x every model"))
    for es in eval_sets(rows):
        B.append(("h", 3, es if es != HELD_OUT else "held-out (the coordinator's cases)"))
        B.append(("table", ["model"] + [metric_title(k, labels) for k, _ in cols],
                  [[r["model"]] + _cells(r, cols) for r in rows if r["eval_set"] == es]))
    if gains:
        keys = gain_keys(gains)
        B += [("h", 2, "Gain of the global model over each site's local-only model"),
              ("p", "On each site's own validation cases; Dice: + is better, HD95 (mm): - is better."),
              ("table", ["site", "model"] + [metric_title(k, labels) for k in keys],
               [[g["site"], g["model"]] + _gain_cells(g, keys) for g in gains])]
    if per_case:
        B += _ci_blocks(per_case, labels)
    if run.harmonisation:  # the plan stage's table (fl_server.plan_stage / fedvox check)
        from imaging_core.plan.harmonise import report_blocks
        B += report_blocks(run.harmonisation)
    B.append(("h", 2, "Plots"))
    B += [("img", name, CAPTIONS.get(name, name)) for name in figures if name != "cross_site.png"]
    if overlays:
        B.append(("h", 2, "Held-out cases: image, ground truth and prediction"))
        B += [("img", name, "") for name in overlays]
    B += [("h", 2, "Files"), ("p", "`summary.csv` / `summary.json` (the tables above), `gains.csv`, "
          "`figures.json` (what each plot contains)"
          + (", `held_out_cases.csv` (per-case metrics on the held-out cases)" if per_case else "")
          + ", `report.md` and this page as `report.html`.")]
    if tracked:
        B.append(("p", _tracking_text(tracked, run)))
    return B


def _ci_blocks(per_case, labels) -> list[tuple]:
    """Held-out cases: the chosen global model against each baseline, paired bootstrap 95% CI."""
    from .reading import GLOBAL_BEST, GLOBAL_FINAL
    from .stats import MIN_CASES, paired_rows
    models = list(dict.fromkeys(r["model"] for r in per_case))
    first = GLOBAL_BEST if GLOBAL_BEST in models else GLOBAL_FINAL
    others = [m for m in models if m not in (GLOBAL_BEST, GLOBAL_FINAL)]
    rows = paired_rows(per_case, labels, first, others) if first in models else []
    if not rows:
        return []
    def nd(r):
        return 3 if r["metric"].startswith("dice") else 1
    body = [[r["versus"], metric_title(r["metric"], labels), str(r["n"]), signed(r["mean_diff"], nd(r)),
             f"[{signed(r['ci_low'], nd(r))}, {signed(r['ci_high'], nd(r))}]" if math.isfinite(r["ci_low"])
             else "n/a", r["verdict"] + (" (too few cases to tell)" if r["too_few"] else "")] for r in rows]
    return [("h", 2, f"Is the {first} model better? (held-out cases, paired)"),
            ("p", f"Per-case difference {first} minus the other model on the same held-out cases, mean and "
                  "95% paired bootstrap interval. *better* / *worse*: the whole interval is on one side "
                  "(Dice: higher is better; HD95: lower is better); cases where either model has no value "
                  "(a missed structure has no HD95) are left out of that line, hence its own n. With fewer than "
                  f"{MIN_CASES} cases no verdict is given: so few cases cannot tell two models apart."),
            ("table", ["versus", "metric", "n", "mean difference", "95% CI", "verdict"], body)]


def _tracking_text(tracked: dict, run: RunRecord) -> str:
    tb = tracked.get("tensorboard")
    parts = [f"Learning curves per site and round in TensorBoard: `tensorboard --logdir {tb}`." if tb else
             "TensorBoard event files not written (tensorboard is not installed)."]
    if tracked.get("mlflow"):
        parts.append(f"MLflow run `{tracked['mlflow']}` at `{tracked.get('mlflow_uri')}` "
                     f"(experiment {run.info.get('federation', 'fedvox')}).")
    else:
        parts.append("MLflow: not logged (needs mlflow installed and MLFLOW_TRACKING_URI set).")
    return " ".join(parts)


def verdict(rows: list[dict], gains: list[dict], labels: dict) -> str:
    """Plain words on whether federation helped: where the final global model beats or
    trails each site's local-only model, and any structure no model found. Differences
    on a few validation cases are stated with their case count, not as a test."""
    from .reading import GLOBAL_FINAL, num
    out = []
    fin = [g for g in gains if g["model"] == GLOBAL_FINAL and math.isfinite(num(g.get("gain_dice_fg_mean")))]
    if fin:
        cases = {r["eval_set"]: r.get("cases") for r in rows if r["model"] == GLOBAL_FINAL}
        better = [g for g in fin if g["gain_dice_fg_mean"] > 0]
        worse = [g for g in fin if g["gain_dice_fg_mean"] < 0]

        def where(gs):
            return ", ".join(f"{g['site']} ({signed(g['gain_dice_fg_mean'], 3)}"
                             + (f", {cases[g['site']]} cases)" if cases.get(g["site"]) else ")") for g in gs)
        out.append(f"On each site's own validation cases the final global model beats the local-only model "
                   f"at {len(better)} of {len(fin)} sites (mean Dice over structures)"
                   + (f": better at {where(better)}" if better else "")
                   + (f"; worse at {where(worse)}" if worse else "") + ".")
        if not better:
            out.append("In this run federation did not help any site on its own data.")
    for c in foreground(labels):
        vals = [num(r.get(f"dice_{c}")) for r in rows]
        vals = [v for v in vals if math.isfinite(v)]
        if vals and max(vals) == 0:
            out.append(f"No model found the {labels[c]} anywhere (Dice 0.000 on every evaluation set).")
    return " ".join(out)


def render_markdown(B: list[tuple]) -> str:
    out: list[str] = []
    for b in B:
        if b[0] == "h":
            out += ["#" * b[1] + " " + b[2], ""]
        elif b[0] == "p":
            out += [b[1], ""]
        elif b[0] == "table":
            header, body = b[1], b[2]
            out += (["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
                    + ["| " + " | ".join(r) + " |" for r in body] + [""])
        elif b[0] == "img":
            out += [f"![{b[1]}]({b[1]})", ""] + ([f"*{b[2]}*", ""] if b[2] else [])
    return "\n".join(out)


def _inline(text: str) -> str:
    """The little markdown the paragraphs use (**bold**, *italic*, `code`), as HTML."""
    t = html.escape(text)
    t = re.sub(r"\*\*(.+?)\*\*", r"<b>\1</b>", t)
    t = re.sub(r"\*(.+?)\*", r"<i>\1</i>", t)
    return re.sub(r"`(.+?)`", r"<code>\1</code>", t)


_CSS = ("body{font-family:system-ui,sans-serif;max-width:1200px;margin:2em auto;padding:0 1em;color:#222}"
        "table{border-collapse:collapse;margin:.5em 0 1.5em}th,td{border:1px solid #ccc;padding:.25em .6em}"
        "td{text-align:left;white-space:nowrap}td.n{text-align:right;font-variant-numeric:tabular-nums}"
        "th{background:#f3f3f3;font-weight:600}tr:nth-child(even) td{background:#fafafa}"
        "img{max-width:100%}figcaption{font-style:italic;color:#555;margin-bottom:1.5em}")


_NUMBER = re.compile(r"^([+-]?\d+(\.\d+)?|n/a|inf)?$")


def _td(cell: str) -> str:
    """Numbers (and their n/a) right-aligned, names left."""
    return f"<td class='n'>{html.escape(cell)}</td>" if _NUMBER.match(cell) else f"<td>{html.escape(cell)}</td>"


def render_html(B: list[tuple], image_dir: Path, title: str) -> str:
    """One self-contained page: every PNG is inlined as a data: URI."""
    out = [f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
           f"<style>{_CSS}</style></head><body>"]
    for b in B:
        if b[0] == "h":
            out.append(f"<h{b[1]}>{html.escape(b[2])}</h{b[1]}>")
        elif b[0] == "p":
            out.append(f"<p>{_inline(b[1])}</p>")
        elif b[0] == "table":
            out.append("<table><tr>" + "".join(f"<th>{html.escape(h)}</th>" for h in b[1]) + "</tr>"
                       + "".join("<tr>" + "".join(_td(c) for c in r) + "</tr>" for r in b[2]) + "</table>")
        elif b[0] == "img":
            data = base64.b64encode((image_dir / b[1]).read_bytes()).decode()
            out.append(f"<figure><img alt='{html.escape(b[1])}' src='data:image/png;base64,{data}'>"
                       + (f"<figcaption>{html.escape(b[2])}</figcaption>" if b[2] else "") + "</figure>")
    out.append("</body></html>")
    return "\n".join(out)
