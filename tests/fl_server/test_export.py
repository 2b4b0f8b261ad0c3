"""`fedvox export`: a fabricated run's global model as a signed bundle."""
from __future__ import annotations

import json

import pytest
import torch

from fl_server.records import write_json


def test_export_run_builds_signed_bundle_with_pseudonyms(run_dir, tmp_path, fab):
    from fl_common.crypto.signing import MANIFEST_SIGNATURES
    from fl_server.export import PSEUDONYMS, export_run
    from imaging_core.bundle.load import load_bundle
    from imaging_core.bundle.verify import verify_bundle
    key, crt = fab.bundle_key(tmp_path)
    out = export_run(run_dir, tmp_path / "bundle", which="best", key=key)
    assert verify_bundle(out, public_key=crt, scheme=MANIFEST_SIGNATURES) == []
    meta = json.loads((out / "configs" / "metadata.json").read_text())
    prov = meta["federated_provenance"]
    assert prov["run_id"] == "20260101-120000" and prov["round"] == fab.BEST and prov["which"] == "best"
    assert prov["secure_aggregation"]["mode"] == "secagg+"
    assert prov["sites"] == ["site-1", "site-2", "site-3"]
    # no real site name anywhere in the bundle
    for f in out.rglob("*"):
        if f.is_file() and f.suffix in (".json", ".md"):
            assert not any(s in f.read_text() for s in fab.SITES), f
    mapping = json.loads((run_dir / PSEUDONYMS).read_text())
    assert mapping == {"hospital_a": "site-1", "hospital_b": "site-2", "hospital_c": "site-3"}
    assert (run_dir / PSEUDONYMS).stat().st_mode & 0o077 == 0
    rounds = json.loads((run_dir / "rounds.json").read_text())
    assert prov["metrics"]["held_out"]["dice_1"] == pytest.approx(rounds[fab.BEST]["central/dice_1"])
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
    assert json.loads((out2 / "configs" / "metadata.json").read_text())["federated_provenance"]["round"] == fab.ROUNDS
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




def test_export_auto_postprocess_decided_on_sites_validation(run_dir, tmp_path):
    """nnU-Net's rule on the sites' recorded validation metrics: class 1 gains from keeping
    its largest component, class 2 loses; the decision is recorded in the run directory
    and the bundle ships it (MONAI's KeepLargestConnectedComponentd on class 1 only)."""
    from fl_server.export import DECISION_FILE, export_run
    final = json.loads((run_dir / "final_sites.json").read_text())
    for i, row in enumerate(final["sites"]):
        row.update({"global/raw_dice_1": 0.70 + 0.01 * i, "global/lcc_dice_1": 0.78,
                    "global/raw_dice_2": 0.50, "global/lcc_dice_2": 0.40})
    write_json(run_dir / "final_sites.json", final)
    rounds = json.loads((run_dir / "rounds.json").read_text())
    rounds[-1].update({"central/raw_dice_1": 0.6, "central/lcc_dice_1": 0.7,
                       "central/raw_dice_2": 0.3, "central/lcc_dice_2": 0.2})
    write_json(run_dir / "rounds.json", rounds)
    write_json(run_dir / "plan.json", {"pixdim": [4.0, 4.0, 4.0], "patch_size": [32, 32, 32]})  # `fedvox plan`'s
    out = export_run(run_dir, tmp_path / "b", which="final", postprocess="auto")
    meta = json.loads((out / "configs" / "metadata.json").read_text())
    plan = meta["data_contract"]["plan"]  # the run's plan travels, with the decision in it
    assert plan["patch_size"] == [32, 32, 32] and plan["postprocess"]["classes"] == [1]
    assert meta["data_contract"]["postprocess"]["chain"] == [{"name": "largest_component", "classes": [1]}]
    prov = meta["federated_provenance"]
    assert prov["postprocess"]["policy"] == "auto" and prov["postprocess"]["decision"]["source"].startswith("sites")
    # the held-out figures the bundle states are those expected under the shipped chain
    assert prov["metrics"]["held_out"]["dice_1"] == 0.7 and prov["metrics"]["held_out"]["dice_2"] == 0.3
    inf = json.loads((out / "configs" / "inference.json").read_text())
    assert inf["postprocessing"]["transforms"][1]["applied_labels"] == [1]
    rec = json.loads((run_dir / DECISION_FILE).read_text())
    assert rec["classes"] == [1] and rec["per_class"]["2"]["keep"] is False
    # "run" (the default) ships the chain the run evaluated with: here none
    out2 = export_run(run_dir, tmp_path / "b2", which="final")
    assert json.loads((out2 / "configs" / "metadata.json").read_text())["data_contract"]["postprocess"] == \
        {"chain": []}


def test_export_refuses_a_chain_monai_cannot_express(run_dir, tmp_path):
    from fl_server.export import export_run
    from imaging_core.errors import ImagingError
    info = json.loads((run_dir / "run.json").read_text())
    info["postprocess"] = {"chain": ["crf", "largest_component"]}
    write_json(run_dir / "run.json", info)
    with pytest.raises(ImagingError, match=r"run\.json: \[postprocess\] of the run: .*'crf' cannot be expressed"):
        export_run(run_dir, tmp_path / "b")
    assert not (tmp_path / "b").exists()


def test_cli_infer_folder_in_folder_out_and_a_refused_input(cli, run_dir, tmp_path, fab):
    """`fedvox infer BUNDLE DIR --out DIR` segments every image in DIR; an input the
    bundle was not made for (a CT not in HU) is one line on stderr, exit 2, unless forced."""
    import nibabel as nib
    import numpy as np
    key, crt = fab.bundle_key(tmp_path)
    assert cli("export", "--out", tmp_path / "bundle", "--key", key, run_dir).returncode == 0
    aff = np.diag([-2.5, -2.5, 5.0, 1.0])
    rng = np.random.default_rng(0)
    (tmp_path / "in").mkdir()
    for i in range(2):
        img = np.where(rng.random((24, 20, 12)) > 0.5, 40, -1000).astype(np.int16)
        nib.save(nib.Nifti1Image(img, aff), tmp_path / "in" / f"p{i}.nii.gz")
    r = cli("infer", tmp_path / "bundle", tmp_path / "in", "--out", tmp_path / "out", "--public-key", crt,
            "--quiet", timeout=240)
    assert r.returncode == 0, r.stderr
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["p0_seg.nii.gz", "p1_seg.nii.gz"]
    nib.save(nib.Nifti1Image(np.full((24, 20, 12), 500, np.int16) + np.arange(12, dtype=np.int16), aff),
             tmp_path / "raw.nii.gz")
    r = cli("infer", tmp_path / "bundle", tmp_path / "raw.nii.gz", "--out", tmp_path / "raw_seg.nii.gz",
            "--public-key", crt, "--quiet")
    assert r.returncode == 2 and "raw.nii.gz" in r.stderr and "Hounsfield" in r.stderr, r.stderr
    assert "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) == 1
    r = cli("infer", tmp_path / "bundle", tmp_path / "raw.nii.gz", "--out", tmp_path / "raw_seg.nii.gz",
            "--public-key", crt, "--quiet", "--force", "intensity", timeout=240)
    assert r.returncode == 0 and (tmp_path / "raw_seg.nii.gz").is_file(), r.stderr


def test_export_uses_the_preprocessing_the_run_recorded(run_dir, tmp_path):
    """run.json's [preprocess] (the plan's under "auto") is the bundle's, not the TOML's 4 mm."""
    from fl_server.export import export_run
    from fl_server.records import RunRecord
    from imaging_core.config import PreprocessTable
    table = PreprocessTable(pixdim=[3.0, 3.0, 5.0]).model_dump()
    rec = RunRecord(run_dir)
    status = rec.info.get("status", "completed")
    rec.start({"preprocess": table, "preprocess_source": "plan"})
    rec.finish(status)
    meta = json.loads((export_run(run_dir, tmp_path / "b") / "configs" / "metadata.json").read_text())
    assert meta["data_contract"]["pixdim"] == [3.0, 3.0, 5.0]
    assert meta["federated_provenance"]["preprocess_source"] == "plan"
