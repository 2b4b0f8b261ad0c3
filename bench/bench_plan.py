"""The plan stage: fingerprint cost for 3 and 10 sites, and our plan next to
nnU-Net v2's own planner on the same pooled data.

Part 1 (per site count N): every site fingerprints its data (sites run in
parallel in a federation, so the stage's site time is the slowest site), then
the vectors, in the federation layout fl_server.plan_stage uses (every
modality's block), are summed with the real secure-aggregation objects
(SiteSecAgg / ServerSecAgg, in process: setup + one masked round + reveal) and
checked equal to the plaintext sum. Flower's message latency (4 query stages in
a deployment) is not in these figures. Reference: the same replies exchanged in plaintext.
Bytes are what leaves one site (masked vector + protocol payloads + the
categorical/summary JSON) vs the plaintext reply.

Part 2: the CT sites' cases pooled into an nnU-Net raw dataset (NIfTI), nnU-Net
v2's DatasetFingerprintExtractor + ExperimentPlanner (8 GB, its default) run in
its own venv (--nnunet-python), and our make_plan on the same cases with the
same budget and nnU-Net's base width (32). Printed side by side in world axis
order (x, y, z); nnU-Net's own order is its reader's (SimpleITK: z, y, x) after
its transpose, mapped back here.

    python bench/bench_plan.py --work /tmp/bench_plan --nnunet-python /work/venv-nnunet/bin/python

Last line: one JSON object.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

NNUNET_SCRIPT = r"""
import json, os, sys
from nnunetv2.experiment_planning.dataset_fingerprint.fingerprint_extractor import DatasetFingerprintExtractor
from nnunetv2.experiment_planning.experiment_planners.default_experiment_planner import ExperimentPlanner
DatasetFingerprintExtractor(1, num_processes=1).run(overwrite_existing=True)
planner = ExperimentPlanner(1, gpu_memory_target_in_gb=8)
planner.plan_experiment()
plans = json.load(open(os.path.join(os.environ["nnUNet_preprocessed"], "Dataset001_fedvox", "nnUNetPlans.json")))
c = plans["configurations"]["3d_fullres"]
print("NNUNET_JSON " + json.dumps({"spacing": c["spacing"], "patch_size": c["patch_size"],
      "batch_size": c["batch_size"], "normalization_schemes": c["normalization_schemes"],
      "use_mask_for_norm": c["use_mask_for_norm"], "n_stages": c["architecture"]["arch_kwargs"]["n_stages"],
      "features": c["architecture"]["arch_kwargs"]["features_per_stage"],
      "transpose_forward": plans["transpose_forward"],
      "ct_props": plans["foreground_intensity_properties_per_channel"]["0"]}))
"""


def make_sites(out: Path, n: int) -> dict[str, tuple[Path, str]]:
    """n synthetic sites from sites_example's specs (cycled, each its own name and seed)."""
    from sites_example.generate import SITES, generate_site
    specs = [s for s in SITES if s.role == "site"]
    sites = {}
    for i in range(n):
        spec = dataclasses.replace(specs[i % len(specs)], name=f"site{i:02d}")
        root = generate_site(spec, out, seed=i)
        sites[spec.name] = (root / "dataset.json", spec.modality)
    return sites


def secure_sum(replies: dict, state: Path) -> tuple[np.ndarray, float, int]:
    """The vectors summed by the weights' protocol; (sum, seconds, bytes one site sends)."""
    from fl_client.secagg import SiteSecAgg
    from fl_common.crypto import pki
    from fl_common.fingerprint_codec import decode_sum, encode_counts, federation_vector
    from fl_common.secagg.checks import received
    from fl_server.secagg import ServerSecAgg
    names = sorted(replies)
    keys = {s: pki.generate_enrollment_key() for s in names}
    roster = {s: pki.enrollment_public_openssh(k).decode() for s, k in keys.items()}
    t0 = time.perf_counter()
    session = "plan-bench.s1"
    sites = {s: SiteSecAgg(s, session, keys[s], roster, state / s, colluding_sites=0, ledger_dir=state / "ledgers")
             for s in names}
    server = ServerSecAgg(session, roster, colluding_sites=0)
    sent = {s: 0 for s in names}
    adverts = {s: sites[s].advertise() for s in names}
    roster_msg = server.collect_adverts(adverts)
    bundles = {s: sites[s].receive_roster_and_share(roster_msg) for s in names}
    server.collect_share_bundles(bundles)
    got = received({}, {"plan": session}, session, 1)
    reqs = server.train_requests(1, names, received=got.digest)
    c, w = server.clip_range, server.max_weight
    ups = {}
    for s in names:   # the federation layout, as fl_server.plan_stage sums it (one sum over modalities)
        vec = encode_counts(federation_vector(replies[s]["modality"], replies[s]["vector"]), c)
        ups[s] = sites[s].mask(1, vec, w, reqs[s], received=got)
    server.collect_masked(1, {s: (u.vector, u.payload) for s, u in ups.items()})
    rev = server.reveal_requests(1)
    rep = {s: sites[s].reveal(1, rev[s]) for s in names}
    res = server.unmask(1, rep)
    total = decode_sum(res.mean, len(res.survivors), c)
    secs = time.perf_counter() - t0
    s0 = names[0]
    side = {k: v for k, v in replies[s0].items() if k != "vector"}
    sent = (len(adverts[s0]) + len(bundles[s0]) + ups[s0].vector.nbytes + len(ups[s0].payload) + len(rep[s0])
            + len(json.dumps(side).encode()))
    return total, secs, sent


def part1(work: Path, n: int) -> dict:
    from imaging_core.plan.aggregate import aggregate_fingerprints
    from imaging_core.plan.fingerprint import fingerprint_site
    sites = make_sites(work / f"sites{n}", n)
    times, replies, cases = {}, {}, 0
    for s, (dl, mod) in sites.items():
        t0 = time.perf_counter()
        fp = fingerprint_site(dl, mod, site=s)
        times[s] = time.perf_counter() - t0
        replies[s] = fp.to_reply()
        cases += len(fp.cases)
    t0 = time.perf_counter()
    plain = aggregate_fingerprints(replies)
    plain_secs = time.perf_counter() - t0
    from fl_common.fingerprint_codec import federation_vector, split_federation_vector
    total, secure_secs, secure_bytes = secure_sum(replies, Path(tempfile.mkdtemp(dir=work)))
    blocks = split_federation_vector(total)
    for mod, pooled in plain.items():
        assert np.array_equal(blocks[mod], pooled.vector), "secure sum differs from the plaintext sum"
    assert np.array_equal(total, sum(federation_vector(r["modality"], r["vector"]) for r in replies.values()))
    plain_bytes = max(len(json.dumps(r).encode()) for r in replies.values())
    site_max = max(times.values())
    return {"sites": n, "cases": cases, "site_fingerprint_s_max": round(site_max, 3),
            "site_fingerprint_s_per_case": round(sum(times.values()) / cases, 4),
            "secure_sum_s": round(secure_secs, 3), "plain_sum_s": round(plain_secs, 4),
            "stage_s_secure": round(site_max + secure_secs, 3), "stage_s_plain": round(site_max + plain_secs, 3),
            "stage_time_ratio": round((site_max + secure_secs) / (site_max + plain_secs), 3),
            "bytes_per_site_secure": secure_bytes, "bytes_per_site_plain": plain_bytes,
            "bytes_ratio": round(secure_bytes / plain_bytes, 3), "secure_equals_plain": True}


def nnunet_dataset(sites: dict, raw: Path) -> None:
    from imaging_core.io import load_volume, save_volume
    ds = raw / "Dataset001_fedvox"
    (ds / "imagesTr").mkdir(parents=True)
    (ds / "labelsTr").mkdir()
    from imaging_core.data.datalist import load_datalist
    n = 0
    labels = None
    for s, (dl_path, mod) in sites.items():
        dl = load_datalist(dl_path)
        labels = {v: k for k, v in dl.labels.items()}
        for c in dl.cases:
            if c.label is None:
                continue
            save_volume(load_volume(c.image), ds / "imagesTr" / f"case{n:03d}_0000.nii.gz")
            save_volume(load_volume(c.label), ds / "labelsTr" / f"case{n:03d}.nii.gz", dtype=np.uint8)
            n += 1
    (ds / "dataset.json").write_text(json.dumps({"channel_names": {"0": "CT"}, "labels": labels,
                                                 "numTraining": n, "file_ending": ".nii.gz"}))


def _world(values, transpose_forward):
    """nnU-Net's (transposed, SimpleITK z,y,x) order back to x, y, z."""
    sitk = [None] * 3
    for i, t in enumerate(transpose_forward):
        sitk[t] = values[i]
    return sitk[::-1]


def part2(work: Path, python: str | None) -> dict:
    from imaging_core.plan.aggregate import aggregate_fingerprints
    from imaging_core.plan.fingerprint import fingerprint_site
    from imaging_core.plan.planner import make_plan
    sites = {s: v for s, v in make_sites(work / "sites3", 3).items() if v[1] == "CT"}
    replies = {s: fingerprint_site(dl, mod, site=s).to_reply() for s, (dl, mod) in sites.items()}
    ours = make_plan(aggregate_fingerprints(replies), memory_bytes=8 * 2 ** 30, base_channels=32)
    out = {"ours": {"spacing": ours["preprocess"]["pixdim"], "patch_size": ours["sampling"]["patch_size"],
                    "batch_size": ours["sampling"]["samples_per_case"],
                    "normalisation": ours["preprocess"]["intensity"]["CT"],
                    "n_stages": len(ours["model"]["channels"]), "features": ours["model"]["channels"],
                    "crop_foreground": ours["preprocess"]["crop_foreground"]},
           "reasons": ours["reasons"]}
    if not python or not Path(python).exists():
        out["nnunet"] = f"not run: no nnU-Net python at {python!r}"
        return out
    base = work / "nnunet"
    shutil.rmtree(base, ignore_errors=True)
    nnunet_dataset(sites, base / "raw")
    env = {**os.environ, "nnUNet_raw": str(base / "raw"), "nnUNet_preprocessed": str(base / "pre"),
           "nnUNet_results": str(base / "res"), "nnUNet_def_n_proc": "1"}
    t0 = time.perf_counter()
    p = subprocess.run([python, "-c", NNUNET_SCRIPT], env=env, capture_output=True, text=True, timeout=1200)
    line = [x for x in p.stdout.splitlines() if x.startswith("NNUNET_JSON ")]
    if p.returncode or not line:
        out["nnunet"] = f"failed (rc {p.returncode}): {(p.stderr or p.stdout).strip().splitlines()[-1:]}"
        return out
    nn = json.loads(line[0].split(" ", 1)[1])
    tf = nn["transpose_forward"]
    props = nn["ct_props"]
    out["nnunet"] = {"spacing": [round(x, 5) for x in _world(nn["spacing"], tf)],
                     "patch_size": _world(nn["patch_size"], tf), "batch_size": nn["batch_size"],
                     "normalisation": {"scheme": nn["normalization_schemes"][0],
                                       "clip": [props["percentile_00_5"], props["percentile_99_5"]],
                                       "mean": props["mean"], "std": props["std"]},
                     "use_mask_for_norm": nn["use_mask_for_norm"], "n_stages": nn["n_stages"],
                     "features": nn["features"], "seconds": round(time.perf_counter() - t0, 1)}
    o, r = out["ours"], out["nnunet"]
    out["differences"] = {
        "spacing": "same rule (median + anisotropy); ours reads the median from 0.01 mm grid counts"
                   if np.allclose(o["spacing"], r["spacing"], atol=0.011) else "differs: see reasons",
        "patch_size": "ours pools all axes together (one stride per level), so each axis is a multiple of "
                      "2^depth set by the smallest axis; nnU-Net pools per axis; our memory model is an "
                      "analytic estimate of our UNet3D, nnU-Net's is measured on its PlainConvUNet",
        "normalisation": "same CTNormalization: clip to foreground 0.5/99.5, z-score with foreground mean/std; "
                         "ours from 4 HU histogram bins summed over sites, nnU-Net from sampled voxels",
    }
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--work", default=None, help="scratch directory (default: a temporary one)")
    ap.add_argument("--sites", default="3,10")
    ap.add_argument("--nnunet-python", default="/work/venv-nnunet/bin/python")
    a = ap.parse_args(argv)
    work = Path(a.work or tempfile.mkdtemp(prefix="bench_plan_"))
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    result = {"fingerprint_stage": [part1(work, int(n)) for n in a.sites.split(",")]}
    for row in result["fingerprint_stage"]:
        print(f"{row['sites']} sites, {row['cases']} cases: stage {row['stage_s_secure']} s secure vs "
              f"{row['stage_s_plain']} s plaintext (x{row['stage_time_ratio']}); bytes per site "
              f"{row['bytes_per_site_secure']} vs {row['bytes_per_site_plain']} (x{row['bytes_ratio']})")
    result["plan_vs_nnunet"] = part2(work, a.nnunet_python)
    cmp = result["plan_vs_nnunet"]
    for k in ("spacing", "patch_size", "batch_size", "normalisation", "n_stages"):
        print(f"{k:14s} ours {cmp['ours'].get(k)}  |  nnU-Net "
              f"{cmp['nnunet'].get(k) if isinstance(cmp['nnunet'], dict) else cmp['nnunet']}")
    print(json.dumps(result, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
