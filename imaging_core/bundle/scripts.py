"""Bundle code: the preprocessing steps MONAI has no transform for, shipped in scripts/.

``python -m monai.bundle run`` puts the bundle root on sys.path, so
inference.json names them as ``scripts.fedvox_transforms.HeadZScored``. A
hospital runs the bundle with MONAI alone, so nothing here imports fedvox:
scripts/head_zscore.py is imaging_core/transforms/head_zscore.py copied
verbatim (one implementation, the one fedvox trained and evaluated with), and
fedvox_transforms.py wraps it as a MONAI MapTransform. The manifest hashes and
signs these files like every other one.
"""
from __future__ import annotations

from pathlib import Path

PACKAGE = "scripts"
HEAD_ZSCORE_TARGET = f"{PACKAGE}.fedvox_transforms.HeadZScored"

_INIT = '"""Code of this bundle that MONAI has no transform for (written by fedvox export)."""\n'

_TRANSFORMS = '''\
"""MONAI wrappers of this bundle's own preprocessing code (written by fedvox export)."""
from __future__ import annotations

import numpy as np
from monai.config import KeysCollection
from monai.transforms import MapTransform
from monai.utils import convert_to_dst_type

from .head_zscore import head_zscore


class HeadZScored(MapTransform):
    """Z-score inside the head of each channel; every voxel outside it becomes ``outside``
    (fedvox's NormalizeIntensity(mask="head"), the same code). Not invertible: it changes
    intensities only, so Invertd passes over it."""

    def __init__(self, keys: KeysCollection, outside: float, allow_missing_keys: bool = False):
        super().__init__(keys, allow_missing_keys)
        self.outside = float(outside)

    def __call__(self, data):
        d = dict(data)
        for key in self.key_iterator(d):
            img = d[key]
            arr = img.detach().cpu().numpy() if hasattr(img, "detach") else np.asarray(img)
            # back to the input's type (a MetaTensor keeps its affine and applied operations)
            d[key] = convert_to_dst_type(head_zscore(arr, self.outside), dst=img)[0]
        return d
'''


def needs_scripts(contract: dict) -> bool:
    """Whether any of the contract's intensity rules is bundle code."""
    return any(r.get("kind") == "zscore" and r.get("mask") == "head" for r in contract["intensity"].values())


def write_scripts(root: Path) -> list[str]:
    """Write scripts/ into the bundle directory ``root``; the relpaths written."""
    from ..transforms import head_zscore
    d = Path(root) / PACKAGE
    d.mkdir(exist_ok=True)
    files = {"__init__.py": _INIT, "fedvox_transforms.py": _TRANSFORMS,
             "head_zscore.py": Path(head_zscore.__file__).read_text()}
    for name, text in files.items():
        (d / name).write_text(text)
    return [f"{PACKAGE}/{n}" for n in files]
