"""Small synthetic sites on disk (NIfTI via nibabel) for the plan tests."""
from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest
from nibabel import orientations as nio


def _affine(spacing, axcodes):
    """A voxel -> RAS affine whose array axes have ``axcodes`` and ``spacing``."""
    ornt = nio.axcodes2ornt(tuple(axcodes))
    a = np.zeros((4, 4))
    for i, (world, flip) in enumerate(ornt):
        a[int(world), i] = flip * spacing[i]
    a[3, 3] = 1.0
    return a


def write_site(root, name, *, modality="MR", n=3, shape=(24, 20, 16), spacing=(1.0, 1.0, 1.0),
               axcodes="RAS", background="noisy", labels=(1,), hu=True, seed=0, label_names=None):
    """A site folder with dataset.json and ``n`` image/label pairs. MR: a head
    (tissue ~ 300) in a zero-filled or noisy background; CT: body ~ 40 HU in
    air at -1000 (or stored without the HU offset when ``hu`` is False)."""
    rng = np.random.default_rng(seed)
    site = root / name
    (site / "img").mkdir(parents=True)
    items = []
    aff = _affine(spacing, axcodes)
    for i in range(n):
        x = np.zeros(shape, np.float32)
        if modality == "CT":
            x[:] = -1000 + rng.normal(0, 5, shape)
            x[3:-3, 3:-3, 2:-2] = 40 + rng.normal(0, 10, (shape[0] - 6, shape[1] - 6, shape[2] - 4))
            if not hu:
                x += 1024
        else:
            x[:] = 0.0 if background == "zero" else np.abs(rng.normal(20, 8, shape))
            x[4:-4, 4:-4, 3:-3] = 300 + rng.normal(0, 30, (shape[0] - 8, shape[1] - 8, shape[2] - 6))
        lab = np.zeros(shape, np.uint8)
        for k, v in enumerate(labels):
            lab[6 + 3 * k:9 + 3 * k, 6:10, 5:9] = v
        nib.save(nib.Nifti1Image(x, aff), site / "img" / f"c{i}.nii.gz")
        nib.save(nib.Nifti1Image(lab, aff), site / "img" / f"c{i}_seg.nii.gz")
        items.append({"image": f"img/c{i}.nii.gz", "label": f"img/c{i}_seg.nii.gz"})
    names = label_names or {"0": "background", **{str(v): f"class{v}" for v in labels}}
    (site / "dataset.json").write_text(json.dumps({"name": name, "labels": names,
                                                   "modality": {"0": modality}, "training": items}))
    return site / "dataset.json"


@pytest.fixture
def site_writer(tmp_path):
    def make(name, **kw):
        return write_site(tmp_path, name, **kw)
    return make
