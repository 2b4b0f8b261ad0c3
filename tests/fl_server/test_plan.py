"""`fedvox check` / `fedvox plan` on a small federation written here: the
table and flags, plan.json in the run record, one clear line for a bad site."""
from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np

from fl_server.cli import main
from fl_server.records import RunRecord
from imaging_core.config import imaging_config


def _site(root: Path, name: str, hu: bool = True, n: int = 5, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    d = root / "data" / name
    d.mkdir(parents=True)
    aff = np.diag([2.0, 2.0, 3.0, 1.0])
    items = []
    for i in range(n):
        x = (-1000 + rng.normal(0, 5, (20, 20, 12))).astype(np.float32)
        x[3:-3, 3:-3, 2:-2] = 40 + rng.normal(0, 10, (14, 14, 8))
        x += 0 if hu else 1024
        lab = np.zeros((20, 20, 12), np.uint8)
        lab[6:12, 6:12, 4:8] = 1
        nib.save(nib.Nifti1Image(x, aff), d / f"c{i}.nii.gz")
        nib.save(nib.Nifti1Image(lab, aff), d / f"c{i}_seg.nii.gz")
        items.append({"image": f"c{i}.nii.gz", "label": f"c{i}_seg.nii.gz"})
    (d / "dataset.json").write_text(json.dumps({"labels": {"0": "background", "1": "organ"},
                                                "training": items}))
    (root / "sites").mkdir(exist_ok=True)
    (root / "sites" / f"{name}.toml").write_text(f'[site]\nname = "{name}"\ndata_root = "data/{name}"\n'
                                                 'modality = "CT"\n')


def _federation(root: Path, names: list[str]) -> Path:
    sites = "".join(f'[[sites]]\nconfig = "sites/{s}.toml"\n\n' for s in names)
    (root / "federation.toml").write_text(f'[federation]\nname = "mini"\n[labels]\n0 = "background"\n'
                                          f'1 = "organ"\n{sites}')
    return root / "federation.toml"


def test_check_flags_and_strict_refuses(tmp_path, capsys):
    for i, s in enumerate(("a", "b")):
        _site(tmp_path, s, seed=i)
    _site(tmp_path, "raw", hu=False, seed=3)
    fed = str(_federation(tmp_path, ["a", "b", "raw"]))
    assert main(["check", "--federation", fed, "--data-base", str(tmp_path), "--run-dir",
                 str(tmp_path / "run")]) == 0
    out = capsys.readouterr().out
    assert "[ct_not_hu] raw:" in out and "Fix:" in out
    table = RunRecord(tmp_path / "run").harmonisation
    assert [r["site"] for r in table["rows"]] == ["a", "b", "raw"]
    assert main(["check", "--federation", fed, "--data-base", str(tmp_path), "--strict"]) == 4
    assert "ct_not_hu (raw)" in capsys.readouterr().out


def test_plan_writes_plan_json(tmp_path, capsys):
    for i, s in enumerate(("a", "b")):
        _site(tmp_path, s, seed=i)
    fed = str(_federation(tmp_path, ["a", "b"]))
    run = tmp_path / "run"
    assert main(["plan", "--federation", fed, "--data-base", str(tmp_path), "--run-dir", str(run),
                 "--memory-gb", "1"]) == 0
    plan = RunRecord(run).plan
    assert plan["preprocess"]["pixdim"] == [2.0, 2.0, 3.0] and plan["cases"] == 10
    imaging_config({k: plan[k] for k in ("preprocess", "sampling", "model")})
    assert RunRecord(run).harmonisation["flags"] == []
    assert "plan written" in capsys.readouterr().out


def test_site_without_usable_case_stops_with_one_line(tmp_path, capsys):
    _site(tmp_path, "a")
    _site(tmp_path, "broken", n=2)
    for f in (tmp_path / "data" / "broken").glob("c?.nii.gz"):
        f.write_bytes(b"corrupt")
    fed = str(_federation(tmp_path, ["a", "broken"]))
    assert main(["plan", "--federation", fed, "--data-base", str(tmp_path), "--run-dir", str(tmp_path / "r"),
                 "--memory-gb", "1"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["fedvox plan: site broken: fingerprinted no case (every case was skipped or unlabelled)"]
    assert not (tmp_path / "r" / "plan.json").exists()


def test_table_goes_into_the_report(run_dir):
    from fl_server.report import make_report
    from imaging_core.plan.harmonise import check
    summaries = {"a": {"modality": "CT", "cases": 6, "skipped": 0, "spacing": [1.0, 1.0, 2.0], "background": "noisy",
                       "min_value": -1024.0, "whole": {"0.5": -1000.0, "99.5": 300.0}, "foreground": {"50.0": 40.0},
                       "label_values": [0, 1], "label_names": {"0": "background", "1": "organ"}},
                 "raw": {"modality": "CT", "cases": 6, "skipped": 0, "spacing": [1.0, 1.0, 2.0],
                         "background": "noisy", "min_value": 0.0, "whole": {"0.5": 20.0, "99.5": 1300.0},
                         "foreground": {"50.0": 1064.0}, "label_values": [0, 1],
                         "label_names": {"0": "background", "1": "organ"}}}
    RunRecord(run_dir).save_harmonisation(check(summaries))
    md = (make_report(run_dir, quiet=True) / "report.md").read_text()
    assert "## Harmonisation check (before round 1)" in md and "[ct_not_hu] raw:" in md


def test_train_on_an_auto_federation_needs_a_plan_and_takes_its_table(tmp_path, capsys):
    """No [preprocess] table is "auto": `fedvox train` says to run `fedvox plan` (one line,
    naming the file); with --plan the plan's table is the one the cache is built with."""
    import pytest
    from fl_common.config import load_federation
    from fl_server.plan import with_plan
    from imaging_core.errors import ImagingError
    from imaging_core.task import Task
    _site(tmp_path, "a")
    fed = str(_federation(tmp_path, ["a"]))
    assert main(["train", "--federation", fed, "--data-base", str(tmp_path), "--run-dir", str(tmp_path / "t")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and fed in err and "fedvox plan" in err and "--plan" in err
    assert main(["plan", "--federation", fed, "--data-base", str(tmp_path), "--run-dir", str(tmp_path / "run"),
                 "--memory-gb", "1"]) == 0
    planned = with_plan(load_federation(fed, data_base=tmp_path), tmp_path / "run" / "plan.json")
    assert planned.preprocess.pixdim == [2.0, 2.0, 3.0] == RunRecord(tmp_path / "run").plan["preprocess"]["pixdim"]
    case = Task(planned).site_data(planned.sites[0], tmp_path / "cache").prepare().cases[0]
    assert np.linalg.norm(np.asarray(case.meta()["affine"])[:3, 2]) == 3.0  # built on the plan's grid
    explicit = tmp_path / "explicit.toml"
    explicit.write_text(Path(fed).read_text() + "[preprocess]\npixdim = [4.0, 4.0, 4.0]\n")
    with pytest.raises(ImagingError, match="differs from the explicit"):
        with_plan(load_federation(explicit, data_base=tmp_path), tmp_path / "run" / "plan.json")
    with pytest.raises(ImagingError, match="plan file not found"):
        with_plan(load_federation(fed, data_base=tmp_path), tmp_path / "nope.json")
