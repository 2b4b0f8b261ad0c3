"""The data contract of a bundle: what an input image must go through before
the network sees it, and what the network's output channels mean.

It has the same shape as the federation's ``[preprocess]`` table (so
``imaging_core.transforms.presets.build_preprocess`` runs it unchanged) plus the
label map, the default modality and the sliding-window settings::

    {"orientation": "RAS", "pixdim": [4, 4, 4],
     "intensity": {"CT": {"kind": "window", "a_min": -200, "a_max": 300}, "MR": {"kind": "zscore"}},
     "modality": "CT", "crop_foreground": true, "foreground_threshold": 0.05, "margin": 2,
     "labels": {"0": "background", "1": "organ"}, "in_channels": 1,
     "roi_size": [32, 32, 32], "overlap": 0.25, "sw_batch_size": 4}
"""
from __future__ import annotations

import copy

from ..errors import ImagingError

DEFAULTS = {"orientation": "RAS", "modality": "CT", "crop_foreground": True, "foreground_threshold": 0.05,
            "margin": 0, "in_channels": 1, "roi_size": [96, 96, 96], "overlap": 0.5, "sw_batch_size": 4}
REQUIRED = ("pixdim", "intensity", "labels")
_KINDS = ("window", "zscore", "percentile")


def normalize_contract(contract: dict) -> dict:
    """Defaults filled in, labels keyed by str(int), intensity per modality; ValueError if unusable."""
    missing = [k for k in REQUIRED if k not in contract]
    if missing:
        raise ValueError(f"data contract lacks {missing}")
    c = {**copy.deepcopy(DEFAULTS), **copy.deepcopy(contract)}
    inten = c["intensity"]
    if "kind" in inten:  # a single intensity rule: it belongs to the default modality
        inten = {c["modality"]: inten}
    for mod, rule in inten.items():
        if rule.get("kind", "window") not in _KINDS:
            raise ValueError(f"intensity[{mod}]: unknown kind {rule.get('kind')!r} (one of {_KINDS})")
    c["intensity"] = inten
    if c["modality"] not in inten:
        raise ValueError(f"default modality {c['modality']!r} has no intensity rule ({sorted(inten)})")
    try:
        labels = {int(k): str(v) for k, v in c["labels"].items()}
    except (TypeError, ValueError):
        raise ValueError(f"labels must map integers to names, got {c['labels']!r}") from None
    if sorted(labels) != list(range(len(labels))):
        raise ValueError(f"label values must be 0..K-1, got {sorted(labels)}")
    c["labels"] = {str(k): labels[k] for k in sorted(labels)}
    c["pixdim"] = [float(p) for p in c["pixdim"]]
    c["roi_size"] = [int(r) for r in c["roi_size"]]
    c["orientation"] = str(c["orientation"]).upper()
    return c


def num_classes(contract: dict) -> int:
    return len(contract["labels"])


def modality_or_default(contract: dict, modality: str | None, path=None) -> str:
    mod = modality or contract["modality"]
    if mod not in contract["intensity"]:
        raise ImagingError(path, f"the bundle has no preprocessing for modality {mod!r} "
                                 f"(it knows {', '.join(sorted(contract['intensity']))})")
    return mod


def input_value_range(rule: dict) -> list[float]:
    """What the network input spans after intensity normalisation ([] = unbounded)."""
    if rule.get("kind", "window") in ("window", "percentile") and rule.get("clip", True):
        return [float(rule.get("b_min", 0.0)), float(rule.get("b_max", 1.0))]
    return []
