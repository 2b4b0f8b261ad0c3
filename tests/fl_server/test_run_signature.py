"""The run record's signed manifest: whoever can write a run directory (a local user,
a restored backup) cannot get `fedvox export` to sign a model the run did not write.
Every attack below rewrites the model file AND its .sha256 sidecar AND run.json's hash,
which is all the unsigned record had."""
from __future__ import annotations

import json

import pytest
import torch

from fl_common.crypto.signing import MANIFEST_SIGNATURES as SIG
from fl_common.crypto.signing import RUN_RECORD_SIGNATURES
from fl_server.record_manifest import RecordKey
from fl_server.records import MANIFEST, RunRecord, write_json
from imaging_core.errors import ImagingError
from imaging_core.train.checkpoint import save_checkpoint


def _swap_model(run_dir, which: str = "best") -> str:
    """Another model written in place of global_<which>.pt, its sidecar recomputed and
    run.json's hash updated to match; returns the new SHA-256."""
    path = run_dir / f"global_{which}.pt"
    state = torch.load(path, weights_only=True)
    digest = save_checkpoint({k: v + 1.0 if v.is_floating_point() else v for k, v in state.items()}, path)
    info = json.loads((run_dir / "run.json").read_text())
    info["files"][path.name] = digest
    write_json(run_dir / "run.json", info)
    return digest


def _export(run_dir, tmp_path, key, **kw):
    from fl_server.export import export_run
    return export_run(run_dir, tmp_path / "bundle", key=key, **kw)


def test_the_honest_run_exports_and_the_bundle_says_its_record_was_verified(run_dir, tmp_path, fab):
    key, _ = fab.bundle_key(tmp_path)
    # a later `fedvox server` start rewrites spec.json before its ServerApp re-signs: not a refusal
    write_json(run_dir / "spec.json", {"run_dir": str(run_dir), "rounds": 5})
    meta = json.loads((_export(run_dir, tmp_path, key) / "configs" / "metadata.json").read_text())
    assert meta["federated_provenance"]["run_record"].startswith("signed; verified")


def test_a_swapped_checkpoint_with_its_sidecar_recomputed_is_refused(run_dir, tmp_path, fab):
    key, _ = fab.bundle_key(tmp_path)
    _swap_model(run_dir)
    with pytest.raises(ImagingError, match=r"global_best\.pt: SHA-256 .* differs from the .* signed run "
                                           r"manifest records"):
        _export(run_dir, tmp_path, key)
    assert not (tmp_path / "bundle").exists()


def test_an_edited_manifest_is_refused(run_dir, tmp_path, fab):
    """The attacker also writes the swapped file's hash into the manifest (keeping the signature)."""
    key, _ = fab.bundle_key(tmp_path)
    digest = _swap_model(run_dir)
    doc = json.loads((run_dir / MANIFEST).read_text())
    doc["manifest"]["files"]["global_best.pt"] = digest
    write_json(run_dir / MANIFEST, doc)
    with pytest.raises(ImagingError, match=r"run_manifest\.json: refused: .*altered after signing"):
        _export(run_dir, tmp_path, key)
    assert not (tmp_path / "bundle").exists()


def test_a_manifest_signed_by_another_key_is_refused(run_dir, tmp_path, fab):
    """The attacker re-signs the whole manifest, swapped hash included, with a key of their own."""
    key, _ = fab.bundle_key(tmp_path)
    digest = _swap_model(run_dir)
    m = json.loads((run_dir / MANIFEST).read_text())["manifest"]
    m["files"]["global_best.pt"] = digest
    SIG.write_key_pair(tmp_path / "evil.key", tmp_path / "evil.pub")
    write_json(run_dir / MANIFEST, RUN_RECORD_SIGNATURES.sign(SIG.load_private(tmp_path / "evil.key"), m))
    with pytest.raises(ImagingError, match=r"run_manifest\.json: refused: signed by another key"):
        _export(run_dir, tmp_path, key)
    # a forged signer fingerprint does not help: the signature is checked against the pinned key
    doc = json.loads((run_dir / MANIFEST).read_text())
    doc["signer"] = SIG.fingerprint(SIG.load_public(tmp_path / "run_record.pub"))
    write_json(run_dir / MANIFEST, doc)
    with pytest.raises(ImagingError, match=r"run_manifest\.json: refused: .*altered after signing"):
        _export(run_dir, tmp_path, key)


@pytest.mark.parametrize("edit,where,what", [
    (lambda d: write_json(d / "plan.json", {"pixdim": [1.0, 1.0, 1.0]}), "plan.json", "was not there"),
    (lambda d: write_json(d / "run.json", {**json.loads((d / "run.json").read_text()), "run_id": "other"}),
     "run.json", "run_id 'other' differs from the signed manifest's '20260101-120000'"),
])
def test_records_beside_the_models_are_checked_too(run_dir, tmp_path, fab, edit, where, what):
    key, _ = fab.bundle_key(tmp_path)
    edit(run_dir)
    with pytest.raises(ImagingError, match=rf"{where}: {what}"):
        _export(run_dir, tmp_path, key)


def _edit_run_json(d, **fields):
    write_json(d / "run.json", {**json.loads((d / "run.json").read_text()), **fields})


@pytest.mark.parametrize("edit,what", [
    # the pipeline around a signed model: a bundle that preprocesses or post-processes otherwise
    # than the run evaluated segments otherwise, under the run's figures
    (lambda d: _edit_run_json(d, preprocess={"pixdim": [8.0, 8.0, 8.0]}), r"run\.json: 'preprocess' differs"),
    (lambda d: _edit_run_json(d, postprocess={"chain": []}), r"run\.json: 'postprocess' differs"),
    (lambda d: _edit_run_json(d, labels={"0": "background", "1": "lesion", "2": "organ"}),
     r"run\.json: 'labels' differs"),
    (lambda d: _edit_run_json(d, federation_path="/tmp/elsewhere.toml"), r"run\.json: 'federation_path' differs"),
    (lambda d: _edit_run_json(d, best_round=1), r"run\.json: 'best_round' differs"),
    # the figures the bundle's metadata advertises
    (lambda d: write_json(d / "rounds.json", [{**r, "central/dice_fg_mean": 0.99}
                                              for r in json.loads((d / "rounds.json").read_text())]),
     r"rounds\.json: SHA-256 .* differs from the signed manifest's"),
    (lambda d: write_json(d / "sites.json", json.loads((d / "sites.json").read_text())[:-1]),
     r"sites\.json: SHA-256 .* differs from the signed manifest's"),
])
def test_run_settings_and_figures_are_signed_with_the_models(run_dir, tmp_path, fab, edit, what):
    key, _ = fab.bundle_key(tmp_path)
    edit(run_dir)
    with pytest.raises(ImagingError, match=what):
        _export(run_dir, tmp_path, key)
    assert not (tmp_path / "bundle").exists()


def test_an_edited_federation_config_is_refused_unless_named_on_purpose(tmp_path, fab):
    """The run reads its config by path: whoever edits that file after the run (another
    model size, another label map) must not change what a signed export ships."""
    import shutil
    from pathlib import Path
    src = Path(__file__).resolve().parents[2] / "sites_example"
    cfg = shutil.copytree(src, tmp_path / "cfg", ignore=shutil.ignore_patterns("*.py", "__pycache__"))
    run_dir = fab.run(tmp_path / "run", federation=cfg / "federation.toml")
    key, _ = fab.bundle_key(tmp_path)
    toml = cfg / "federation.toml"
    toml.write_text(toml.read_text() + "\n# edited after the run\n")
    with pytest.raises(ImagingError, match=r"federation\.toml: changed since the run read it .*--federation"):
        _export(run_dir, tmp_path, key, data_base=src)
    assert not (tmp_path / "bundle").exists()
    _export(run_dir, tmp_path, key, data_base=src, federation_path=toml)  # named on purpose: the user's call


def test_an_unsigned_run_or_a_missing_public_key_is_refused_unless_allowed(run_dir, tmp_path, fab, capsys):
    key, _ = fab.bundle_key(tmp_path)
    (tmp_path / "run_record.pub").rename(tmp_path / "elsewhere.pub")
    with pytest.raises(ImagingError, match=r"run_record\.pub: missing: .*pass --provision"):
        _export(run_dir, tmp_path, key)
    (tmp_path / "elsewhere.pub").rename(tmp_path / "run_record.pub")
    (run_dir / MANIFEST).unlink()  # a run written before run records were signed
    with pytest.raises(ImagingError, match=r"run_manifest\.json: missing: the run record is not signed.*"
                                           r"--allow-unsigned-run"):
        _export(run_dir, tmp_path, key)
    out = _export(run_dir, tmp_path, key, allow_unsigned_run=True)
    assert "WARNING" in capsys.readouterr().err
    assert json.loads((out / "configs" / "metadata.json").read_text())["federated_provenance"]["run_record"] \
        == "not verified"
    # the escape hatch does not cover a record that is signed but does not verify
    fab.run(tmp_path / "run2")
    _swap_model(tmp_path / "run2")
    from fl_server.export import export_run
    with pytest.raises(ImagingError, match="global_best.pt"):
        export_run(tmp_path / "run2", tmp_path / "b2", key=key, allow_unsigned_run=True)


def test_cli_refusal_is_one_line_and_names_the_file(cli, run_dir, tmp_path, fab):
    key, _ = fab.bundle_key(tmp_path)
    _swap_model(run_dir, "final")
    r = cli("export", run_dir, "--which", "final", "--out", tmp_path / "b", "--key", key)
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "global_final.pt" in lines[0] and "signed run manifest" in lines[0], lines


def test_a_resumed_writer_signs_from_its_manifest_not_from_an_edited_run_json(run_dir, tmp_path):
    """The server resuming a run takes the hashes it signed before: a swapped round
    checkpoint is refused on resume, and the next re-signing does not adopt it."""
    signer = RecordKey.signer(tmp_path / "run_record.key")
    rec = RunRecord(run_dir, signer=signer)
    rec.save_round_checkpoint(1, {"flat": torch.zeros(4), "round": 1})
    path = rec.checkpoint_path(1)
    digest = save_checkpoint({"flat": torch.ones(4), "round": 1}, path)
    info = json.loads((run_dir / "run.json").read_text())
    info["files"]["checkpoints/round-0001.pt"] = digest
    write_json(run_dir / "run.json", info)
    resumed = RunRecord(run_dir, signer=signer)
    with pytest.raises(ImagingError, match=r"round-0001\.pt: SHA-256 .* signed run manifest"):
        resumed.load_round_checkpoint(1)
    resumed.save_round_checkpoint(2, {"flat": torch.zeros(4), "round": 2})  # re-signs
    signed = json.loads((run_dir / MANIFEST).read_text())["manifest"]["files"]
    assert signed["checkpoints/round-0001.pt"] != digest and "checkpoints/round-0002.pt" in signed
    assert RunRecord.open(run_dir, verify_key=RecordKey.verifier(tmp_path / "run_record.pub")) \
        .load_round_checkpoint(2)["round"] == 2
    # a manifest re-signed by someone else stops the server from resuming at all
    SIG.write_key_pair(tmp_path / "evil.key", tmp_path / "evil.pub")
    write_json(run_dir / MANIFEST, RUN_RECORD_SIGNATURES.sign(SIG.load_private(tmp_path / "evil.key"), signed))
    with pytest.raises(ImagingError, match="signed by another key"):
        RunRecord(run_dir, signer=signer)


def test_a_signed_run_cannot_begin_from_unsigned_model_files(tmp_path):
    RunRecord(tmp_path / "run").save_model("final", {"w": torch.zeros(2)})  # no key: run.json hash only
    SIG.write_key_pair(tmp_path / "run_record.key", tmp_path / "run_record.pub")
    with pytest.raises(ImagingError, match=r"run_manifest\.json: missing, but run\.json records model files"):
        RunRecord(tmp_path / "run", signer=RecordKey.signer(tmp_path / "run_record.key"))


def test_a_provision_without_a_run_record_key_is_refused_before_anything_starts(cli, run_dir, tmp_path):
    """A provision made before run records were signed: `fedvox server` refuses at once
    (not mid-run), and `fedvox export --provision` cannot check a run with it."""
    from fl_server.demo import enroll_and_provision
    prov, _ = enroll_and_provision(tmp_path, ["a", "b"], "old")
    prov.run_record_key.unlink()
    prov.run_record_pub.unlink()
    r = cli("server", "--provision", prov.root, "--federation", tmp_path / "none.toml", "--run-dir",
            tmp_path / "r", "--work", tmp_path / "w")
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert "run_record.key: missing" in r.stderr and "re-provision" in r.stderr
    assert not (tmp_path / "w").exists()
    r = cli("export", run_dir, "--out", tmp_path / "b", "--provision", prov.root)
    assert r.returncode == 2 and "run_record.pub: missing" in r.stderr and "re-provision" in r.stderr, r.stderr
