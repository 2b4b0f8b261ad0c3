"""The bundle is the evaluated pipeline: on a tiny real run (a model trained here,
held-out figures recorded by the coordinator's evaluation in the ORIGINAL space
with a largest-component chain), ``fedvox infer`` and ``python -m monai.bundle run``
on the exported bundle reproduce the recorded held-out Dice within 0.01.

The held-out cases carry a distractor (a second organ-like blob) that the training
cases lack, so the raw prediction has a spurious component and the chain matters:
the same bundle with its chain removed reproduces the run's raw figure instead.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from fl_server.records import RunRecord, write_json

LABELS = {"0": "background", "1": "organ"}
SHAPE = (44, 40, 22)


def _case(rng, distractor: bool):
    x, y, z = np.meshgrid(*[np.arange(n) for n in SHAPE], indexing="ij")
    c = np.array(SHAPE) / 2 + rng.uniform(-1.5, 1.5, 3)
    body = ((x - c[0]) / 19) ** 2 + ((y - c[1]) / 17) ** 2 + ((z - c[2]) / 9) ** 2 < 1
    organ = ((x - c[0] + 6) / 8) ** 2 + ((y - c[1]) / 7) ** 2 + ((z - c[2]) / 4.5) ** 2 < 1
    img = np.where(body, 40.0, -1000.0) + 200 * organ + rng.normal(0, 8, SHAPE)
    if distractor:  # organ-like, not organ: the largest-component step removes it
        blob = ((x - c[0] - 12) / 5) ** 2 + ((y - c[1]) / 5) ** 2 + ((z - c[2]) / 3.5) ** 2 < 1
        img = img + 200 * blob
    return img.astype(np.int16), organ.astype(np.uint8)


def _site(root: Path, name: str, n: int, distractor: bool, split: str, seed: int, aff: np.ndarray):
    rng = np.random.default_rng(seed)
    d = root / "data" / name
    (d / "images").mkdir(parents=True)
    (d / "labels").mkdir()
    rows = []
    for i in range(n):
        img, lab = _case(rng, distractor)
        nib.save(nib.Nifti1Image(img, aff), d / "images" / f"{name}{i}.nii.gz")
        nib.save(nib.Nifti1Image(lab, aff), d / "labels" / f"{name}{i}.nii.gz")
        rows.append({"image": f"images/{name}{i}.nii.gz", "label": f"labels/{name}{i}.nii.gz"})
    (d / "dataset.json").write_text(json.dumps({"labels": LABELS, "training": rows if split == "training" else [],
                                                "validation": [], "test": rows if split == "test" else []}))
    (root / "sites").mkdir(exist_ok=True)
    (root / "sites" / f"{name}.toml").write_text(f'[site]\nname = "{name}"\ndata_root = "../data/{name}"\n'
                                                 f'modality = "CT"\n')


def _federation(root: Path) -> Path:
    lps = np.diag([-2.5, -2.5, 5.0, 1.0])
    lps[:3, 3] = (50.0, 40.0, -30.0)
    _site(root, "hospital_a", 4, False, "training", 1, np.diag([2.5, 2.5, 5.0, 1.0]))
    _site(root, "hospital_b", 1, False, "training", 2, np.diag([2.5, 2.5, 5.0, 1.0]))
    _site(root, "coordinator", 3, True, "test", 3, lps)  # LPS, unlike the training sites
    (root / "federation.toml").write_text("""[federation]
name = "pipeline"
[model]
name = "unet3d"
channels = [8, 16, 16]
strides = [2, 2]
num_res_units = 1
[train]
overlap = 0.25
[labels]
0 = "background"
1 = "organ"
[preprocess]
orientation = "RAS"
pixdim = [2.5, 2.5, 2.5]
margin = 2
[sampling]
patch_size = [16, 16, 16]
[postprocess]
chain = ["largest_component"]
[[sites]]
config = "sites/hospital_a.toml"
[[sites]]
config = "sites/hospital_b.toml"
[coordinator]
config = "sites/coordinator.toml"
""")
    return root / "federation.toml"


def _train(task, cases, steps=100):
    """A few Adam steps on random 16^3 patches (the sliding-window size, so instance
    norm sees at inference what it saw in training)."""
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    net = task.build_net(seed=0).train()
    opt = torch.optim.Adam(net.parameters(), lr=1e-2)
    loss_fn = task.loss()
    data = []
    for cc in cases:
        it = cc.load(mmap=False)
        data.append((torch.from_numpy(np.array(it["image"].array))[None],
                     torch.from_numpy(np.array(it["label"].array)).long()[None]))
    for _ in range(steps):
        xs, ys = [], []
        for _ in range(4):
            x, y = data[int(torch.randint(len(data), (1,), generator=g))]
            sl = (slice(None), slice(None), *[slice(a, a + 16) for a in
                                              (int(torch.randint(n - 15, (1,), generator=g)) for n in x.shape[2:])])
            xs.append(x[sl])
            ys.append(y[sl])
        opt.zero_grad()
        loss_fn(net(torch.cat(xs)), torch.cat(ys)).backward()
        opt.step()
    return net.eval()


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A one-round run record written by the real evaluation path (CentralEvaluator)."""
    from fl_common.config import load_federation
    from fl_server.central_eval import CentralEvaluator
    from imaging_core.task import Task, float_state
    root = tmp_path_factory.mktemp("pipeline")
    fpath = _federation(root)
    fed = load_federation(fpath)
    task = Task(fed)
    train = []
    for s in fed.sites:
        train += task.site_data(s, root / "cache" / s.name).prepare().cases
    net = _train(task, train)
    central = CentralEvaluator(fed, fed.coordinator, root / "run" / "coordinator-cache")
    scores, per_case, _ = central.evaluate({k: v.numpy() for k, v in float_state(net).items()})
    run_dir = root / "run"
    write_json(run_dir / "run.json", {
        "run_id": "20260102-000000", "federation": "pipeline", "federation_path": str(fpath), "rounds": 1,
        "strategy": "fedavg", "min_sites": 2, "secure_aggregation": {"mode": "off"}, "labels": LABELS,
        "model": fed.model.model_dump(), "postprocess": fed.postprocess.chain_config(),
        "evaluation_space": central.space, "best_metric": "dice_fg_mean", "status": "completed"})
    write_json(run_dir / "rounds.json", [{"round": 0, "status": "ok"},
                                         {"round": 1, "status": "ok", **{f"central/{k}": v for k, v in scores.items()}}])
    write_json(run_dir / "sites.json", [])
    write_json(run_dir / "final_sites.json", {"sites": [], "failures": []})
    rec = RunRecord(run_dir)
    for which in ("best", "final"):
        rec.save_model(which, float_state(net))
    write_json(run_dir / "state.json", {"last_round": 1})
    return {"dir": run_dir, "fed": fed, "scores": scores, "per_case": per_case, "space": central.space,
            "images": sorted((root / "data" / "coordinator" / "images").glob("*.nii.gz"))}


def _dice(pred_path: Path, label_path: Path) -> float:
    p = np.asarray(nib.load(pred_path).dataobj) == 1
    g = np.asarray(nib.load(label_path).dataobj) == 1
    return 2 * float((p & g).sum()) / float(p.sum() + g.sum())


def _label_of(img: Path) -> Path:
    return img.parent.parent / "labels" / img.name


def test_the_run_measured_in_the_original_space(run):
    s = run["scores"]
    assert run["space"] == "original" and all(r["space"] == "original" for r in run["per_case"])
    assert s["dice_1"] > 0.5, s  # a model that segments: the comparison below means something
    assert s["lcc_dice_1"] == pytest.approx(s["dice_1"])  # the run's chain is "keep the largest"
    assert all(r["candidates"]["largest"] == r["dice"] for r in run["per_case"])
    assert s["raw_dice_1"] < s["dice_1"] - 0.05, s  # the chain removed the distractor


def test_fedvox_infer_and_monai_run_reproduce_held_out_dice(run, tmp_path):
    from fl_common.crypto.signing import MANIFEST_SIGNATURES as SIG
    from fl_server.export import DECISION_FILE, export_run
    from imaging_core.bundle.infer import infer_folder
    held = run["scores"]["dice_1"]
    bundle = export_run(run["dir"], tmp_path / "bundle")  # unsigned: integrity only below
    meta = json.loads((bundle / "configs" / "metadata.json").read_text())
    assert meta["eval_metrics"]["held_out_space"] == "original"
    assert meta["eval_metrics"]["held_out_dice_1"] == pytest.approx(held)
    assert meta["data_contract"]["postprocess"]["chain"] == ["largest_component"]
    inf = json.loads((bundle / "configs" / "inference.json").read_text())
    names = [t["_target_"] for t in inf["postprocessing"]["transforms"]]
    assert names == ["AsDiscreted", "KeepLargestConnectedComponentd", "Invertd", "SaveImaged"]
    assert (run["dir"] / DECISION_FILE).is_file()

    outs = infer_folder(bundle, run["images"][0].parent, tmp_path / "ours", progress=False, allow_unsigned=True,
                        scheme=SIG)
    ours = float(np.mean([_dice(o, _label_of(i)) for o, i in zip(outs, run["images"])]))
    assert ours == pytest.approx(held, abs=0.01)

    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    proc = subprocess.run([sys.executable, "-m", "monai.bundle", "run", "--config_file",
                           str(bundle / "configs" / "inference.json"), "--bundle_root", str(bundle),
                           "--dataset_dir", str(run["images"][0].parent), "--output_dir", str(tmp_path / "monai")],
                          capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    mon = [tmp_path / "monai" / i.name.replace(".nii.gz", "_seg.nii.gz") for i in run["images"]]
    theirs = float(np.mean([_dice(o, _label_of(i)) for o, i in zip(mon, run["images"])]))
    assert theirs == pytest.approx(held, abs=0.01)


def test_a_bundle_without_the_chain_reproduces_the_raw_figure(run, tmp_path):
    """The finding this fixes: the same model with no post-processing scores the run's raw
    (before the chain) figure, not the chain's."""
    from imaging_core.bundle.infer import infer_file
    from fl_server.export import export_run
    bundle = export_run(run["dir"], tmp_path / "b")
    # rewrite the contract's chain in a copy (not re-signed: integrity is not the point here)
    meta_p = bundle / "configs" / "metadata.json"
    meta = json.loads(meta_p.read_text())
    meta["data_contract"]["postprocess"] = {"chain": []}
    meta_p.write_text(json.dumps(meta))
    dices = [_dice(infer_file(bundle, i, tmp_path / f"{k}.nii.gz", progress=False, verify=False), _label_of(i))
             for k, i in enumerate(run["images"])]
    assert float(np.mean(dices)) == pytest.approx(run["scores"]["raw_dice_1"], abs=0.01)
    assert float(np.mean(dices)) < run["scores"]["dice_1"] - 0.05  # what the bundle did: 0.75 -> 0.64
