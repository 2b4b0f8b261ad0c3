"""The data contract of a bundle: what an input image must go through before
the network sees it, and what the network's output channels mean.

It has the same shape as the federation's ``[preprocess]`` table (so
``contract_preprocess`` reads it with that table's schema and defaults) plus the
label map, the default modality and the sliding-window settings::

    {"orientation": "RAS", "pixdim": [4, 4, 4],
     "intensity": {"CT": {"kind": "window", "a_min": -200, "a_max": 300}, "MR": {"kind": "zscore"}},
     "modality": "CT", "crop_foreground": true, "foreground_threshold": 0.05, "margin": 2,
     "labels": {"0": "background", "1": "organ"}, "in_channels": 1,
     "roi_size": [32, 32, 32], "overlap": 0.25, "sw_batch_size": 4,
     "postprocess": {"chain": [{"name": "largest_component", "classes": [1]}]},
     "plan": {...}}          # the run's plan entry, when it had one (carried as is)

``postprocess`` is the [postprocess] chain the run evaluated with (or the one
chosen from its validation metrics at export); ``fedvox infer`` and the
bundle's MONAI inference.json both run it on the preprocessed grid, before the
prediction goes back to the input's grid, exactly as the run's evaluation did.
"""
from __future__ import annotations

import copy

from ..config import ImagingConfig, PostprocessTable, PreprocessTable, SamplingTable, TrainTable, parse
from ..errors import ImagingError

REQUIRED = ("pixdim", "intensity", "labels")
PREPROCESS_KEYS = ("orientation", "pixdim", "crop_foreground", "foreground_threshold", "margin", "intensity")


def contract_preprocess(c: dict) -> PreprocessTable:
    """The contract's [preprocess] part, typed (what build_preprocess runs)."""
    pre = parse(PreprocessTable, {k: c[k] for k in PREPROCESS_KEYS if k in c}, None, "data_contract")
    # exactly the modalities the contract names (the schema would add the default ones)
    return pre.model_copy(update={"intensity": {m: pre.intensity[m] for m in c["intensity"]}})


def normalize_contract(contract: dict) -> dict:
    """Defaults (imaging_core.config) filled in, labels keyed by str(int), intensity
    per modality; ValueError if unusable."""
    missing = [k for k in REQUIRED if k not in contract]
    if missing:
        raise ValueError(f"data contract lacks {missing}")
    c = copy.deepcopy(contract)
    c.setdefault("modality", "CT")
    if isinstance(c["intensity"], dict) and "kind" in c["intensity"]:
        c["intensity"] = {c["modality"]: c["intensity"]}  # a single rule: the default modality's
    pre = contract_preprocess(c)
    if c["modality"] not in pre.intensity:
        raise ValueError(f"default modality {c['modality']!r} has no intensity rule ({sorted(pre.intensity)})")
    try:
        labels = ImagingConfig.model_validate({"labels": c["labels"]}).labels
    except ValueError:
        raise ValueError(f"labels must map integers 0..K-1 to names, got {c['labels']!r}") from None
    train = TrainTable()
    post = contract_postprocess(c)
    out = pre.model_dump()
    out.update(modality=c["modality"], labels={str(k): v for k, v in labels.items()},
               in_channels=int(c.get("in_channels", 1)),
               roi_size=[int(r) for r in c.get("roi_size", SamplingTable().patch_size)],
               overlap=float(c.get("overlap", train.overlap)),
               sw_batch_size=int(c.get("sw_batch_size", train.sw_batch_size)),
               postprocess=post.chain_config())
    if c.get("plan") is not None:
        out["plan"] = c["plan"]
    return out


def contract_postprocess(c: dict) -> PostprocessTable:
    """The contract's post-processing chain, typed and its steps checked (none: empty chain)."""
    post = parse(PostprocessTable, dict(c.get("postprocess") or {}), None, "data_contract.postprocess")
    from ..postprocess.chain import build_postprocess
    build_postprocess(post.chain_config())  # ValueError naming the bad step
    return post


def contract_config(contract: dict, amp: str | None = None) -> ImagingConfig:
    """The imaging config a (normalised) contract amounts to: what a bundle's
    inference hands to imaging_core.task.Task (its post-processing chain; ``amp`` None: fp32)."""
    return ImagingConfig(labels={int(k): v for k, v in contract["labels"].items()},
                         preprocess=contract_preprocess(contract), postprocess=contract_postprocess(contract),
                         sampling=SamplingTable(patch_size=list(contract["roi_size"])),
                         train=TrainTable(overlap=float(contract["overlap"]),
                                          sw_batch_size=int(contract["sw_batch_size"]), amp=amp or "none"))


def num_classes(contract: dict) -> int:
    return len(contract["labels"])


def modality_or_default(contract: dict, modality: str | None, path=None) -> str:
    mod = modality or contract["modality"]
    if mod not in contract["intensity"]:
        raise ImagingError(path, f"the bundle has no preprocessing for modality {mod!r} "
                                 f"(it knows {', '.join(sorted(contract['intensity']))})")
    return mod


def input_value_range(rule: dict) -> list[float]:
    """What the network input spans after intensity normalisation ([] = unbounded);
    ``rule``: a normalised contract's intensity rule."""
    if rule["kind"] in ("window", "percentile") and rule["clip"]:
        return [float(rule["b_min"]), float(rule["b_max"])]
    return []
