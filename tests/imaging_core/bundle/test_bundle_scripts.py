"""The head-masked z-score exported as bundle code (scripts/): the bundle's MONAI
transform computes exactly fedvox's NormalizeIntensity(mask="head") on a real
brain, `python -m monai.bundle run` of such a bundle agrees with `fedvox infer`
and leaves the bundle verifiable, and a changed or added script is refused."""
from __future__ import annotations

import ast
import importlib.util
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

from fl_common.crypto.signing import MANIFEST_SIGNATURES as SIG

from .test_bundle import CONTRACT, MODEL, PROVENANCE, _key, _lps_affine, _net

HEAD = {**CONTRACT, "modality": "MR",
        "intensity": {"CT": CONTRACT["intensity"]["CT"], "MR": {"kind": "zscore", "mask": "head", "outside": -3.0}}}
SCRIPTS = ("scripts/__init__.py", "scripts/fedvox_transforms.py", "scripts/head_zscore.py")


@pytest.fixture(scope="module")
def head_bundle(tmp_path_factory):
    from imaging_core.bundle.export import export_bundle
    from imaging_core.task import float_state
    tmp = tmp_path_factory.mktemp("headbundle")
    _, pem, _, pub = _key(tmp)
    out = tmp / "b"
    export_bundle(float_state(_net()), MODEL, HEAD, PROVENANCE, out, signing_key_path=pem, signature_scheme=SIG)
    return out, pub


def _copy(head_bundle, tmp_path) -> Path:
    dst = tmp_path / "copy"
    shutil.copytree(head_bundle[0], dst)
    return dst


def _shipped_transform(root: Path):
    """HeadZScored imported from the bundle's own files, as MONAI's runner imports it."""
    sys.path.insert(0, str(root))
    try:
        for m in [m for m in sys.modules if m == "scripts" or m.startswith("scripts.")]:
            del sys.modules[m]
        from scripts.fedvox_transforms import HeadZScored  # noqa: PLC0415 (the bundle's code)
        return HeadZScored
    finally:
        sys.path.remove(str(root))


def _icbm_t1() -> np.ndarray:
    spec = importlib.util.find_spec("nilearn")
    if spec is None:
        pytest.skip("nilearn (ships the ICBM152 template) is not installed")
    f = Path(spec.origin).parent / "datasets" / "data" / "mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz"
    return np.asarray(nib.load(f).dataobj, dtype=np.float32)[::3, ::3, ::3]


def test_scripts_shipped_signed_and_self_contained(head_bundle):
    from imaging_core.bundle.verify import verify_bundle
    from imaging_core.transforms import head_zscore
    root, pub = head_bundle
    assert verify_bundle(root, pub, scheme=SIG) == []
    listed = set(json.loads((root / "manifest.json").read_text())["files"])
    assert set(SCRIPTS) <= listed
    # the very file fedvox normalises with, not a second copy that could drift
    assert (root / "scripts" / "head_zscore.py").read_text() == Path(head_zscore.__file__).read_text()
    for rel in SCRIPTS:  # a hospital runs it with MONAI alone: numpy, scipy, monai, its own files
        for node in ast.walk(ast.parse((root / rel).read_text())):
            if isinstance(node, ast.Import):
                assert {a.name.split(".")[0] for a in node.names} <= {"numpy", "scipy", "monai"}, rel
            elif isinstance(node, ast.ImportFrom) and node.level == 0:
                assert node.module.split(".")[0] in {"__future__", "numpy", "scipy", "monai"}, rel
    cfg = json.loads((root / "configs" / "inference.json").read_text())
    assert cfg["intensity_MR"] == {"_target_": "scripts.fedvox_transforms.HeadZScored", "keys": "image",
                                   "outside": -3.0}
    meta = json.loads((root / "configs" / "metadata.json").read_text())
    assert "scipy" in meta["required_packages_version"]


def test_no_scripts_without_bundle_code(tmp_path):
    from imaging_core.bundle.export import export_bundle
    from imaging_core.task import float_state
    nz = {**CONTRACT, "intensity": {**CONTRACT["intensity"], "MR": {"kind": "zscore", "mask": "nonzero"}}}
    out = export_bundle(float_state(_net()), MODEL, nz, PROVENANCE, tmp_path / "b")
    assert not (out / "scripts").exists()


def test_bundle_transform_equals_imaging_core_on_a_real_brain(head_bundle):
    from monai.data import MetaTensor
    from imaging_core.io.volume import Volume
    from imaging_core.transforms.intensity import NormalizeIntensity
    t1 = _icbm_t1()
    rng = np.random.default_rng(0)
    sigma = 0.04 * float(np.percentile(t1[t1 > 0], 90))  # a noisy (Rician) background too
    noisy = np.hypot(t1 + rng.normal(0, sigma, t1.shape), rng.normal(0, sigma, t1.shape)).astype(np.float32)
    HeadZScored = _shipped_transform(head_bundle[0])
    for img in (t1, noisy):
        ours = NormalizeIntensity(mask="head", outside=-3.0)(
            {"image": Volume(img[None], np.eye(4)), "case_id": "c"})["image"].array
        aff = torch.as_tensor(_lps_affine(), dtype=torch.float64)
        got = HeadZScored(keys="image", outside=-3.0)({"image": MetaTensor(torch.from_numpy(img[None].copy()),
                                                                            affine=aff)})["image"]
        assert isinstance(got, MetaTensor) and torch.equal(got.affine, aff)  # meta kept for Invertd
        np.testing.assert_array_equal(got.numpy(), ours)
        assert (ours == -3.0).mean() > 0.3  # it really masked: the air is at `outside`


def _head_nifti(path: Path, affine, shape=(40, 36, 20), seed=0) -> Path:
    """A head-like MR phantom in Rician noise: the head mask matters here."""
    rng = np.random.default_rng(seed)
    x, y, z = np.meshgrid(*[np.arange(n) for n in shape], indexing="ij")
    c = np.array(shape) / 2
    head = ((x - c[0]) / 16) ** 2 + ((y - c[1]) / 14) ** 2 + ((z - c[2]) / 8) ** 2 < 1
    core = ((x - c[0] - 3) / 7) ** 2 + ((y - c[1]) / 6) ** 2 + ((z - c[2]) / 4) ** 2 < 1
    img = np.hypot(300.0 * head + 200 * core + rng.normal(0, 20, shape), rng.normal(0, 20, shape))
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(img.astype(np.int16), affine), path)
    return path


def test_monai_run_of_a_head_bundle_matches_fedvox_infer(head_bundle, tmp_path):
    from imaging_core.bundle.infer import infer_file
    from imaging_core.bundle.verify import verify_bundle
    root = _copy(head_bundle, tmp_path)
    pub = head_bundle[1]
    img = _head_nifti(tmp_path / "in" / "case1.nii.gz", _lps_affine())
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    env.pop("PYTHONDONTWRITEBYTECODE", None)  # the bundle itself must keep __pycache__ out
    proc = subprocess.run([sys.executable, "-m", "monai.bundle", "run", "--config_file",
                           str(root / "configs" / "inference.json"), "--bundle_root", str(root),
                           "--dataset_dir", str(tmp_path / "in"), "--output_dir", str(tmp_path / "out")],
                          capture_output=True, text=True, timeout=240, env=env, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    mon = np.asarray(nib.load(tmp_path / "out" / "case1_seg.nii.gz").dataobj)
    assert mon.shape == nib.load(img).shape
    ours = infer_file(root, img, tmp_path / "ours.nii.gz", progress=False, scheme=SIG, public_key=pub)
    assert (mon == np.asarray(nib.load(ours).dataobj)).mean() > 0.98
    assert not list(root.rglob("__pycache__"))
    assert verify_bundle(root, pub, scheme=SIG, strict=True) == []  # still intact after the run


@pytest.mark.parametrize("rel", ["scripts/head_zscore.py", "scripts/fedvox_transforms.py"])
def test_changed_script_refused(head_bundle, tmp_path, rel):
    from imaging_core.bundle.load import load_bundle
    from imaging_core.bundle.verify import verify_bundle
    root = _copy(head_bundle, tmp_path)
    p = root / rel
    p.write_text(p.read_text().replace("0.5 * (t - air)", "0.9 * (t - air)") + "\n# edited\n")
    problems = verify_bundle(root, head_bundle[1], scheme=SIG)
    assert problems == [f"{rel}: changed (SHA-256 differs from the manifest)"]
    with pytest.raises(Exception, match=rel):
        load_bundle(root, scheme=SIG, public_key=head_bundle[1])


def test_added_bytecode_refused(head_bundle, tmp_path):
    """A .pyc beside the scripts would run instead of them: an added file, refused."""
    from imaging_core.bundle.verify import verify_bundle
    root = _copy(head_bundle, tmp_path)
    pyc = root / "scripts" / "__pycache__" / "head_zscore.cpython-312.pyc"
    pyc.parent.mkdir()
    pyc.write_bytes(b"\x00" * 16)
    assert verify_bundle(root, head_bundle[1], scheme=SIG) == [
        "scripts/__pycache__/head_zscore.cpython-312.pyc: added (not in the manifest)"]
