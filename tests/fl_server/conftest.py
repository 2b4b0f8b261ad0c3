"""A run directory fabricated in exactly the format the run record and
server_app.py leave behind (run.json, rounds/sites JSON+CSV, final_sites.json,
global_best/final.pt with a real tiny model, their hashes in run.json and in the
signed run_manifest.json), a baseline run
(final.json), a mini federation with a coordinator and a signing key: so the
report, export and CLI tests need no federation run.
"""
from __future__ import annotations

import json
import math
from pathlib import Path
from types import SimpleNamespace

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


def run_record_key(keys_dir: Path) -> Path:
    """The coordinator's run-record key pair in ``keys_dir`` (made once), as provisioning
    writes it into server/; returns the private half."""
    from fl_common.crypto.signing import MANIFEST_SIGNATURES
    from fl_common.kit import SERVER_RUN_KEY, SERVER_RUN_PUB
    keys_dir.mkdir(parents=True, exist_ok=True)
    if not (keys_dir / SERVER_RUN_KEY).is_file():
        MANIFEST_SIGNATURES.write_key_pair(keys_dir / SERVER_RUN_KEY, keys_dir / SERVER_RUN_PUB)
    return keys_dir / SERVER_RUN_KEY


def fabricate_run(run_dir: Path, seed: int = 0, with_secagg: bool = True, keys_dir: Path | None = None,
                  federation: Path | None = None) -> Path:
    """A complete run directory of a 3-site, 3-round federation with a real tiny model,
    its record signed with the run-record key in ``keys_dir`` (default: beside the run,
    where export finds it next to a bundle key made there). ``federation``: the config
    the run records (default sites_example's), with its SHA-256."""
    from fl_server.record_manifest import RecordKey, file_sha256
    from fl_server.records import RunRecord
    from imaging_core.nets.unet3d import unet_from_config
    rng = np.random.default_rng(seed)
    run_dir.mkdir(parents=True, exist_ok=True)
    fed = federation or Path(__file__).resolve().parents[2] / "sites_example" / "federation.toml"
    write_json(run_dir / "run.json", {
        "run_id": "20260101-120000", "federation": "sites_example", "federation_path": str(fed),
        "federation_sha256": file_sha256(fed),
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
    signer = RecordKey.signer(run_record_key(keys_dir or run_dir.parent))
    record = RunRecord(run_dir, signer=signer)  # the model files go through the record: hashes, signed
    for which, sd in (("best", 0), ("final", 1)):
        torch.manual_seed(sd)
        net = unet_from_config({**MODEL, "in_channels": 1, "out_channels": len(LABELS)})
        record.save_model(which, {k: v.detach().clone() for k, v in net.state_dict().items()})
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


def _ca_key(tmp_path) -> tuple[Path, Path]:
    from fl_common.crypto import pki
    key = pki.new_key()
    ca = pki.make_ca(key, "test federation CA")
    (tmp_path / "ca.key").write_bytes(pki.key_pem(key))
    (tmp_path / "ca.crt").write_bytes(pki.cert_pem(ca))
    return tmp_path / "ca.key", tmp_path / "ca.crt"


def _bundle_key(tmp_path) -> tuple[Path, Path]:
    """The coordinator's bundle-signing key pair (its own, not the CA's), as provisioning writes it."""
    from fl_common.crypto.signing import MANIFEST_SIGNATURES
    from fl_common.kit import KIT_BUNDLE_PUB, SERVER_BUNDLE_KEY
    MANIFEST_SIGNATURES.write_key_pair(tmp_path / SERVER_BUNDLE_KEY, tmp_path / KIT_BUNDLE_PUB)
    return tmp_path / SERVER_BUNDLE_KEY, tmp_path / KIT_BUNDLE_PUB


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



@pytest.fixture
def fab():
    """The fabricators and the facts they fabricate."""
    return SimpleNamespace(SITES=SITES, LABELS=LABELS, MODEL=MODEL, ROUNDS=ROUNDS, BEST=BEST,
                           run=fabricate_run, baseline=fabricate_baseline, ca_key=_ca_key, bundle_key=_bundle_key,
                           mini_federation=mini_federation)


@pytest.fixture
def run_dir(tmp_path):
    return fabricate_run(tmp_path / "run")
