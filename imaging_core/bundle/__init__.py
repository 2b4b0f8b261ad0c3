"""Export / load / verify a MONAI-style bundle, and segment studies with it.

Heavy imports (torch) happen in the submodules, so ``verify_bundle`` stays cheap.
"""
from __future__ import annotations

__all__ = ["export_bundle", "load_bundle", "verify_bundle", "infer_file", "infer_folder"]


def __getattr__(name):
    if name == "export_bundle":
        from .export import export_bundle
        return export_bundle
    if name == "load_bundle":
        from .load import load_bundle
        return load_bundle
    if name == "verify_bundle":
        from .verify import verify_bundle
        return verify_bundle
    if name in ("infer_file", "infer_folder"):
        from . import infer
        return getattr(infer, name)
    raise AttributeError(name)
