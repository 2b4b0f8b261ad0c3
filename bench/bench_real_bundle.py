"""Issue 17's goal, measured as a clinician would: the EXPORTED bundle of the
real-anatomy rehearsal federation (sites_example/real), run by `fedvox infer` and
by `python -m monai.bundle run` on the held-out site's original images, Dice in
the ORIGINAL image space against the original labels, per case and mean, for
brain (grey | white), grey matter and white matter. The held-out site is never
trained on. Also printed: the run's own held-out figures (the bundle's metadata),
and how far the two runners agree voxel by voxel.

    python bench/bench_real_bundle.py --work /tmp/realbundle [--rounds R] [--cases C]
        (runs `fedvox demo --example real --work WORK` first unless WORK/bundle exists)
    python bench/bench_real_bundle.py --bundle DIR --site-data DIR/heldout --public-key PUB

Goal (issue 17): brain Dice >= 0.90 from the bundle in the original space.
Last line: one JSON object.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import nibabel as nib
import numpy as np

REPO = Path(__file__).resolve().parents[1]


def dice(p: np.ndarray, g: np.ndarray) -> float:
    d = int(p.sum() + g.sum())
    return 2.0 * int((p & g).sum()) / d if d else 1.0


def scores(pred: np.ndarray, gt: np.ndarray, names: dict[int, str]) -> dict:
    out = {"brain": dice(pred > 0, gt > 0)}
    out.update({n: dice(pred == c, gt == c) for c, n in names.items()})
    return out


def _run(cmd: list[str], what: str) -> float:
    t0 = time.perf_counter()
    env = {**os.environ, "PYTHONWARNINGS": "ignore", "PYTHONPATH": str(REPO)}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if proc.returncode:
        sys.exit(f"{what} failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}")
    return round(time.perf_counter() - t0, 1)


def held_out_cases(site_data: Path) -> list[tuple[str, Path, Path]]:
    dl = json.loads((site_data / "dataset.json").read_text())
    rows = [*dl.get("training", []), *dl.get("validation", []), *dl.get("test", [])]
    out = []
    for r in rows:
        img = site_data / r["image"]
        out.append((img.name.split(".nii")[0], img, site_data / r["label"]))
    return out


def find_demo(work: Path, rounds: int | None, cases: float | None) -> tuple[Path, Path, Path, float | None]:
    secs = None
    if not (work / "bundle" / "configs" / "inference.json").is_file():
        cmd = [sys.executable, "-m", "fl_server.cli", "demo", "--example", "real", "--work", str(work)]
        cmd += ["--rounds", str(rounds)] if rounds else []
        cmd += ["--cases", str(cases)] if cases else []
        secs = _run(cmd, "fedvox demo --example real")
    pubs = sorted(work.rglob("bundle_signing.pub"))
    if not pubs:
        sys.exit(f"{work}: no bundle_signing.pub (site kit) to pin the bundle's signer")
    return work / "bundle", work / "sites" / "heldout", pubs[0], secs


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--work", type=Path, help="demo work directory (the demo runs unless WORK/bundle exists)")
    ap.add_argument("--rounds", type=int, default=None)
    ap.add_argument("--cases", type=float, default=None)
    ap.add_argument("--bundle", type=Path)
    ap.add_argument("--site-data", type=Path, help="the held-out site's data root (dataset.json)")
    ap.add_argument("--public-key", type=Path, help="the bundle signer's public key to pin")
    a = ap.parse_args()
    demo_s = None
    if a.bundle:
        bundle, site, pub = a.bundle, a.site_data, a.public_key
        if site is None or pub is None:
            ap.error("--bundle needs --site-data and --public-key")
    elif a.work:
        bundle, site, pub, demo_s = find_demo(a.work.resolve(), a.rounds, a.cases)
    else:
        ap.error("give --work or --bundle")
    out = (a.work or bundle.parent).resolve() / "bench_real_bundle"
    inp, o_inf, o_mon = out / "input", out / "infer", out / "monai"
    for d in (inp, o_inf, o_mon):
        d.mkdir(parents=True, exist_ok=True)
        for f in d.glob("*.nii*"):
            f.unlink()
    cases = held_out_cases(site)
    for cid, img, _ in cases:  # one folder of the held-out site's original images
        (inp / img.name).symlink_to(img.resolve())
    meta = json.loads((bundle / "configs" / "metadata.json").read_text())
    names = {int(k): v for k, v in meta["data_contract"]["labels"].items() if int(k)}
    t_inf = _run([sys.executable, "-m", "fl_server.cli", "infer", str(bundle), str(inp), "--out", str(o_inf),
                  "--public-key", str(pub), "--quiet"], "fedvox infer")
    t_mon = _run([sys.executable, "-m", "monai.bundle", "run", "--config_file",
                  str(bundle / "configs" / "inference.json"), "--bundle_root", str(bundle),
                  "--dataset_dir", str(inp), "--output_dir", str(o_mon)], "python -m monai.bundle run")
    per_case = []
    for cid, img, lab in cases:
        gt = np.asarray(nib.load(lab).dataobj)
        row = {"case": cid}
        for who, d in (("infer", o_inf), ("monai", o_mon)):
            pred = np.asarray(nib.load(d / f"{cid}_seg.nii.gz").dataobj)
            if pred.shape != gt.shape:
                sys.exit(f"{d / f'{cid}_seg.nii.gz'}: shape {pred.shape}, the original label's {gt.shape}")
            row[who] = scores(pred, gt, names)
            row.setdefault("_pred", {})[who] = pred
        row["agree"] = float((row["_pred"]["infer"] == row["_pred"]["monai"]).mean())
        del row["_pred"]
        per_case.append(row)
    keys = ["brain", *names.values()]
    mean = {who: {k: float(np.mean([r[who][k] for r in per_case])) for k in keys} for who in ("infer", "monai")}
    run_fig = meta.get("eval_metrics", {})
    print(f"bundle {bundle} ({meta['data_contract']['intensity']['MR']}), held-out site {site}")
    print(f"{'case':<16}" + "".join(f"{w + ' ' + k:>20}" for w in ("infer", "monai") for k in keys) + f"{'agree':>8}")
    for r in per_case:
        print(f"{r['case']:<16}" + "".join(f"{r[w][k]:>20.3f}" for w in ("infer", "monai") for k in keys)
              + f"{r['agree']:>8.4f}")
    print(f"{'mean':<16}" + "".join(f"{mean[w][k]:>20.3f}" for w in ("infer", "monai") for k in keys))
    print(f"run's own held-out figures (bundle metadata): {run_fig}")
    # issue 17 item 4: the bundle reproduces the run's held-out figures (within 0.01 Dice)
    gap = {n: max(abs(mean[w][n] - run_fig[f"held_out_dice_{c}"]) for w in mean)
           for c, n in names.items() if f"held_out_dice_{c}" in run_fig}
    print(f"|bundle - run| Dice per structure ({run_fig.get('held_out_space', '?')} space in the run): "
          + ", ".join(f"{n} {g:.4f}" for n, g in gap.items()))
    print(f"goal brain Dice >= 0.90 in the original space: infer {mean['infer']['brain']:.3f}, "
          f"monai {mean['monai']['brain']:.3f} -> {'met' if min(m['brain'] for m in mean.values()) >= 0.90 else 'NOT met'}")
    print(json.dumps({"bench": "real_bundle", "space": "original", "cases": len(per_case), "mean": mean,
                      "per_case": per_case, "run_held_out": run_fig, "gap_to_run": gap, "seconds": {"demo": demo_s, "infer": t_inf,
                                                                                  "monai": t_mon}}))


if __name__ == "__main__":
    main()
