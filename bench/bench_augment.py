"""Per-patch augmentation time: fedvox's pipeline (imaging_core.transforms.presets.build_augment)
vs the equivalent MONAI Compose, on the same patches, in one run.

The MONAI side draws the same probabilities and ranges (AUGMENT_PRESETS["nnunet"]):
RandFlipd per axis, RandAffined (rotation or scaling: p = 1 - (1-p_rot)(1-p_scale)),
Rand3DElasticd, RandGaussianNoised, RandGaussianSmoothd, RandScaleIntensityd,
RandScaleIntensityFixedMeand, RandSimulateLowResolutiond and two RandAdjustContrastd
(inverted, plain; retain_stats). Ours makes rotation, scaling and elastic one
resampling and draws the elastic field on a coarse grid; MONAI resamples per
transform and smooths a full-resolution noise field.

Two modes: "configured" (the preset's probabilities: what training pays on average)
and "always" (every transform fires: the worst patch). Image + label per patch;
torch uses --threads threads (default 1, like one data-loader worker).

    python bench/bench_augment.py [--sizes 32 96] [--n32 200] [--n96 12] [--threads 1]

Last line: one JSON object; ratio = MONAI / ours (> 1: ours is faster).
"""
from __future__ import annotations

import argparse
import json
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from imaging_core.config import AugmentTable  # noqa: E402
from imaging_core.io.volume import Volume  # noqa: E402
from imaging_core.transforms.base import Compose  # noqa: E402
from imaging_core.transforms.presets import build_augment  # noqa: E402


def always(cfg: AugmentTable) -> AugmentTable:
    """The same table with every probability at 1 (the worst patch)."""
    probs = {k: 1.0 for k in cfg.model_dump() if k.endswith("_prob") and getattr(cfg, k) is not None}
    return AugmentTable(**{**cfg.model_dump(exclude_none=True), **probs})


def monai_compose(cfg: AugmentTable, seed: int):
    from monai.transforms import (Compose as MCompose, Rand3DElasticd, RandAdjustContrastd, RandAffined,
                                  RandFlipd, RandGaussianNoised, RandGaussianSmoothd, RandScaleIntensityd,
                                  RandScaleIntensityFixedMeand, RandSimulateLowResolutiond)
    k, img = ["image", "label"], ["image"]
    p_affine = 1 - (1 - cfg.rotate_prob) * (1 - cfg.scale_prob)
    s_lo, s_hi = cfg.scale_range
    b_lo, b_hi = cfg.brightness_range
    c_lo, c_hi = cfg.contrast_range
    # MONAI's elastic sigma smooths a full-resolution field: our control spacing s
    # corresponds to a Gaussian of about s/2 voxels
    sig = tuple(s / 2 for s in cfg.elastic_spacing)
    t = MCompose([
        *[RandFlipd(k, prob=cfg.flip_prob, spatial_axis=a) for a in range(3)],
        RandAffined(k, prob=p_affine, rotate_range=[cfg.rotate_range] * 3, scale_range=[(s_lo - 1, s_hi - 1)] * 3,
                    mode=["bilinear", "nearest"], padding_mode="border"),
        Rand3DElasticd(k, prob=cfg.elastic_prob, sigma_range=sig, magnitude_range=tuple(cfg.elastic_magnitude),
                       mode=["bilinear", "nearest"], padding_mode="border"),
        RandGaussianNoised(img, prob=cfg.noise_prob, std=cfg.noise_std),
        RandGaussianSmoothd(img, prob=cfg.blur_prob, sigma_x=tuple(cfg.blur_sigma), sigma_y=tuple(cfg.blur_sigma),
                            sigma_z=tuple(cfg.blur_sigma)),
        RandScaleIntensityd(img, prob=cfg.brightness_prob, factors=(b_lo - 1, b_hi - 1)),
        RandScaleIntensityFixedMeand(img, prob=cfg.contrast_prob, factors=(c_lo - 1, c_hi - 1), fixed_mean=True,
                                     preserve_range=True),
        RandSimulateLowResolutiond(img, prob=cfg.lowres_prob, zoom_range=tuple(cfg.lowres_zoom)),
        RandAdjustContrastd(img, prob=cfg.gamma_invert_prob, gamma=tuple(cfg.gamma_range), invert_image=True,
                            retain_stats=cfg.gamma_retain_stats),
        RandAdjustContrastd(img, prob=cfg.gamma_prob, gamma=tuple(cfg.gamma_range),
                            retain_stats=cfg.gamma_retain_stats),
    ])
    t.set_random_state(seed)
    return t


def patches(size: int, n: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    g = np.stack(np.meshgrid(*[np.linspace(-1, 1, size)] * 3, indexing="ij"))
    out = []
    for _ in range(n):
        c = rng.uniform(-0.3, 0.3, 3)
        img = np.exp(-((g - c[:, None, None, None]) ** 2).sum(0) * 3)[None].astype(np.float32)
        img += 0.05 * rng.standard_normal(img.shape, dtype=np.float32)
        out.append((img, np.digitize(img, [0.3, 0.7]).astype(np.uint8)))
    return out


def time_ours(cfg, items, seed=0) -> float:
    t = Compose(build_augment(cfg), seed=seed)
    vols = [{"image": Volume(i, np.eye(4)), "label": Volume(lab, np.eye(4))} for i, lab in items]
    t(vols[0])  # warm-up
    t0 = time.perf_counter()
    for v in vols:
        t(v)
    return (time.perf_counter() - t0) / len(vols)


def time_monai(cfg, items, seed=0) -> float:
    t = monai_compose(cfg, seed)
    ds = [{"image": torch.from_numpy(i), "label": torch.from_numpy(lab)} for i, lab in items]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        t(dict(ds[0]))
        t0 = time.perf_counter()
        for d in ds:
            t(dict(d))
    return (time.perf_counter() - t0) / len(ds)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[32, 96])
    ap.add_argument("--n32", type=int, default=200, help="patches for sizes <= 48")
    ap.add_argument("--n96", type=int, default=12, help="patches for larger sizes")
    ap.add_argument("--threads", type=int, default=1)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    nnunet, light = AugmentTable(preset="nnunet"), AugmentTable(preset="light")
    res, rows = {}, []
    for size in a.sizes:
        items = patches(size, a.n32 if size <= 48 else a.n96)
        for mode, cfg in (("configured", nnunet), ("always", always(nnunet))):
            ours, ref = time_ours(cfg, items), time_monai(cfg, items)
            key = f"{mode}_{size}"
            res[key] = {"ours_ms": round(ours * 1e3, 3), "monai_ms": round(ref * 1e3, 3), "ratio": round(ref / ours, 2)}
            rows.append((key, ours, ref))
        res[f"light_{size}"] = {"ours_ms": round(time_ours(light, items) * 1e3, 3)}
    print(f"{'case':<16} {'ours ms':>9} {'MONAI ms':>9} {'ratio':>7}")
    for key, o, r in rows:
        print(f"{key:<16} {o * 1e3:9.2f} {r * 1e3:9.2f} {r / o:7.2f}")
    for size in a.sizes:
        print(f"{'light_' + str(size):<16} {res[f'light_{size}']['ours_ms']:9.2f}   (preset light, ours only)")
    print(json.dumps({"bench": "augment", "torch_threads": torch.get_num_threads(), "per_patch": res}))


if __name__ == "__main__":
    main()
