"""The held-out re-evaluation of the saved models on the coordinator's cases."""
from __future__ import annotations

import json




def test_report_evaluates_held_out_cases(run_dir, tmp_path, fab):
    from fl_server.report import make_report
    fed = fab.mini_federation(tmp_path / "fed")
    out = make_report(run_dir, evaluate=True, federation_path=fed, data_base=tmp_path / "fed", quiet=True)
    per_case = (out / "held_out_cases.csv").read_text().splitlines()
    assert len(per_case) == 1 + 2 * 3  # global best + final, 3 cases each
    col = per_case[0].split(",").index("space")
    assert {r.split(",")[col] for r in per_case[1:]} == {"original"}  # on each case's own label file
    overlays = sorted(out.glob("overlay_*.png"))
    assert 1 <= len(overlays) <= 3
    md = (out / "report.md").read_text()
    assert all(f"]({p.name})" in md for p in out.glob("*.png"))
    fig = json.loads((out / "figures.json").read_text())
    assert "held-out cases" in fig["hd95_box.png"]["axes"][0]["title"]
