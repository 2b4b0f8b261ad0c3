"""Configurable post-processing chain, run after sliding-window inference.

    cfg = {"chain": ["crf", "largest_component"],        # steps, in order
           "classes": [1, 2],            # default: every label present
           "connectivity": 26,
           "crf": {"iterations": 5, "bilateral_weight": 3.0, ...},
           "remove_small": {"min_voxels": 64}}

A step is a name or a dict {"name": ..., **options}; options for a named
step come from cfg[name]. Steps:

- "crf": dense CRF on the probabilities (needs probs and image, so it must be
  the first step and the chain must be run with postprocess_probs);
- "largest_component" (alias "keep_largest"): keep each class's largest
  component (options: classes, connectivity);
- "remove_small": drop components below min_voxels (options: min_voxels,
  classes, connectivity).
"""
from __future__ import annotations

from collections.abc import Callable, Mapping

import numpy as np
import torch

from .components import keep_largest, remove_small
from .crf import crf_refine

_LABEL_STEPS = {"largest_component": {"classes", "connectivity"},
                "keep_largest": {"classes", "connectivity"},
                "remove_small": {"min_voxels", "classes", "connectivity"}}
_CRF_OPTS = {"iterations", "bilateral_weight", "gaussian_weight", "bilateral_spatial_sigma",
             "bilateral_color_sigma", "gaussian_spatial_sigma", "compatibility", "spacing",
             "method"}
_TOP = {"chain", "classes", "connectivity", "crf", "largest_component", "keep_largest",
        "remove_small"}


def _steps(cfg) -> list[tuple[str, dict]]:
    if not isinstance(cfg, Mapping):
        raise ValueError(f"postprocess config must be a dict, got {type(cfg).__name__}")
    unknown = set(cfg) - _TOP
    if unknown:
        raise ValueError(f"postprocess config: unknown keys {sorted(unknown)}; "
                         f"known: {sorted(_TOP)}")
    chain = cfg.get("chain", [])
    if isinstance(chain, str) or not isinstance(chain, list | tuple):
        raise ValueError(f"postprocess config: 'chain' must be a list of steps, got {chain!r}")
    steps = []
    for i, step in enumerate(chain):
        if isinstance(step, str):
            name, opts = step, dict(cfg.get(step, {}) or {})
        elif isinstance(step, Mapping) and isinstance(step.get("name"), str):
            name, opts = step["name"], {k: v for k, v in step.items() if k != "name"}
        else:
            raise ValueError(f"postprocess config: step {i} must be a name or a dict with "
                             f"'name', got {step!r}")
        if name == "crf":
            if i != 0:
                raise ValueError("postprocess config: 'crf' works on probabilities, so it "
                                 "must be the first step")
            bad = set(opts) - _CRF_OPTS
        elif name in _LABEL_STEPS:
            for k in ("classes", "connectivity"):
                if k in cfg and k not in opts:
                    opts[k] = cfg[k]
            bad = set(opts) - _LABEL_STEPS[name]
            if name == "remove_small" and "min_voxels" not in opts:
                raise ValueError("postprocess config: 'remove_small' needs min_voxels")
        else:
            raise ValueError(f"postprocess config: unknown step {name!r}; known: "
                             f"{sorted(['crf', *_LABEL_STEPS])}")
        if bad:
            raise ValueError(f"postprocess config: unknown options {sorted(bad)} for {name!r}")
        steps.append((name, opts))
    return steps


def _label_fn(name: str, opts: dict) -> Callable:
    if name in ("largest_component", "keep_largest"):
        return lambda lm: keep_largest(lm, **opts)
    return lambda lm: remove_small(lm, **opts)


class PostProcess:
    """label_map -> label_map for the label steps of a chain."""

    def __init__(self, cfg: Mapping):
        self.steps = _steps(cfg)
        self.crf = next((o for n, o in self.steps if n == "crf"), None)
        self._fns = [_label_fn(n, o) for n, o in self.steps if n != "crf"]

    def __call__(self, label_map):
        if self.crf is not None:
            raise ValueError("postprocess chain starts with 'crf', which needs probabilities "
                             "and the image: call postprocess_probs(probs, image, cfg)")
        return self.apply_labels(label_map)

    def apply_labels(self, label_map):
        for f in self._fns:
            label_map = f(label_map)
        return label_map

    def __repr__(self) -> str:
        return f"PostProcess({[n for n, _ in self.steps]})"


def build_postprocess(cfg: Mapping) -> PostProcess:
    """A callable label_map -> label_map for cfg (validated now, not at use)."""
    return PostProcess(cfg)


def postprocess_probs(probs, image, cfg: Mapping):
    """Probabilities (L,X,Y,Z) -> label map (X,Y,Z): optional CRF, argmax,
    then the label steps. With a batch (B,L,X,Y,Z) the result is (B,X,Y,Z).
    Returns uint8 labels (int64 past 255 labels), numpy if probs is numpy."""
    pp = build_postprocess(cfg)
    is_np = isinstance(probs, np.ndarray)
    if pp.crf is not None:
        probs = crf_refine(probs, image, **pp.crf)
    p = torch.from_numpy(probs) if isinstance(probs, np.ndarray) else probs
    if p.dim() not in (4, 5):
        raise ValueError(f"postprocess_probs: probs must be (L,X,Y,Z) or (B,L,X,Y,Z), "
                         f"got shape {tuple(p.shape)}")
    lab = p.argmax(dim=-4)
    lab = lab.to(torch.uint8) if p.shape[-4] <= 256 else lab
    if lab.dim() == 4:
        lab = torch.stack([pp.apply_labels(x) for x in lab])
    else:
        lab = pp.apply_labels(lab)
    return lab.cpu().numpy() if is_np else lab
