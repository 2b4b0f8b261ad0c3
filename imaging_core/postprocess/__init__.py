"""Post-processing: Python faces of fedvox's compiled ops (csrc/).

The ops are compiled on first use (see imaging_core.postprocess.build) and
cached per torch version; importing this package compiles nothing. Names are
imported lazily so `python -m imaging_core.postprocess.build` runs the build
module fresh (no half-imported copy in sys.modules).
"""
from __future__ import annotations

import importlib

_EXPORTS = {
    "PostProcess": "chain", "build_postprocess": "chain", "postprocess_probs": "chain",
    "connected_components": "components", "keep_largest": "components",
    "remove_small": "components", "crf_refine": "crf", "potts": "crf",
    "distance_transform": "distance", "bilateral_filter": "filters",
    "gaussian_filter": "filters",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        value = getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(_EXPORTS))
