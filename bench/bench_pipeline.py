"""Site data pipeline vs MONAI, in one run.

4 synthetic 256x256x128 int16 CT volumes (.nii.gz, 0.8x0.8x2.5 mm, LPS) with
labels. Chain: load -> channel first -> orientation RAS -> spacing
(1.5,1.5,2.0) -> intensity window -> crop foreground -> (MONAI: pad to 96^3) -> 4 random 96^3 patches
(pos/neg 1:1). MONAI's chain vs ours cold (from the files, same steps) and
warm (from our on-disk cache: memory-mapped arrays + patch sampling).

    python bench/bench_pipeline.py [--volumes 4] [--repeats 2]

Last line: one JSON object with both figures and the ratios.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from imaging_core.data.cache import SiteCache  # noqa: E402
from imaging_core.data.datalist import load_datalist, write_datalist  # noqa: E402
from imaging_core.io import save_nifti  # noqa: E402
from imaging_core.transforms.base import Compose  # noqa: E402
from imaging_core.transforms.crop_pad import CropForeground  # noqa: E402
from imaging_core.transforms.intensity import ScaleIntensityRange  # noqa: E402
from imaging_core.transforms.orientation import Orientation  # noqa: E402
from imaging_core.transforms.patches import RandCropByPosNeg  # noqa: E402
from imaging_core.transforms.spatial import Spacing  # noqa: E402
from sites_example.generate import SiteSpec, make_case  # noqa: E402

PIXDIM = (1.5, 1.5, 2.0)
A_MIN, A_MAX = -200.0, 300.0
PATCH, N_SAMPLES = (96, 96, 96), 4


def make_data(root: Path, n: int) -> Path:
    spec = SiteSpec("bench", "CT", "nifti", (0.8, 0.8, 2.5), "LPS", n, 0, noise=15.0,
                    fov_mm=(204.8, 204.8, 320.0))
    entries = []
    for i in range(n):
        img, lab, _ = make_case(spec, i, 1.0, seed=123)
        assert img.spatial_shape == (256, 256, 128), img.spatial_shape
        save_nifti(img, root / f"imagesTr/ct_{i}.nii.gz")
        save_nifti(lab, root / f"labelsTr/ct_{i}.nii.gz")
        entries.append({"image": f"imagesTr/ct_{i}.nii.gz", "label": f"labelsTr/ct_{i}.nii.gz"})
    return write_datalist(root / "dataset.json", "bench", {0: "bg", 1: "organ", 2: "lesion"},
                          {"0": "CT"}, {"training": entries})


def monai_chain():
    from monai import transforms as mt
    keys = ["image", "label"]
    chain = mt.Compose([
        mt.LoadImaged(keys), mt.EnsureChannelFirstd(keys), mt.Orientationd(keys, axcodes="RAS"),
        mt.Spacingd(keys, pixdim=PIXDIM, mode=("bilinear", "nearest")),
        mt.ScaleIntensityRanged("image", a_min=A_MIN, a_max=A_MAX, b_min=0.0, b_max=1.0, clip=True),
        mt.CropForegroundd(keys, source_key="image"),
        # the foreground box can be thinner than a patch; ours pads there, MONAI's sampler raises
        mt.SpatialPadd(keys, spatial_size=PATCH),
        mt.RandCropByPosNegLabeld(keys, label_key="label", spatial_size=PATCH, pos=1, neg=1,
                                  num_samples=N_SAMPLES, image_key="image", image_threshold=0),
    ])
    chain.set_random_state(0)
    return chain


def run_monai(chain, cases) -> float:
    t0 = time.perf_counter()
    for c in cases:
        patches = chain({"image": str(c.image), "label": str(c.label)})
        assert len(patches) == N_SAMPLES and tuple(patches[0]["image"].shape[1:]) == PATCH
    return time.perf_counter() - t0


def our_preprocess() -> Compose:
    return Compose([Orientation("RAS"), Spacing(PIXDIM), ScaleIntensityRange(A_MIN, A_MAX, 0.0, 1.0, clip=True),
                    CropForeground(threshold=0.0)])


def our_sampler():
    return RandCropByPosNeg(PATCH, pos=1, neg=1, num_samples=N_SAMPLES, image_threshold=0.0)


def _to_tensors(patches):
    return [(torch.from_numpy(np.ascontiguousarray(p["image"].array)),
             torch.from_numpy(np.ascontiguousarray(p["label"].array))) for p in patches]


def run_ours_cold(cases, num_classes) -> float:
    """From the files, same steps as MONAI's chain (what a first epoch without a cache costs)."""
    from imaging_core.data.checks import check_label, check_pair
    from imaging_core.io import load_volume
    pre, samp, rng = our_preprocess(), our_sampler(), np.random.default_rng(0)
    t0 = time.perf_counter()
    for c in cases:
        img, lab = load_volume(c.image), load_volume(c.label)
        check_pair(img, lab)
        item = pre({"image": img, "label": lab.replace(check_label(lab, num_classes))}, rng)
        patches = _to_tensors(samp(item, rng))
        assert len(patches) == N_SAMPLES and tuple(patches[0][0].shape[1:]) == PATCH
    return time.perf_counter() - t0


def run_ours_warm(cached) -> float:
    samp, rng = our_sampler(), np.random.default_rng(0)
    t0 = time.perf_counter()
    for cc in cached:
        patches = _to_tensors(samp(cc.load(mmap=True), rng))
        assert len(patches) == N_SAMPLES and tuple(patches[0][0].shape[1:]) == PATCH
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--volumes", type=int, default=4)
    ap.add_argument("--repeats", type=int, default=2)
    a = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="fedvox-bench-") as tmp:
        root = Path(tmp)
        t = time.perf_counter()
        dl = load_datalist(make_data(root, a.volumes))
        print(f"data: {a.volumes} x 256x256x128 int16 .nii.gz in {time.perf_counter() - t:.1f} s", file=sys.stderr)
        cases = dl.split("training")
        chain = monai_chain()
        run_monai(chain, cases[:1])  # warm imports and the page cache for both
        monai_s = min(run_monai(chain, cases) for _ in range(a.repeats))
        cold_s = min(run_ours_cold(cases, dl.num_classes) for _ in range(a.repeats))
        cache = SiteCache(root / "cache", our_preprocess(), dl.num_classes)
        t = time.perf_counter()
        rep = cache.build(cases)
        build_s = time.perf_counter() - t
        assert not rep.failed, rep.failed
        warm_s = min(run_ours_warm(rep.cases) for _ in range(max(a.repeats, 3)))
    n = a.volumes
    res = {"bench": "pipeline", "volumes": n, "torch_threads": torch.get_num_threads(),
           "monai_vol_per_s": round(n / monai_s, 3),
           "ours_cold_vol_per_s": round(n / cold_s, 3),
           "ours_warm_vol_per_s": round(n / warm_s, 3),
           "ours_cache_build_s_per_vol": round(build_s / n, 3),
           "ratio_cold": round(monai_s / cold_s, 2), "ratio_warm": round(monai_s / warm_s, 2),
           "goal_cold": 3.0, "goal_warm": 20.0}
    print(json.dumps(res))


if __name__ == "__main__":
    main()
