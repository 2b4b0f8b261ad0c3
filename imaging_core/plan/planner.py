"""The plan: [preprocess], [sampling] and [model] tables derived from the pooled
fingerprints, with nnU-Net v2's ExperimentPlanner (3d_fullres) as the anchor.

Rules (and where they differ from nnU-Net v2, why):
- target spacing: per-axis median over all cases; anisotropy rule as nnU-Net:
  when the coarsest axis is > 3x the others' spacing AND has < 1/3 of their
  voxels, that axis takes the 10th percentile of its spacings (not finer than
  the other axes).
- patch: nnU-Net's start (a 256^3-voxel patch isotropic in mm, clipped to the
  median shape after resampling), then shrink the axis largest relative to the
  median shape until two patches fit the memory budget. Our UNet3D pools all
  axes at once (one stride per level), so the depth is the number of halvings
  keeping the SMALLEST patch axis >= 4 voxels, and every axis is a multiple of
  2^depth (nnU-Net pools per axis).
- batch: as many patches as the budget holds, at least 2, at most 5% of the
  dataset's voxels (nnU-Net's cap). It is samples_per_case (one case per step).
- CT: clip to the pooled foreground 0.5/99.5 percentiles, then (x - mean) / std
  with the pooled foreground mean/std: nnU-Net's CTNormalization, written as a
  window rule whose output range is the z-scored clip range.
- MR: per-image z-score with whole-head statistics (MR_RULE): nnU-Net masks the
  statistics to non-zero voxels when cropping removed >= 25% of the volume,
  which puts a zero-filled background at the tissue mean (issue 16); the head
  mask makes zero-filled and noisy backgrounds end at the same value.
- crop-to-nonzero: on when it removes >= 25% of the median case (nnU-Net's
  threshold for its use_mask_for_norm).
"""
from __future__ import annotations

import math
from typing import Any, Mapping

from ..config import ModelTable, PreprocessTable, SamplingTable
from .aggregate import PlanError, Pooled

# the training memory per site a plan fits its patch to when the run states none
# (`fedvox server --plan-memory-gb`, `fedvox plan --memory-gb`): a mid-range GPU, or a CPU box
DEFAULT_MEMORY_GB = 8.0
ANISO_THRESHOLD = 3.0
ANISO_PERCENTILE = 10.0
INITIAL_PATCH_VOXELS = 256 ** 3
MIN_FEATURE_EDGE = 4          # smallest feature map edge at the bottom of the UNet
MAX_DEPTH = 5
MAX_CHANNELS = 320            # nnU-Net's 3D feature cap
CROP_GAIN = 0.75              # crop when the median case keeps <= 75% of its voxels
MAX_BATCH_SHARE = 0.05        # a batch covers at most 5% of the dataset's voxels
BYTES_PER_ACTIVATION = 4      # float32 (AMP halves it: the estimate keeps a margin)
STORED_PER_LEVEL = 12         # tensors kept for backward per level (encoder + decoder)

# MR rule: z-score over a head mask, background set to one value (zero-filled and
# noisy backgrounds end equal: bench_generalisation, held-out brain Dice 0.28 -> 0.95)
MR_RULE = {"kind": "zscore", "mask": "head"}


def target_spacing(pooled: Pooled) -> tuple[list[float], str]:
    target = pooled.spacing_percentile(50.0)
    voxels = pooled.crop_voxels_median()
    worst = max(range(3), key=lambda a: target[a])
    others = [a for a in range(3) if a != worst]
    aniso_spacing = target[worst] > ANISO_THRESHOLD * max(target[a] for a in others)
    aniso_voxels = voxels[worst] * ANISO_THRESHOLD < min(voxels[a] for a in others)
    why = f"median spacing {target} mm over {pooled.num_cases} cases"
    if aniso_spacing and aniso_voxels:
        p = pooled.spacing_axis_percentile(worst, ANISO_PERCENTILE)
        finest_other = max(target[a] for a in others)
        p = max(p, finest_other + 1e-5) if p < finest_other else p
        why += (f"; axis {worst} is > {ANISO_THRESHOLD:g}x coarser with < 1/{ANISO_THRESHOLD:g} of the voxels: "
                f"it takes the {ANISO_PERCENTILE:g}th percentile {round(p, 5)} mm")
        target[worst] = round(p, 5)
    return target, why


def _depth(patch: list[int]) -> int:
    d = 0
    while d < MAX_DEPTH and min(patch) // 2 ** (d + 1) >= MIN_FEATURE_EDGE:
        d += 1
    return d


def _fit(patch: list[int]) -> tuple[list[int], int]:
    """Depth from the smallest axis, every axis a multiple of 2^depth."""
    patch = [max(int(p), MIN_FEATURE_EDGE) for p in patch]
    d = _depth(patch)
    k = 2 ** d
    return [max(k * MIN_FEATURE_EDGE, (p // k) * k) if min(patch) >= k * MIN_FEATURE_EDGE else p
            for p in patch], d


def channels_for(depth: int, base: int) -> list[int]:
    return [min(base * 2 ** i, MAX_CHANNELS) for i in range(depth + 1)]


def sample_bytes(patch: list[int], channels: list[int], in_channels: int = 1) -> int:
    """Training memory of one patch: stored activations of every level + input."""
    vox = math.prod(patch)
    act = sum(c * vox / 8 ** lvl for lvl, c in enumerate(channels))
    return int((act * STORED_PER_LEVEL + 2 * in_channels * vox) * BYTES_PER_ACTIVATION)


def patch_and_batch(spacing: list[float], median_shape: list[float], memory_bytes: int, base: int,
                    dataset_voxels: float) -> tuple[list[int], int, int, str]:
    inv = [1.0 / s for s in spacing]
    scale = (INITIAL_PATCH_VOXELS / math.prod(inv)) ** (1 / 3)
    patch = [min(round(i * scale), max(int(m), MIN_FEATURE_EDGE)) for i, m in zip(inv, median_shape)]
    patch, depth = _fit(patch)
    steps = 0
    while 2 * sample_bytes(patch, channels_for(depth, base)) > memory_bytes:
        axis = max(range(3), key=lambda a: patch[a] / max(median_shape[a], 1))
        if patch[axis] <= MIN_FEATURE_EDGE * 2:
            raise PlanError("plan", f"memory budget {memory_bytes / 2**30:.2f} GiB holds no two patches "
                                    f"of {patch} (raise the budget)")
        patch[axis] -= max(2 ** depth, 1)
        patch, depth = _fit(patch)
        steps += 1
    per = sample_bytes(patch, channels_for(depth, base))
    cap = max(2, int(MAX_BATCH_SHARE * dataset_voxels / math.prod(patch)))
    batch = max(2, min(memory_bytes // per, cap))
    why = (f"start {INITIAL_PATCH_VOXELS ** (1/3):.0f}^3 voxels isotropic in mm, clipped to the median "
           f"shape {[round(m) for m in median_shape]}, {steps} reductions to fit 2 patches in "
           f"{memory_bytes / 2**30:.2f} GiB ({per / 2**20:.0f} MiB each); batch {batch} "
           f"(budget holds {memory_bytes // per}, 5% of the dataset caps it at {cap})")
    return patch, int(batch), depth, why


def normalisation(pooled: Pooled) -> tuple[dict[str, Any], str]:
    if pooled.modality.upper() == "CT":
        fg = pooled.intensity("fg")
        std = fg["std"] if fg["std"] > 0 else 1.0
        rule = {"kind": "window", "a_min": round(fg["p0.5"], 3), "a_max": round(fg["p99.5"], 3),
                "b_min": round((fg["p0.5"] - fg["mean"]) / std, 5),
                "b_max": round((fg["p99.5"] - fg["mean"]) / std, 5), "clip": True}
        return rule, (f"CT: clip to the pooled foreground 0.5/99.5 percentiles [{rule['a_min']}, "
                      f"{rule['a_max']}] HU, then z-score with mean {fg['mean']:.1f} / std {std:.1f} "
                      "(nnU-Net CTNormalization)")
    return dict(MR_RULE), (f"{pooled.modality}: no absolute scale, per-image z-score {MR_RULE}; "
                           "whole-head statistics so zero-filled and noisy backgrounds end alike")


def make_plan(pooled: Mapping[str, Pooled], memory_bytes: int, base_channels: int | None = None,
              in_channels: int = 1) -> dict[str, Any]:
    """plan.json: {"preprocess", "sampling", "model"} tables (validated against
    imaging_core.config) and {"reasons"}: one line per choice."""
    if not pooled:
        raise PlanError("plan", "no fingerprints to plan from")
    base = base_channels or ModelTable().channels[0]
    mods = sorted(pooled)
    # spacing, shapes and crop come from every case of every modality
    ref = pooled[mods[0]] if len(mods) == 1 else _merge(pooled)
    spacing, why_spacing = target_spacing(ref)
    extent = ref.extent_median()
    median_shape = [e / s for e, s in zip(extent, spacing)]
    dataset_voxels = ref.num_cases * math.prod(median_shape)
    patch, batch, depth, why_patch = patch_and_batch(spacing, median_shape, memory_bytes, base, dataset_voxels)
    crop_frac = ref.crop_fraction_median()
    crop = crop_frac <= CROP_GAIN
    rules, why_norm = {}, []
    for m in mods:
        rules[m], w = normalisation(pooled[m])
        why_norm.append(w)
    pre: dict[str, Any] = {"pixdim": spacing, "crop_foreground": crop, "intensity": rules}
    if "CT" in rules:
        # crop threshold just above the clipped floor of the normalised CT
        ct = rules["CT"]
        pre["foreground_threshold"] = round(ct["b_min"] + 1e-3 * (ct["b_max"] - ct["b_min"]), 6)
    tables = {
        "preprocess": PreprocessTable.model_validate(pre).model_dump(),
        "sampling": SamplingTable.model_validate({"patch_size": patch, "samples_per_case": batch}).model_dump(),
        "model": ModelTable.model_validate({"channels": channels_for(depth, base),
                                            "strides": [2] * depth}).model_dump(),
    }
    reasons = {
        "pixdim": why_spacing,
        "patch_size": why_patch,
        "samples_per_case": f"the batch: {batch} patches per step",
        "model": f"depth {depth}: halvings that keep the smallest patch axis ({min(patch)}) >= "
                 f"{MIN_FEATURE_EDGE}; channels from {base} doubling, capped at {MAX_CHANNELS}",
        "crop_foreground": (f"median case keeps {crop_frac:.0%} of its voxels after crop-to-nonzero "
                            f"({'<=' if crop else '>'} {CROP_GAIN:.0%}: {'crop' if crop else 'no crop'})"),
        "intensity": "; ".join(why_norm),
    }
    return {**tables, "reasons": reasons, "cases": ref.num_cases, "modalities": mods}


def _merge(pooled: Mapping[str, Pooled]) -> Pooled:
    """Geometry over all modalities: the spatial sections summed (same grids)."""
    from .layout import Layout
    first = next(iter(pooled.values()))
    parts = Layout(first.modality).zeros()
    for p in pooled.values():
        for k, v in p.parts.items():
            if k in ("cases", "skipped", "spacing", "extent", "crop_voxels", "crop_frac", "min_frac"):
                parts[k] = parts[k] + v.reshape(-1)
    return Pooled(first.modality, Layout(first.modality).pack(parts), {}, {})
