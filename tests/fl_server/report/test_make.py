"""make_report: the files, tables, markdown and HTML page of RUN/report/."""
from __future__ import annotations

import json
import re

import numpy as np
import pytest

from fl_server.records import write_json


def test_report_files_tables_and_markdown(run_dir, tmp_path, fab):
    from rich.console import Console
    from fl_server.report import make_report
    base = fab.baseline(tmp_path / "pooled")
    rng = np.random.default_rng(0)
    img = rng.normal(size=(24, 20, 12)).astype(np.float32)
    gt = np.zeros(img.shape, np.uint8)
    gt[6:16, 5:14, 3:9] = 1
    gt[9:12, 8:11, 5:7] = 2
    pred = np.roll(gt, 2, axis=0)
    console = Console(record=True, width=250)
    out = make_report(run_dir, [base], overlays=[{"name": "case_007", "image": img, "gt": gt, "pred": pred,
                                                  "spacing": (1.5, 1.5, 3.0)}], console=console)
    text = console.export_text()
    for s in fab.SITES + ["held-out", "pooled (baseline)", "local-only", "global (final)", "global (best)"]:
        assert s in text
    assert "gain of the global model" in text

    pngs = sorted(p.name for p in out.glob("*.png"))
    assert pngs == ["hd95_box.png", "learning_curves.png", "local_vs_global.png", "overlay_case_007.png"]
    for p in out.glob("*.png"):
        assert p.stat().st_size > 10_000, p  # a real plot, not an empty canvas
    md = (out / "report.md").read_text()
    linked = set(re.findall(r"!\[[^\]]*\]\(([^)]+)\)", md))
    assert linked == set(pngs)  # every PNG embedded, by relative path, and nothing else
    assert all((out / p).is_file() for p in linked)

    rows = json.loads((out / "summary.json").read_text())["rows"]
    pairs = {(r["eval_set"], r["model"]) for r in rows}
    # every site's validation set x (global final, global best, local-only, pooled baseline)
    for s in fab.SITES:
        for m in ("global (final)", "global (best)", "local-only", "pooled (baseline)"):
            assert (s, m) in pairs
    assert {("held-out", "global (final)"), ("held-out", "global (best)"), ("held-out", "pooled (baseline)")} <= pairs
    # held-out numbers are the central metrics of the right rounds
    rounds = json.loads((run_dir / "rounds.json").read_text())
    best = next(r for r in rows if r["eval_set"] == "held-out" and r["model"] == "global (best)")
    assert best["dice_1"] == pytest.approx(rounds[2]["central/dice_1"])
    final = next(r for r in rows if r["eval_set"] == "held-out" and r["model"] == "global (final)")
    assert final["dice_1"] == pytest.approx(rounds[3]["central/dice_1"])
    # "global (best)" on a site = round fab.BEST+1's val/global (that row evaluates the model after fab.BEST)
    sites = json.loads((run_dir / "sites.json").read_text())
    srow = next(r for r in sites if r["round"] == fab.BEST + 1 and r["site"] == "hospital_a")
    got = next(r for r in rows if r["eval_set"] == "hospital_a" and r["model"] == "global (best)")
    assert got["dice_2"] == pytest.approx(srow["val/global/dice_2"])

    csv_lines = (out / "summary.csv").read_text().splitlines()
    assert len(csv_lines) == len(rows) + 1 and "hd95_2" in csv_lines[0]
    gains = (out / "gains.csv").read_text().splitlines()
    assert len(gains) == 1 + 2 * len(fab.SITES)
    fin = json.loads((run_dir / "final_sites.json").read_text())["sites"][0]
    g = json.loads((out / "summary.json").read_text())["gains"][0]
    assert g["gain_dice_fg_mean"] == pytest.approx(fin["global/dice_fg_mean"] - fin["local/dice_fg_mean"])


def test_report_without_optional_records(tmp_path, fab):
    """A run that stopped early: no final_sites.json, no baselines, one round."""
    from fl_server.report import make_report
    d = fab.run(tmp_path / "run")
    (d / "final_sites.json").unlink()
    rounds = json.loads((d / "rounds.json").read_text())[:2]
    write_json(d / "rounds.json", rounds)
    sites = [r for r in json.loads((d / "sites.json").read_text()) if r["round"] == 1]
    write_json(d / "sites.json", sites)
    out = make_report(d, quiet=True)
    assert (out / "report.md").is_file() and (out / "learning_curves.png").is_file()


