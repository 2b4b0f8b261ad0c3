"""`fedvox` as a real process: subcommand options, version, devices, exit codes,
and the run-directory defects (report/export/demo read the run record)."""
from __future__ import annotations

import json
import re
from importlib.metadata import version

import pytest
import torch

from fl_server.cli import build_parser
from fl_server.records import RunRecord, write_json


def _one_line_error(r, code=2):
    assert r.returncode == code, (r.returncode, r.stdout, r.stderr)
    assert "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr


def test_version_and_exit_codes_are_documented(cli):
    r = cli("--version")
    assert r.returncode == 0 and r.stdout.strip() == f"fedvox {version('fedvox')}"
    r = cli("--help")
    assert r.returncode == 0 and "exit status" in r.stdout
    assert re.search(r"^\s+2\s+bad usage or bad input", r.stdout, re.M)


@pytest.mark.parametrize("cmd,flags", [("report", ["--no-cases", "--baseline", "--device"]),
                                       ("export", ["--out", "--which", "--key", "--overwrite"])])
def test_report_and_export_have_their_own_help(cli, cmd, flags):
    r = cli(cmd, "--help")
    assert r.returncode == 0, r.stderr
    assert all(f in r.stdout for f in flags) and "RUN" in r.stdout and "exit status" in r.stdout


def test_old_spellings_stay_aliases():
    ap = build_parser()
    assert ap.parse_args(["train", "--out", "runs/p"]).run_dir == "runs/p"
    assert ap.parse_args(["train", "--run-dir", "runs/p"]).run_dir == "runs/p"
    assert ap.parse_args(["prepare", "--out", "w"]).work == "w"
    assert ap.parse_args(["prepare", "--work", "w", "--workers", "2"]).workers == 2


def test_report_no_cases_writes_a_self_contained_html_page(cli, run_dir):
    r = cli("report", "--no-cases", run_dir, "--device", "auto")
    assert r.returncode == 0, r.stderr
    page = (run_dir / "report" / "report.html").read_text()
    pngs = sorted(p.name for p in (run_dir / "report").glob("*.png"))
    assert page.count("src='data:image/png;base64,") == len(pngs) == 3
    assert not re.search(r"src=['\"](?!data:)", page)  # nothing fetched from elsewhere
    assert "Dice (mean over foreground classes)" in page and "dice_fg_mean" not in page
    assert "HD95 (mm): lesion" in page


def test_export_out_run_exports_and_says_which_model(cli, run_dir, tmp_path, fab):
    key, crt = fab.bundle_key(tmp_path)
    r = cli("export", "--out", tmp_path / "bundle", "--key", key, run_dir)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == str(tmp_path / "bundle")
    assert f"after round {fab.BEST}" in r.stderr
    assert cli("bundle", "verify", tmp_path / "bundle", "--public-key", crt).returncode == 0
    (tmp_path / "bundle" / "configs" / "metadata.json").write_text("{}")  # tampered: refused, one line
    _one_line_error(cli("bundle", "verify", tmp_path / "bundle", "--public-key", crt))


def test_best_is_round_zero_when_no_round_beats_it(cli, run_dir, tmp_path, fab):
    """The demo's failure: a complete run whose initial model stays best."""
    from fl_server.demo import exported_model
    from imaging_core.bundle.load import load_bundle
    from imaging_core.train.checkpoint import load_checkpoint
    info = json.loads((run_dir / "run.json").read_text())
    rounds = json.loads((run_dir / "rounds.json").read_text())
    rounds[0]["central/dice_fg_mean"] = 0.99
    write_json(run_dir / "rounds.json", rounds)
    info.pop("best_round")
    write_json(run_dir / "run.json", info)
    assert RunRecord.open(run_dir).best() == (0, 0.99)
    assert exported_model(run_dir) == "best: the initial model, held-out dice_fg_mean 0.990"
    r = cli("export", "--out", tmp_path / "b", run_dir)
    assert r.returncode == 0 and "after round 0" in r.stderr, r.stderr
    meta = json.loads((tmp_path / "b" / "configs" / "metadata.json").read_text())
    assert meta["federated_provenance"]["round"] == 0
    net, _ = load_bundle(tmp_path / "b", verify=False)
    sd = load_checkpoint(run_dir / "global_best.pt")  # what the server writes at round 0
    assert all(torch.equal(v, sd[k]) for k, v in net.state_dict().items())
    r = cli("report", "--no-cases", run_dir)
    assert r.returncode == 0, r.stderr
    assert "after round 0" in (run_dir / "report" / "report.md").read_text()


def test_report_reads_data_base_from_the_run_record(cli, run_dir, tmp_path, fab):
    """A demo run's federation names data roots relative to a base only run.json knows."""
    fed = fab.mini_federation(tmp_path / "fed")
    info = json.loads((run_dir / "run.json").read_text())
    write_json(run_dir / "run.json", {**info, "federation_path": str(fed), "data_base": str(tmp_path / "fed")})
    r = cli("report", run_dir, timeout=300)
    assert r.returncode == 0, r.stderr
    assert len((run_dir / "report" / "held_out_cases.csv").read_text().splitlines()) == 1 + 2 * 3


def test_a_bad_run_directory_is_one_line_exit_2(cli, tmp_path):
    _one_line_error(cli("report", "--no-cases", tmp_path / "none"))
    _one_line_error(cli("export", "--out", tmp_path / "b", tmp_path))


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a torch without CUDA")
@pytest.mark.parametrize("cmd", [["report", "--no-cases", "RUN"], ["train", "--run-dir", "x"],
                                 ["infer", "b", "i.nii.gz", "--out", "o.nii.gz"]])
def test_device_cuda_without_cuda_is_one_clear_line(cli, run_dir, cmd):
    r = cli(*[str(run_dir) if c == "RUN" else c for c in cmd], "--device", "cuda")
    _one_line_error(r)
    assert "--device cuda" in r.stderr and "auto" in r.stderr


def test_device_names_are_checked():
    from fl_server.device import DeviceError, resolve_device
    assert resolve_device("cpu") == "cpu" and resolve_device(None) is None
    assert resolve_device("auto") == ("cuda" if torch.cuda.is_available() else "cpu")
    with pytest.raises(DeviceError, match="not one of"):
        resolve_device("gpu0")


def test_prepare_workers_builds_sites_in_parallel(tmp_path, fab):
    from fl_common.config import load_federation
    from fl_server.prepare import prepare_sites
    fed = load_federation(fab.mini_federation(tmp_path / "fed"), data_base=tmp_path / "fed")
    co = fed.coordinator
    fed = fed.model_copy(update={"sites": [co.model_copy(update={"name": n}) for n in ("one", "two")]})
    got = prepare_sites(fed, tmp_path / "cache", workers=3)
    assert set(got) == {"one", "two", "coordinator"}
    for name, sd in got.items():
        assert len(sd.report.cases) == 3 and not sd.report.failed, name
        assert (tmp_path / "cache" / name).is_dir()
