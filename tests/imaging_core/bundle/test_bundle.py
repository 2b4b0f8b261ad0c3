"""Bundle export / verify / load / infer, checked against MONAI's own tools.

One tiny bundle (a 2-level UNet3D with random weights) is exported per module
and copied where a test modifies it.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

# the signature scheme fedvox hands to imaging_core.bundle (all cryptography lives there)
from fl_common.crypto.signing import MANIFEST_SIGNATURES as SIG

REPO = Path(__file__).resolve().parents[3]
SCHEMA = REPO.parent / "shared" / "data" / "monai_bundle_meta_schema_20240725.json"
MODEL = {"name": "unet3d", "channels": [4, 8, 16], "strides": [2, 2], "num_res_units": 1}
LABELS = {"0": "background", "1": "organ", "2": "lesion"}
CONTRACT = {"orientation": "RAS", "pixdim": [4.0, 4.0, 4.0],
            "intensity": {"CT": {"kind": "window", "a_min": -200.0, "a_max": 300.0}, "MR": {"kind": "zscore"}},
            "modality": "CT", "crop_foreground": True, "foreground_threshold": 0.05, "margin": 2,
            "labels": LABELS, "roi_size": [16, 16, 16], "overlap": 0.25, "sw_batch_size": 2}
PROVENANCE = {"run_id": "20260101-120000", "federation": "test-federation", "rounds": 3, "strategy": "fedavg",
              "secure_aggregation": {"mode": "secagg+", "threshold": 2}, "which": "best", "round": 2,
              "sites": ["site-1", "site-2"],
              "metrics": {"held_out": {"dice_fg_mean": 0.61, "dice_1": 0.8, "hd95_1": 4.2, "missed_1": 0,
                                       "dice_2": 0.42, "hd95_2": float("nan"), "missed_2": 1},
                          "sites": {"site-1": {"global/dice_fg_mean": 0.6, "local/dice_fg_mean": 0.5}}}}


def _key(tmp: Path):
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    k = ec.generate_private_key(ec.SECP384R1())
    pem = tmp / "signing.key"
    pem.write_bytes(k.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                    serialization.NoEncryption()))
    ssh = tmp / "signing_openssh.key"
    ssh.write_bytes(k.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH,
                                    serialization.NoEncryption()))
    pub = tmp / "signing.pub"
    pub.write_bytes(k.public_key().public_bytes(serialization.Encoding.OpenSSH,
                                                serialization.PublicFormat.OpenSSH))
    return k, pem, ssh, pub


def _net(seed=0):
    from imaging_core.nets.unet3d import unet_from_config
    torch.manual_seed(seed)
    return unet_from_config({**MODEL, "in_channels": 1, "out_channels": len(LABELS)}).eval()


@pytest.fixture(scope="module")
def keys(tmp_path_factory):
    return _key(tmp_path_factory.mktemp("keys"))


@pytest.fixture(scope="module")
def bundle(tmp_path_factory, keys):
    from imaging_core.bundle.export import export_bundle
    from imaging_core.task import float_state
    out = tmp_path_factory.mktemp("bundles") / "fedvox_bundle"
    net = _net()
    export_bundle(float_state(net), MODEL, CONTRACT, PROVENANCE, out, signing_key_path=keys[1],
                  signature_scheme=SIG)
    shutil.copy(keys[3], _pin(out))
    return out, net


def _pin(root) -> Path:
    """The signer's public key a site pins for this bundle (kept beside it, not in it)."""
    return Path(root).parent / "pinned.pub"


@pytest.fixture
def bundle_copy(bundle, tmp_path):
    dst = tmp_path / "copy"
    shutil.copytree(bundle[0], dst)
    shutil.copy(_pin(bundle[0]), _pin(dst))
    return dst


def _phantom_nifti(path: Path, affine: np.ndarray, shape=(40, 36, 20), seed=0) -> Path:
    rng = np.random.default_rng(seed)
    x, y, z = np.meshgrid(*[np.arange(n) for n in shape], indexing="ij")
    c = np.array(shape) / 2
    body = ((x - c[0]) / 16) ** 2 + ((y - c[1]) / 14) ** 2 + ((z - c[2]) / 8) ** 2 < 1
    organ = ((x - c[0] - 3) / 7) ** 2 + ((y - c[1]) / 6) ** 2 + ((z - c[2]) / 4) ** 2 < 1
    img = np.where(body, 40.0, -1000.0) + 80 * organ + rng.normal(0, 10, shape)
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(img.astype(np.int16), affine), path)
    lab = path.with_name(path.name.replace(".nii.gz", "_label.nii.gz"))
    nib.save(nib.Nifti1Image(organ.astype(np.uint8), affine), lab)
    return path


def _lps_affine(spacing=(2.31, 2.73, 3.17), origin=(50.3, 40.1, -30.7)):
    # spacings incommensurate with the 4 mm grid: few exact nearest-neighbour ties
    a = np.diag([-spacing[0], -spacing[1], spacing[2], 1.0])
    a[:3, 3] = origin
    return a


# -------------------------------------------------------------------------- MONAI's tools
def test_layout_and_metadata_valid_against_local_schema(bundle):
    from monai.bundle import verify_metadata
    import jsonschema
    root, _ = bundle
    for rel in ("configs/metadata.json", "configs/inference.json", "models/model.pt", "models/model.ts",
                "docs/README.md", "LICENSE", "manifest.json", "manifest.json.sig"):
        assert (root / rel).is_file(), rel
    assert not (root / "signer.pub.pem").exists()  # no key in the bundle to be mistaken for a trust anchor
    assert SCHEMA.is_file()
    # filepath = the local copy, so nothing is downloaded; raises on an invalid file
    verify_metadata(meta_file=str(root / "configs" / "metadata.json"), filepath=str(SCHEMA))
    meta = json.loads((root / "configs" / "metadata.json").read_text())
    jsonschema.validate(meta, json.loads(SCHEMA.read_text()))
    nd = meta["network_data_format"]
    assert nd["inputs"]["image"]["num_channels"] == 1 and nd["inputs"]["image"]["value_range"] == [0.0, 1.0]
    assert nd["outputs"]["pred"]["num_channels"] == 3 and nd["outputs"]["pred"]["channel_def"] == LABELS
    c = meta["data_contract"]
    assert (c["orientation"], c["pixdim"], c["labels"]) == ("RAS", [4.0, 4.0, 4.0], LABELS)
    assert c["intensity"]["CT"]["a_min"] == -200.0
    prov = meta["federated_provenance"]
    assert prov["run_id"] == PROVENANCE["run_id"] and prov["secure_aggregation"]["mode"] == "secagg+"
    assert prov["metrics"]["held_out"]["hd95_2"] is None  # NaN is not JSON
    assert meta["eval_metrics"]["held_out_dice_1"] == 0.8
    readme = (root / "docs" / "README.md").read_text()
    for s in ("site-1", "secagg+", "monai.bundle run", "RAS", "lesion", "0.800", "monai.networks.nets.UNet"):
        assert s in readme, s


def test_monai_net_in_out_and_load(bundle, tmp_path):
    from monai.bundle import load, verify_net_in_out
    root, net = bundle
    verify_net_in_out(net_id="network_def", meta_file=str(root / "configs" / "metadata.json"),
                      config_file=str(root / "configs" / "inference.json"))
    m = load(name=root.name, bundle_dir=str(root.parent), workflow_type="inference", device="cpu")
    assert type(m).__name__ == "UNet" and type(m).__module__.startswith("monai.")
    assert torch.is_grad_enabled()  # loading the bundle changed no global torch state
    x = torch.randn(1, 1, 24, 16, 32)
    with torch.no_grad():
        np.testing.assert_allclose(m.eval()(x).numpy(), net(x).numpy(), atol=1e-4)


@pytest.mark.parametrize("modality", ["CT", "MR"])
def test_monai_bundle_run_writes_prediction_in_input_space(bundle, tmp_path, modality):
    """`python -m monai.bundle run` (MONAI alone, no ignite) segments a NIfTI, and agrees with
    fedvox's own inference up to nearest-neighbour ties; `--modality MR` switches the
    intensity rule and crop threshold as fedvox's preprocessing does."""
    from imaging_core.bundle.infer import infer_file
    root, _ = bundle
    aff = _lps_affine()
    img = _phantom_nifti(tmp_path / "in" / "case1.nii.gz", aff)
    (tmp_path / "in" / "case1_label.nii.gz").unlink()
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    proc = subprocess.run([sys.executable, "-m", "monai.bundle", "run", "--config_file",
                           str(root / "configs" / "inference.json"), "--bundle_root", str(root),
                           "--dataset_dir", str(tmp_path / "in"), "--output_dir", str(tmp_path / "out"),
                           "--modality", modality],
                          capture_output=True, text=True, timeout=240, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = tmp_path / "out" / "case1_seg.nii.gz"
    assert out.is_file(), proc.stderr[-3000:]
    got = nib.load(out)
    assert got.shape == nib.load(img).shape
    np.testing.assert_allclose(got.affine, aff, atol=1e-4)
    mon = np.asarray(got.dataobj)
    assert set(np.unique(mon)) <= {0, 1, 2}
    ours = infer_file(root, img, tmp_path / "ours.nii.gz", progress=False, modality=modality, scheme=SIG,
                      public_key=_pin(root))
    assert (mon == np.asarray(nib.load(ours).dataobj)).mean() > 0.98
    assert not (root / "eval").exists()  # the run above wrote outside the bundle


def test_torchscript_equals_eager(bundle):
    from imaging_core.bundle.load import load_bundle
    root, net = bundle
    ts = torch.jit.load(str(root / "models" / "model.ts"), _extra_files={"data_contract.json": ""})
    loaded, contract = load_bundle(root, scheme=SIG, public_key=_pin(root))
    for shape in ((1, 1, 16, 16, 16), (2, 1, 32, 24, 16)):  # other sizes than the export's roi
        x = torch.randn(*shape)
        with torch.no_grad():
            eager = net(x)
            assert torch.allclose(ts(x), eager, atol=1e-5)
            assert torch.equal(loaded(x), eager)  # weights survive the MONAI key round trip
    assert contract["labels"] == LABELS


# ------------------------------------------------------------------------- verification
def test_verify_intact_with_pinned_keys_only(bundle, keys):
    from imaging_core.bundle.verify import verify_bundle
    root, _ = bundle
    k, pem, ssh, pub = keys
    assert verify_bundle(root, scheme=SIG) == [
        "no pinned public key given: the signer's key must come from the federation (its kit), never from the bundle"]
    assert verify_bundle(root, scheme=SIG, allow_unsigned=True) == []  # integrity only
    assert verify_bundle(root, public_key=pub, scheme=SIG) == []  # OpenSSH public key
    assert verify_bundle(root, public_key=pem, scheme=SIG) == []  # private key file: its public half
    assert verify_bundle(root, public_key=k.public_key(), scheme=SIG) == []


@pytest.mark.parametrize("rel", ["configs/inference.json", "models/model.pt", "docs/README.md", "LICENSE",
                                 "configs/metadata.json", "models/model.ts"])
def test_changed_file_fails_naming_it(bundle_copy, rel):
    from imaging_core.bundle.load import load_bundle
    from imaging_core.bundle.verify import verify_bundle
    from imaging_core.errors import ImagingError
    p = bundle_copy / rel
    data = bytearray(p.read_bytes())
    data[len(data) // 2] ^= 0x01  # one bit
    p.write_bytes(bytes(data))
    problems = verify_bundle(bundle_copy, scheme=SIG, public_key=_pin(bundle_copy))
    assert len(problems) == 1 and problems[0].startswith(f"{rel}: changed"), problems
    with pytest.raises(ImagingError, match=rel.replace(".", r"\.")):
        load_bundle(bundle_copy, scheme=SIG, public_key=_pin(bundle_copy))


def test_added_and_missing_files_named(bundle_copy):
    from imaging_core.bundle.verify import verify_bundle
    (bundle_copy / "models" / "extra.pt").write_bytes(b"x")
    (bundle_copy / "scripts").mkdir(exist_ok=True)  # the MR rule (head z-score) ships scripts/ already
    (bundle_copy / "scripts" / "hook.py").write_text("import os\n")
    (bundle_copy / "docs" / "README.md").unlink()
    problems = verify_bundle(bundle_copy, scheme=SIG, public_key=_pin(bundle_copy))
    assert any(p.startswith("models/extra.pt: added") for p in problems)
    assert any(p.startswith("scripts/hook.py: added") for p in problems)
    assert any(p.startswith("docs/README.md: missing") for p in problems)
    assert len(problems) == 3


def test_runtime_folders_skipped_unless_strict(bundle_copy):
    from imaging_core.bundle.verify import verify_bundle
    (bundle_copy / "eval").mkdir()
    (bundle_copy / "eval" / "x_seg.nii.gz").write_bytes(b"\x1f\x8b")
    assert verify_bundle(bundle_copy, scheme=SIG, public_key=_pin(bundle_copy)) == []
    assert verify_bundle(bundle_copy, strict=True, scheme=SIG, public_key=_pin(bundle_copy)) == [
        "eval/x_seg.nii.gz: added (not in the manifest)"]


def test_resealed_manifest_fails_signature(bundle_copy, keys, tmp_path):
    """Someone edits a file and rewrites manifest.json, or re-signs it with their own key:
    the pinned key catches both."""
    from imaging_core.bundle.manifest import write_manifest
    from imaging_core.bundle.verify import verify_bundle
    cfg = json.loads((bundle_copy / "configs" / "inference.json").read_text())
    cfg["bundle_root"] = "/tmp"
    (bundle_copy / "configs" / "inference.json").write_text(json.dumps(cfg))
    m = json.loads((bundle_copy / "manifest.json").read_text())
    from imaging_core.bundle.manifest import sha256_file
    m["files"]["configs/inference.json"] = sha256_file(bundle_copy / "configs" / "inference.json")
    (bundle_copy / "manifest.json").write_text(json.dumps(m, indent=1, sort_keys=True) + "\n")
    problems = verify_bundle(bundle_copy, scheme=SIG, public_key=_pin(bundle_copy))
    assert problems and "manifest.json.sig" in problems[0]
    # re-signed with another key: only that key's holder would accept it
    other = _key(tmp_path)
    write_manifest(bundle_copy, SIG.load_private(other[1]), SIG)
    assert verify_bundle(bundle_copy, scheme=SIG, public_key=other[3]) == []
    problems = verify_bundle(bundle_copy, public_key=keys[3], scheme=SIG)
    assert problems == ["manifest.json.sig: signature does not verify with the pinned key "
                        "(manifest changed after signing, or signed by another key)"]


def test_signing_with_openssh_key_and_ca_certificate(tmp_path):
    from fl_common.crypto import pki
    from imaging_core.bundle.export import export_bundle
    from imaging_core.bundle.verify import verify_bundle
    from imaging_core.task import float_state
    ca_key = pki.new_key()
    (tmp_path / "ca.key").write_bytes(pki.openssh_private(ca_key))
    (tmp_path / "ca.crt").write_bytes(pki.cert_pem(pki.make_ca(ca_key, "fed CA")))
    out = export_bundle(float_state(_net()), MODEL, CONTRACT, PROVENANCE, tmp_path / "b",
                        signing_key_path=tmp_path / "ca.key", signature_scheme=SIG)
    assert verify_bundle(out, public_key=tmp_path / "ca.crt", scheme=SIG) == []
    # unsigned bundles pass only when allowed (integrity only), never against a key
    out2 = export_bundle(float_state(_net()), MODEL, CONTRACT, PROVENANCE, tmp_path / "u")
    assert verify_bundle(out2, scheme=SIG, allow_unsigned=True) == []
    assert verify_bundle(out2, public_key=tmp_path / "ca.crt", scheme=SIG) == ["manifest.json: not signed"]


def test_export_refuses_bad_inputs(tmp_path):
    from imaging_core.bundle.export import export_bundle
    from imaging_core.task import float_state
    sd = float_state(_net())
    with pytest.raises(ValueError, match="lacks"):
        export_bundle({k: v for k, v in list(sd.items())[1:]}, MODEL, CONTRACT, PROVENANCE, tmp_path / "a")
    with pytest.raises(ValueError, match="label"):
        export_bundle(sd, MODEL, {**CONTRACT, "labels": {"0": "bg", "2": "x"}}, PROVENANCE, tmp_path / "b")
    with pytest.raises(ValueError, match="does not fit"):  # 3 labels in the contract, 2 in the weights
        export_bundle(sd, MODEL, {**CONTRACT, "labels": {"0": "bg", "1": "x"}}, PROVENANCE, tmp_path / "c")
    (tmp_path / "d").mkdir()
    with pytest.raises(FileExistsError):
        export_bundle(sd, MODEL, CONTRACT, PROVENANCE, tmp_path / "d")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d"]  # nothing half written


# ------------------------------------------------------------------------------ inference
def test_infer_file_lps_input_keeps_original_space(bundle, tmp_path):
    from imaging_core.bundle.infer import infer_file
    root, _ = bundle
    aff = _lps_affine((2.5, 2.5, 5.0), (100.0, 80.0, -40.0))
    img = _phantom_nifti(tmp_path / "lps.nii.gz", aff)
    out = infer_file(root, img, tmp_path / "seg.nii.gz", progress=True, scheme=SIG, public_key=_pin(root))
    src, seg = nib.load(img), nib.load(out)
    assert nib.aff2axcodes(src.affine) == ("L", "P", "S")
    assert seg.shape == src.shape
    np.testing.assert_allclose(seg.affine, src.affine, atol=1e-5)
    assert nib.aff2axcodes(seg.affine) == ("L", "P", "S")
    assert seg.get_data_dtype() == np.uint8
    assert set(np.unique(np.asarray(seg.dataobj))) <= {0, 1, 2}


def test_infer_dicom_series(bundle, tmp_path):
    from imaging_core.bundle.infer import infer_file
    from imaging_core.io import load_volume
    from imaging_core.io.dicom_write import write_dicom_series
    root, _ = bundle
    img = _phantom_nifti(tmp_path / "x.nii.gz", _lps_affine((2.5, 2.5, 5.0)))
    write_dicom_series(load_volume(img), tmp_path / "dcm")
    out = infer_file(root, tmp_path / "dcm", tmp_path / "seg.nii.gz", progress=False, scheme=SIG,
                     public_key=_pin(root))
    ref = load_volume(tmp_path / "dcm")
    seg = nib.load(out)
    assert seg.shape == ref.spatial_shape
    np.testing.assert_allclose(seg.affine, ref.affine, atol=1e-4)


def test_infer_reproduces_evaluation_pipeline(bundle, tmp_path):
    """In the preprocessed space, the bundle's prediction is exactly what the run's
    evaluation (cached case -> predict_labels) computed for that case."""
    from imaging_core.bundle.infer import segment
    from imaging_core.bundle.load import load_bundle
    from imaging_core.inference.evaluate import predict_labels
    from imaging_core.io import load_volume
    from imaging_core.bundle.contract import contract_preprocess
    from imaging_core.transforms.presets import build_preprocess
    img = _phantom_nifti(tmp_path / "c.nii.gz", _lps_affine((2.5, 2.5, 5.0)))
    net, contract = load_bundle(bundle[0], scheme=SIG, public_key=_pin(bundle[0]))
    item = build_preprocess(contract_preprocess(contract), "CT")({"image": load_volume(img),
                                             "label": load_volume(tmp_path / "c_label.nii.gz")})
    ev = predict_labels(net, item["image"].array, contract["roi_size"], torch.device("cpu"), None,
                        contract["overlap"], contract["sw_batch_size"])
    orig, pre = segment(net, contract, load_volume(img))
    # locate the cached (cropped) grid inside the bundle's full grid
    off = np.linalg.solve(pre.affine, item["image"].affine)[:3, 3]
    assert np.allclose(off, np.round(off), atol=1e-6)
    o = np.round(off).astype(int)
    lo, hi = np.maximum(o, 0), np.minimum(o + np.array(ev.shape), pre.spatial_shape)
    crop = pre.array[0][lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]]
    evc = ev[lo[0] - o[0]:hi[0] - o[0], lo[1] - o[1]:hi[1] - o[1], lo[2] - o[2]:hi[2] - o[2]]
    assert crop.size > 0 and np.array_equal(crop, evc)
    assert orig.spatial_shape == load_volume(img).spatial_shape


def test_infer_bad_input_clear_errors(bundle, tmp_path):
    from imaging_core.bundle.infer import infer_file
    from imaging_core.errors import ImagingError
    root, _ = bundle
    pin = {"scheme": SIG, "public_key": _pin(root)}
    with pytest.raises(ImagingError, match="missing.nii.gz: .*not found"):
        infer_file(root, tmp_path / "missing.nii.gz", tmp_path / "o.nii.gz", progress=False, **pin)
    bad = tmp_path / "bad.nii.gz"
    bad.write_bytes(b"not an image at all")
    with pytest.raises(ImagingError, match="bad.nii.gz"):
        infer_file(root, bad, tmp_path / "o.nii.gz", progress=False, **pin)
    four = tmp_path / "four.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros((8, 8, 8, 2), np.int16), np.eye(4)), four)
    with pytest.raises(ImagingError, match="four.nii.gz.*4D"):
        infer_file(root, four, tmp_path / "o.nii.gz", progress=False, **pin)
    img = _phantom_nifti(tmp_path / "ok.nii.gz", np.eye(4))
    with pytest.raises(ImagingError, match="must end in .nii"):
        infer_file(root, img, tmp_path / "o.png", progress=False, **pin)
    with pytest.raises(ImagingError, match="modality 'PET'"):
        infer_file(root, img, tmp_path / "o.nii.gz", modality="PET", progress=False, **pin)
    with pytest.raises(ImagingError, match="bundle directory not found"):
        infer_file(tmp_path / "nobundle", img, tmp_path / "o.nii.gz", progress=False, **pin)
    assert not (tmp_path / "o.nii.gz").exists()


def test_signatures_are_never_passed_silently_without_a_scheme(bundle_copy, keys, tmp_path):
    """imaging_core has no cryptography of its own: a signed bundle checked without a
    scheme is reported unchecked, and signing without one is refused up front."""
    from imaging_core.bundle.export import export_bundle
    from imaging_core.bundle.verify import verify_bundle
    assert verify_bundle(bundle_copy, public_key=_pin(bundle_copy)) == [
        "manifest.json.sig: cannot check a 'ecdsa-p384-sha384' signature here"]
    with pytest.raises(ValueError, match="signature scheme"):
        export_bundle({}, MODEL, CONTRACT, PROVENANCE, tmp_path / "x", signing_key_path=keys[1])
    assert not (tmp_path / "x").exists()


def test_only_the_crypto_module_imports_cryptography():
    import re
    users = sorted(str(p.relative_to(REPO)) for pkg in ("imaging_core", "fl_common", "fl_client", "fl_server")
                   for p in (REPO / pkg).rglob("*.py")
                   if re.search(r"^\s*(from|import) cryptography\b", p.read_text(), re.M))
    assert users == ["fl_common/crypto/pki.py", "fl_common/crypto/secagg.py",
                     "fl_common/crypto/signing.py"]
