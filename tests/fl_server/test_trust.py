"""Attacks on what a site runs and what the coordinator exports, through the
real `fedvox` command: bundles are checked against a PINNED public key (never a
key inside the bundle), and a run directory cannot make `fedvox export` run code
or ship weights other than those the run record recorded."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from fl_common.crypto import pki
from fl_common.crypto.signing import MANIFEST_SIGNATURES as SIG

REPO = Path(__file__).resolve().parents[2]


def _key_pair(d: Path, name: str) -> tuple[Path, Path]:
    d.mkdir(parents=True, exist_ok=True)
    k = pki.new_key()
    (d / f"{name}.key").write_bytes(pki.key_pem(k))
    (d / f"{name}.pub").write_bytes(SIG.public_pem(k))
    return d / f"{name}.key", d / f"{name}.pub"


def _one_line_refusal(r, *words):
    assert r.returncode == 2, (r.returncode, r.stdout, r.stderr)
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in r.stderr, r.stderr
    for w in words:
        assert w in lines[0], lines[0]


@pytest.fixture(scope="module")
def signed(tmp_path_factory):
    """A bundle exported by `fedvox export --key` with the coordinator's bundle-signing key,
    the pinned public key, an attacker's key pair and a small input image."""
    import subprocess
    import sys
    from tests.fl_server.conftest import fabricate_run
    tmp = tmp_path_factory.mktemp("trust")
    run = fabricate_run(tmp / "run", keys_dir=tmp / "coordinator")  # its run-record key beside the bundle key
    key, pub = _key_pair(tmp / "coordinator", "bundle_signing")
    r = subprocess.run([sys.executable, "-m", "fl_server.cli", "export", str(run), "--out", str(tmp / "bundle"),
                        "--key", str(key)], capture_output=True, text=True, cwd=REPO, timeout=300)
    assert r.returncode == 0, r.stderr
    img = tmp / "image.nii.gz"
    rng = np.random.default_rng(0)
    nib.save(nib.Nifti1Image((rng.normal(0, 100, (24, 20, 12))).astype(np.int16), np.diag([4.0, 4, 4, 1])), img)
    return {"bundle": tmp / "bundle", "pub": pub, "key": key, "evil": _key_pair(tmp / "attacker", "evil"),
            "image": img, "run": run}


def _copy(signed, tmp_path) -> Path:
    dst = tmp_path / "b"
    shutil.copytree(signed["bundle"], dst)
    return dst


def _tamper(b: Path, signed) -> Path:
    """Weights changed after signing (the manifest left as signed)."""
    p = b / "models" / "model.pt"
    data = bytearray(p.read_bytes())
    data[len(data) // 2] ^= 0x01
    p.write_bytes(bytes(data))
    return b


def _resign(b: Path, signed) -> Path:
    """Weights changed, manifest rewritten and signed with the attacker's key, whose
    public half the bundle now carries."""
    from imaging_core.bundle.manifest import write_manifest
    _tamper(b, signed)
    write_manifest(b, SIG.load_private(signed["evil"][0]), SIG)
    shutil.copy(signed["evil"][1], b / "signer.pub.pem")
    return b


def _unsign(b: Path, signed) -> Path:
    """Weights changed, manifest rewritten without a signature."""
    from imaging_core.bundle.manifest import write_manifest
    _tamper(b, signed)
    write_manifest(b)
    return b


def test_intact_bundle_verifies_and_runs_against_the_pinned_key(cli, signed, tmp_path):
    r = cli("bundle", "verify", signed["bundle"], "--public-key", signed["pub"])
    assert r.returncode == 0 and json.loads(r.stdout)["ok"], r.stderr
    out = tmp_path / "seg.nii.gz"
    r = cli("infer", signed["bundle"], signed["image"], "--out", out, "--public-key", signed["pub"], "--quiet")
    assert r.returncode == 0 and out.is_file(), r.stderr


@pytest.mark.parametrize("attack,words", [(_tamper, ["models/model.pt", "changed"]),
                                          (_resign, ["signature", "pinned"]),
                                          (_unsign, ["not signed"])])
def test_attacked_bundle_is_refused_by_verify_and_infer(cli, signed, tmp_path, attack, words):
    b = attack(_copy(signed, tmp_path), signed)
    _one_line_refusal(cli("bundle", "verify", b, "--public-key", signed["pub"]), str(b), *words)
    out = tmp_path / "seg.nii.gz"
    _one_line_refusal(cli("infer", b, signed["image"], "--out", out, "--public-key", signed["pub"], "--quiet"),
                      str(b), *words)
    assert not out.exists()


def test_a_pinned_key_is_required(cli, signed, tmp_path):
    """Without --public-key/--kit nothing is trusted, not even the bundle's own signer.pub.pem."""
    _one_line_refusal(cli("bundle", "verify", signed["bundle"]), "--public-key")
    _one_line_refusal(cli("infer", signed["bundle"], signed["image"], "--out", tmp_path / "s.nii.gz"),
                      "--public-key")


def test_allow_unsigned_lets_an_unsigned_bundle_through_loudly(cli, signed, tmp_path):
    from imaging_core.bundle.manifest import write_manifest
    b = _copy(signed, tmp_path)
    write_manifest(b)  # honestly unsigned: files match the manifest
    r = cli("bundle", "verify", b, "--allow-unsigned")
    assert r.returncode == 0 and "WARNING" in r.stderr and "not signed" in r.stderr, r.stderr
    out = tmp_path / "seg.nii.gz"
    r = cli("infer", b, signed["image"], "--out", out, "--allow-unsigned", "--quiet")
    assert r.returncode == 0 and out.is_file() and "WARNING" in r.stderr, r.stderr
    # still a hash check of the manifest's files
    _tamper(b, signed)
    _one_line_refusal(cli("bundle", "verify", b, "--allow-unsigned"), "models/model.pt", "changed")


def test_export_runs_no_code_from_a_crafted_run_directory(cli, run_dir, tmp_path):
    from tests.imaging_core.train.test_checkpoint_safety import write_malicious_checkpoint
    marker = tmp_path / "pwned"
    for which in ("best", "final"):
        write_malicious_checkpoint(run_dir / f"global_{which}.pt", marker)
    r = cli("export", run_dir, "--out", tmp_path / "bundle")
    assert not marker.exists(), "the checkpoint's pickle ran code"
    _one_line_refusal(r, "global_best.pt")
    assert not (tmp_path / "bundle").exists()


def test_export_refuses_weights_the_run_record_did_not_write(cli, run_dir, tmp_path):
    """A valid checkpoint swapped in with a matching .sha256 sidecar: the record's hash catches it."""
    from imaging_core.train.checkpoint import load_checkpoint, save_checkpoint
    sd = load_checkpoint(run_dir / "global_final.pt")
    save_checkpoint(sd, run_dir / "global_best.pt")
    r = cli("export", run_dir, "--out", tmp_path / "bundle")
    _one_line_refusal(r, "global_best.pt", "run record")
    assert not (tmp_path / "bundle").exists()


def test_export_refuses_the_federation_ca_key(cli, run_dir, tmp_path, fab):
    from fl_common.kit import SERVER_BUNDLE_KEY
    prov = tmp_path / "prov"
    (prov / "server").mkdir(parents=True)
    key, crt = fab.ca_key(prov / "server")
    _one_line_refusal(cli("export", run_dir, "--out", tmp_path / "b1", "--key", key, "--provision", prov),
                      "CA")
    _one_line_refusal(cli("export", run_dir, "--out", tmp_path / "b2", "--key", key), "CA")  # ca.crt beside it
    # --provision alone picks the dedicated key (and checks the run with its run-record key)
    bkey, bpub = _key_pair(prov / "server", Path(SERVER_BUNDLE_KEY).stem)
    shutil.copy(tmp_path / "run_record.pub", prov / "server")  # the key the fixture's run was signed with
    r = cli("export", run_dir, "--out", tmp_path / "b3", "--provision", prov)
    assert r.returncode == 0, r.stderr
    assert cli("bundle", "verify", tmp_path / "b3", "--public-key", bpub).returncode == 0
    assert cli("bundle", "verify", tmp_path / "b3", "--public-key", crt).returncode == 2


def test_report_refuses_weights_the_run_record_did_not_write(cli, run_dir, tmp_path, fab):
    from imaging_core.train.checkpoint import load_checkpoint, save_checkpoint
    fed = fab.mini_federation(tmp_path / "fed")
    info = json.loads((run_dir / "run.json").read_text())
    (run_dir / "run.json").write_text(json.dumps({**info, "federation_path": str(fed),
                                                  "data_base": str(tmp_path / "fed")}))
    save_checkpoint(load_checkpoint(run_dir / "global_final.pt"), run_dir / "global_best.pt")
    _one_line_refusal(cli("report", run_dir, timeout=300), "global_best.pt", "run record")


def test_kit_pins_its_bundle_signing_key(cli, signed, tmp_path):
    from fl_common.kit import KIT_BUNDLE_PUB
    kit = tmp_path / "kit"
    kit.mkdir()
    _one_line_refusal(cli("bundle", "verify", signed["bundle"], "--kit", kit), KIT_BUNDLE_PUB, "missing")
    shutil.copy(signed["pub"], kit / KIT_BUNDLE_PUB)
    assert cli("bundle", "verify", signed["bundle"], "--kit", kit).returncode == 0
    shutil.copy(signed["evil"][1], kit / KIT_BUNDLE_PUB)  # a kit pinning another key refuses it
    _one_line_refusal(cli("bundle", "verify", signed["bundle"], "--kit", kit), "pinned")
