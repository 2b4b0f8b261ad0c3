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


