"""`fedvox report` and `fedvox export` on a fabricated run directory.

The fixture writes a run directory in exactly the format fl_server/records.py
and server_app.py leave behind (run.json, rounds/sites JSON+CSV,
final_sites.json, hash-checked global_best/final.pt with a real tiny model)
plus one baseline run (final.json), so these tests need no federation run.
"""
from __future__ import annotations

import json
import math
import re
from pathlib import Path

import numpy as np
import pytest
import torch

from fl_server.records import write_csv, write_json

SITES = ["hospital_a", "hospital_b", "hospital_c"]
LABELS = {"0": "background", "1": "organ", "2": "lesion"}
MODEL = {"name": "unet3d", "channels": [4, 8, 16], "strides": [2, 2], "num_res_units": 1}
ROUNDS = 3
BEST = 2


def _scores(rng, base: float) -> dict:
    d1, d2 = base + rng.uniform(0, 0.1), base - 0.2 + rng.uniform(0, 0.1)
    return {"dice_fg_mean": (d1 + d2) / 2, "dice_1": d1, "hd95_1": 20 * (1 - d1), "missed_1": 0,
            "dice_2": d2, "hd95_2": 30 * (1 - d2), "missed_2": 1}


def fabricate_run(run_dir: Path, seed: int = 0, with_secagg: bool = True) -> Path:
    """A complete run directory of a 3-site, 3-round federation with a real tiny model."""
    from imaging_core.nets.unet3d import unet_from_config
    from imaging_core.train.checkpoint import save_checkpoint
    rng = np.random.default_rng(seed)
    run_dir.mkdir(parents=True, exist_ok=True)
    fed = Path(__file__).resolve().parents[2] / "sites_example" / "federation.toml"
    write_json(run_dir / "run.json", {
        "run_id": "20260101-120000", "federation": "sites_example", "federation_path": str(fed),
        "rounds": ROUNDS, "strategy": "fedavg", "min_sites": 2,
        "secure_aggregation": ({"mode": "secagg+", "threshold": 2, "clip": 10.0} if with_secagg
                               else {"mode": "off"}),
        "labels": LABELS, "model": MODEL, "best_metric": "dice_fg_mean", "status": "completed",
        "best_round": BEST, "best_score": 0.6})
    rounds = [{"round": 0, **{f"central/{k}": v for k, v in _scores(rng, 0.1).items()}}]
    sites = []
    for r in range(1, ROUNDS + 1):
        row = {"round": r, "sites_sampled": 3, "status": "ok", "sites_aggregated": 3, "total_weight": 12.0,
               "delta_norm": 1.0 / r, "failures": [], "n_failures": 0, "seconds": 3.0 + r}
        row.update({f"central/{k}": v for k, v in _scores(rng, 0.3 + 0.2 * r - 0.25 * (r == 3)).items()})
        rounds.append(row)
        for i, s in enumerate(SITES):
            srow = {"round": r, "site": s, "train/train_loss": 1.0 / r + 0.1 * i,
                    "train/local_train_loss": 1.1 / r + 0.1 * i, "val/num_val": 2.0}
            srow.update({f"val/global/{k}": v for k, v in _scores(rng, 0.2 * r).items()})
            srow.update({f"val/local/{k}": v for k, v in _scores(rng, 0.15 * r).items()})
            sites.append(srow)
    write_json(run_dir / "rounds.json", rounds)
    write_csv(run_dir / "rounds.csv", rounds)
    write_json(run_dir / "sites.json", sites)
    write_csv(run_dir / "sites.csv", sites)
    final = []
    for s in SITES:
        row = {"site": s, "num_val": 2.0}
        row.update({f"global/{k}": v for k, v in _scores(rng, 0.65).items()})
        row.update({f"local/{k}": v for k, v in _scores(rng, 0.5).items()})
        final.append(row)
    final[1]["local/hd95_2"] = math.nan  # a missed structure: HD95 undefined
    write_json(run_dir / "final_sites.json", {"sites": final, "failures": []})
    write_csv(run_dir / "final_sites.csv", final)
    for which, sd in (("best", 0), ("final", 1)):
        torch.manual_seed(sd)
        net = unet_from_config({**MODEL, "in_channels": 1, "out_channels": len(LABELS)})
        save_checkpoint({k: v.detach().clone() for k, v in net.state_dict().items()},
                        run_dir / f"global_{which}.pt")
    write_json(run_dir / "state.json", {"last_round": ROUNDS})
    return run_dir


def fabricate_baseline(out: Path, model: str = "pooled", seed: int = 1) -> Path:
    rng = np.random.default_rng(seed)
    out.mkdir(parents=True, exist_ok=True)
    rows = [{"model": model, "eval_set": es, "cases": 2, **_scores(rng, 0.7)}
            for es in SITES + ["held-out"]]
    write_json(out / "final.json", {"model": model, "checkpoint": "best.pt", "rows": rows})
    write_csv(out / "final.csv", rows)
    return out


@pytest.fixture
def run_dir(tmp_path):
    return fabricate_run(tmp_path / "run")


# ------------------------------------------------------------------------------ report
def test_report_files_tables_and_markdown(run_dir, tmp_path):
    from rich.console import Console
    from fl_server.report import make_report
    base = fabricate_baseline(tmp_path / "pooled")
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
    for s in SITES + ["held-out", "pooled (baseline)", "local-only", "global (final)", "global (best)"]:
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
    for s in SITES:
        for m in ("global (final)", "global (best)", "local-only", "pooled (baseline)"):
            assert (s, m) in pairs
    assert {("held-out", "global (final)"), ("held-out", "global (best)"), ("held-out", "pooled (baseline)")} <= pairs
    # held-out numbers are the central metrics of the right rounds
    rounds = json.loads((run_dir / "rounds.json").read_text())
    best = next(r for r in rows if r["eval_set"] == "held-out" and r["model"] == "global (best)")
    assert best["dice_1"] == pytest.approx(rounds[2]["central/dice_1"])
    final = next(r for r in rows if r["eval_set"] == "held-out" and r["model"] == "global (final)")
    assert final["dice_1"] == pytest.approx(rounds[3]["central/dice_1"])
    # "global (best)" on a site = round BEST+1's val/global (that row evaluates the model after BEST)
    sites = json.loads((run_dir / "sites.json").read_text())
    srow = next(r for r in sites if r["round"] == BEST + 1 and r["site"] == "hospital_a")
    got = next(r for r in rows if r["eval_set"] == "hospital_a" and r["model"] == "global (best)")
    assert got["dice_2"] == pytest.approx(srow["val/global/dice_2"])

    csv_lines = (out / "summary.csv").read_text().splitlines()
    assert len(csv_lines) == len(rows) + 1 and "hd95_2" in csv_lines[0]
    gains = (out / "gains.csv").read_text().splitlines()
    assert len(gains) == 1 + 2 * len(SITES)
    fin = json.loads((run_dir / "final_sites.json").read_text())["sites"][0]
    g = json.loads((out / "summary.json").read_text())["gains"][0]
    assert g["gain_dice_fg_mean"] == pytest.approx(fin["global/dice_fg_mean"] - fin["local/dice_fg_mean"])


def test_plots_have_expected_series(run_dir, tmp_path):
    from fl_server import report as R
    run = R.load_run(run_dir)
    base = R.load_baseline(fabricate_baseline(tmp_path / "pooled"))
    rows = R.comparison_rows(run, [base])
    labels = run["labels"]

    fig = R.plot_learning_curves(run)
    dice_ax, loss_ax = fig.axes[:2]
    # held-out global + per site (global, local-only)
    assert len(dice_ax.get_lines()) == 1 + 2 * len(SITES)
    held = dice_ax.get_lines()[0]
    assert list(held.get_xdata()) == list(range(ROUNDS + 1))
    site_line = dice_ax.get_lines()[1]  # global on a site: models after rounds 0..ROUNDS
    assert list(site_line.get_xdata()) == list(range(ROUNDS + 1))
    assert len(loss_ax.get_lines()) == 2 * len(SITES)

    fig = R.plot_local_vs_global(rows, labels)
    assert len(fig.axes) == 2  # one panel per foreground structure
    for ax in fig.axes:
        assert len(ax.containers) == 4  # local-only, global final, global best, pooled baseline
        assert all(len(c) == len(SITES) for c in ax.containers)
        assert [t.get_text() for t in ax.get_xticklabels()] == SITES

    fig = R.plot_hd95_box(rows, labels)
    for ax in fig.axes:
        assert len(ax.get_xticklabels()) == 4  # global final, global best, local-only, pooled
    # the missed structure is counted, not dropped silently
    lesion_ax = fig.axes[1]
    assert any("missed" in t.get_text() for t in lesion_ax.get_xticklabels())

    figures = json.loads(json.dumps(R._series_count(R.plot_learning_curves(run))))
    assert figures["axes"][0]["lines"] == 1 + 2 * len(SITES)


def test_report_without_optional_records(tmp_path):
    """A run that stopped early: no final_sites.json, no baselines, one round."""
    from fl_server.report import make_report
    d = fabricate_run(tmp_path / "run")
    (d / "final_sites.json").unlink()
    rounds = json.loads((d / "rounds.json").read_text())[:2]
    write_json(d / "rounds.json", rounds)
    sites = [r for r in json.loads((d / "sites.json").read_text()) if r["round"] == 1]
    write_json(d / "sites.json", sites)
    out = make_report(d, quiet=True)
    assert (out / "report.md").is_file() and (out / "learning_curves.png").is_file()


def test_overlay_png(tmp_path):
    from fl_server.report import overlay_png, representative_slices
    gt = np.zeros((30, 30, 10), np.uint8)
    gt[5:12, 20:28, 6:9] = 1
    assert representative_slices(gt) == (5, 20, 6)
    p = overlay_png(np.random.default_rng(0).normal(size=gt.shape), gt, gt, tmp_path / "o.png")
    assert p.is_file() and p.stat().st_size > 10_000
    with pytest.raises(ValueError):
        overlay_png(np.zeros((3, 3, 3)), gt, gt, tmp_path / "bad.png")


# ------------------------------------------------------------------------------ export
def _ca_key(tmp_path) -> tuple[Path, Path]:
    from fl_common.crypto import pki
    key = pki.new_key()
    ca = pki.make_ca(key, "test federation CA")
    (tmp_path / "ca.key").write_bytes(pki.key_pem(key))
    (tmp_path / "ca.crt").write_bytes(pki.cert_pem(ca))
    return tmp_path / "ca.key", tmp_path / "ca.crt"


def test_export_run_builds_signed_bundle_with_pseudonyms(run_dir, tmp_path):
    from fl_common.crypto.signing import MANIFEST_SIGNATURES
    from fl_server.export import PSEUDONYMS, export_run
    from imaging_core.bundle.load import load_bundle
    from imaging_core.bundle.verify import verify_bundle
    key, crt = _ca_key(tmp_path)
    out = export_run(run_dir, tmp_path / "bundle", which="best", key=key)
    assert verify_bundle(out, public_key=crt, scheme=MANIFEST_SIGNATURES) == []
    meta = json.loads((out / "configs" / "metadata.json").read_text())
    prov = meta["federated_provenance"]
    assert prov["run_id"] == "20260101-120000" and prov["round"] == BEST and prov["which"] == "best"
    assert prov["secure_aggregation"]["mode"] == "secagg+"
    assert prov["sites"] == ["site-1", "site-2", "site-3"]
    # no real site name anywhere in the bundle
    for f in out.rglob("*"):
        if f.is_file() and f.suffix in (".json", ".md"):
            assert not any(s in f.read_text() for s in SITES), f
    mapping = json.loads((run_dir / PSEUDONYMS).read_text())
    assert mapping == {"hospital_a": "site-1", "hospital_b": "site-2", "hospital_c": "site-3"}
    assert (run_dir / PSEUDONYMS).stat().st_mode & 0o077 == 0
    rounds = json.loads((run_dir / "rounds.json").read_text())
    assert prov["metrics"]["held_out"]["dice_1"] == pytest.approx(rounds[BEST]["central/dice_1"])
    c = meta["data_contract"]
    assert c["pixdim"] == [4.0, 4.0, 4.0] and c["orientation"] == "RAS" and c["roi_size"] == [32, 32, 32]
    assert set(c["intensity"]) == {"CT", "MR"} and c["labels"]["2"] == "lesion"
    # the exported weights are the run's global_best.pt
    from imaging_core.train.checkpoint import load_checkpoint
    net, _ = load_bundle(out, public_key=crt, scheme=MANIFEST_SIGNATURES)
    sd = load_checkpoint(run_dir / "global_best.pt")
    for k, v in net.state_dict().items():
        assert torch.equal(v, sd[k])
    # a second export (final) keeps the pseudonyms
    out2 = export_run(run_dir, tmp_path / "bundle_final", which="final", key=key)
    assert json.loads((out2 / "configs" / "metadata.json").read_text())["federated_provenance"]["round"] == ROUNDS
    assert json.loads((run_dir / PSEUDONYMS).read_text()) == mapping


def test_export_run_needs_federation_path(run_dir, tmp_path):
    from fl_server.export import export_run
    from imaging_core.errors import ImagingError
    info = json.loads((run_dir / "run.json").read_text())
    fed = info.pop("federation_path")
    write_json(run_dir / "run.json", info)
    with pytest.raises(ImagingError, match="federation"):
        export_run(run_dir, tmp_path / "b")
    assert export_run(run_dir, tmp_path / "b", federation_path=fed).is_dir()  # unsigned is allowed


# ------------------------------------------------------------------ held-out re-evaluation
def _phantom(rng, shape=(40, 36, 20)):
    x, y, z = np.meshgrid(*[np.arange(n) for n in shape], indexing="ij")
    c = np.array(shape) / 2 + rng.uniform(-2, 2, 3)
    body = ((x - c[0]) / 16) ** 2 + ((y - c[1]) / 14) ** 2 + ((z - c[2]) / 8) ** 2 < 1
    organ = ((x - c[0]) / 7) ** 2 + ((y - c[1]) / 6) ** 2 + ((z - c[2]) / 4) ** 2 < 1
    lesion = (x - c[0]) ** 2 + (y - c[1]) ** 2 + (z - c[2]) ** 2 < 5
    img = np.where(body, 40.0, -1000.0) + 60 * organ + 80 * lesion + rng.normal(0, 10, shape)
    lab = organ.astype(np.uint8)
    lab[lesion] = 2
    return img.astype(np.int16), lab


def mini_federation(root: Path, n_cases: int = 3) -> Path:
    """A federation TOML whose coordinator holds ``n_cases`` small LPS NIfTI cases."""
    import nibabel as nib
    rng = np.random.default_rng(3)
    aff = np.diag([-2.5, -2.5, 5.0, 1.0])
    aff[:3, 3] = (50.0, 40.0, -30.0)
    co = root / "data" / "coordinator"
    (co / "images").mkdir(parents=True)
    (co / "labels").mkdir()
    test = []
    for i in range(n_cases):
        img, lab = _phantom(rng)
        nib.save(nib.Nifti1Image(img, aff), co / "images" / f"c{i}.nii.gz")
        nib.save(nib.Nifti1Image(lab, aff), co / "labels" / f"c{i}.nii.gz")
        test.append({"image": f"images/c{i}.nii.gz", "label": f"labels/c{i}.nii.gz"})
    (co / "dataset.json").write_text(json.dumps({"labels": LABELS, "training": [], "validation": [],
                                                 "test": test}))
    (root / "sites").mkdir()
    for name in SITES + ["coordinator"]:
        (root / "sites" / f"{name}.toml").write_text(
            f'[site]\nname = "{name}"\ndata_root = "data/{name}"\nmodality = "CT"\n')
    sites = "".join(f'[[sites]]\nconfig = "sites/{s}.toml"\n\n' for s in SITES)
    toml = f"""[federation]
name = "mini"
[model]
name = "unet3d"
channels = [4, 8, 16]
strides = [2, 2]
num_res_units = 1
[train]
overlap = 0.25
[labels]
0 = "background"
1 = "organ"
2 = "lesion"
[preprocess]
orientation = "RAS"
pixdim = [4.0, 4.0, 4.0]
margin = 2
[sampling]
patch_size = [16, 16, 16]
{sites}[coordinator]
config = "sites/coordinator.toml"
"""
    (root / "federation.toml").write_text(toml)
    return root / "federation.toml"


def test_report_evaluates_held_out_cases(run_dir, tmp_path):
    from fl_server.report import make_report
    fed = mini_federation(tmp_path / "fed")
    out = make_report(run_dir, evaluate=True, federation_path=fed, data_base=tmp_path / "fed", quiet=True)
    per_case = (out / "held_out_cases.csv").read_text().splitlines()
    assert len(per_case) == 1 + 2 * 3  # global best + final, 3 cases each
    overlays = sorted(out.glob("overlay_*.png"))
    assert 1 <= len(overlays) <= 3
    md = (out / "report.md").read_text()
    assert all(f"]({p.name})" in md for p in out.glob("*.png"))
    fig = json.loads((out / "figures.json").read_text())
    assert "held-out cases" in fig["hd95_box.png"]["axes"][0]["title"]
