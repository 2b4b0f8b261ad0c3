"""Deterministic generator of the example federation.

Three hospitals and the coordinator's held-out set, each with its own scanner:
voxel spacing, orientation (one oblique), intensity calibration, noise, MR
bias field, and storage (hospital_b stores DICOM series, the others NIfTI).
Every site gets an MSD-style dataset.json.

    python -m sites_example.generate --out work/sites [--zoom 1] [--cases 1]

``zoom`` divides every voxel size (1: ~60k voxels per case, seconds on a
laptop CPU; 4: close to clinical resolution); ``cases`` multiplies case counts.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy import ndimage

from imaging_core.data.datalist import write_datalist
from imaging_core.io import Volume, save_nifti

from . import phantom

FOV_MM = np.array([200.0, 200.0, 150.0])  # RAS extent covered by every scanner

_CODE_DIR = {"R": (0, 1.0), "L": (0, -1.0), "A": (1, 1.0), "P": (1, -1.0), "S": (2, 1.0), "I": (2, -1.0)}


@dataclass(frozen=True)
class SiteSpec:
    name: str
    modality: str            # "CT" or "MR"
    storage: str             # "nifti" or "dicom"
    spacing: tuple           # mm per array axis at zoom 1
    axcodes: str             # orientation of the stored array
    n_train: int
    n_val: int
    tilt_deg: float = 0.0    # oblique acquisition (rotation about the R-L axis)
    gain: float = 1.0        # CT: HU calibration slope; MR: receiver gain
    offset: float = 0.0      # CT: HU calibration offset
    noise: float = 10.0      # noise sigma in stored units
    bias: float = 0.0        # MR bias field strength (fraction)
    role: str = "site"       # "site" or "coordinator"
    fov_mm: tuple | None = None  # override FOV_MM (benchmarks use a clinical-size grid)


SITES = (
    SiteSpec("hospital_a", "CT", "nifti", (4.0, 4.0, 6.0), "LPS", 5, 2, noise=12.0),
    SiteSpec("hospital_b", "CT", "dicom", (3.5, 3.5, 7.0), "LPS", 4, 2,
             gain=1.06, offset=-25.0, noise=22.0),
    SiteSpec("hospital_c", "MR", "nifti", (4.5, 4.5, 4.0), "RAS", 4, 2,
             tilt_deg=8.0, gain=1.3, noise=18.0, bias=0.35),
    SiteSpec("coordinator", "CT", "nifti", (4.0, 4.0, 5.0), "LAS", 0, 4,
             gain=0.97, offset=10.0, noise=15.0, role="coordinator"),
)


def site_grid(spec: SiteSpec, zoom: float) -> tuple[np.ndarray, tuple[int, int, int]]:
    """Affine and shape of the scanner grid covering FOV_MM around the origin."""
    sp = np.asarray(spec.spacing, dtype=float) / zoom
    a3 = np.zeros((3, 3))
    for k, code in enumerate(spec.axcodes):
        axis, sign = _CODE_DIR[code]
        a3[axis, k] = sign * sp[k]
    t = np.deg2rad(spec.tilt_deg)
    rot = np.array([[1, 0, 0], [0, np.cos(t), -np.sin(t)], [0, np.sin(t), np.cos(t)]])
    a3 = rot @ a3
    fov = np.asarray(spec.fov_mm if spec.fov_mm is not None else FOV_MM, dtype=float)
    extent = np.abs(a3 / sp).T @ fov  # world extent along each array axis
    shape = tuple(int(np.ceil(e / s)) for e, s in zip(extent, sp))
    aff = np.eye(4)
    aff[:3, :3] = a3
    aff[:3, 3] = -a3 @ ((np.array(shape) - 1) / 2.0)
    return aff, shape


def _world_coords(aff: np.ndarray, shape) -> np.ndarray:
    idx = np.indices(shape, dtype=np.float32).reshape(3, -1)
    w = aff[:3, :3].astype(np.float32) @ idx + aff[:3, 3:4].astype(np.float32)
    return w.reshape(3, *shape)


def _bias_field(shape, strength: float, rng: np.random.Generator) -> np.ndarray:
    g = [np.linspace(-1, 1, n, dtype=np.float32) for n in shape]
    x, y, z = np.meshgrid(*g, indexing="ij")
    c = rng.uniform(-1, 1, 5)
    field = c[0] * x + c[1] * y + c[2] * z + c[3] * x * y + c[4] * (x ** 2 - 0.33)
    return np.exp(strength * field / max(np.abs(c).sum(), 1e-6)).astype(np.float32)


def make_case(spec: SiteSpec, index: int, zoom: float, seed: int) -> tuple[Volume, Volume, dict]:
    """One (image, label) pair on the site's grid, deterministic in (site, index, seed)."""
    digest = hashlib.sha256(f"{seed}/{spec.name}/{index}".encode()).digest()
    rng = np.random.default_rng(int.from_bytes(digest[:8], "little"))
    anat = phantom.random_anatomy(rng)
    aff, shape = site_grid(spec, zoom)
    tissue = phantom.tissue_maps(anat, _world_coords(aff, shape))
    label = phantom.label_map(tissue)
    if spec.modality == "CT":
        img = phantom.ct_hu(tissue, lesion_hu=float(rng.choice([45.0, 160.0])))
        img = ndimage.gaussian_filter(img, 0.6)  # partial-volume blur at edges
        img = img * spec.gain + spec.offset + rng.normal(0, spec.noise, shape).astype(np.float32)
        img = np.clip(np.round(img), -1024, 3071).astype(np.int16)
    else:
        img = ndimage.gaussian_filter(phantom.mr_signal(tissue), 0.6)
        img *= spec.gain * _bias_field(shape, spec.bias, rng)
        n1, n2 = (rng.normal(0, spec.noise, shape).astype(np.float32) for _ in range(2))
        img = np.sqrt((img + n1) ** 2 + n2 ** 2)  # magnitude images have Rician noise
        img = np.clip(np.round(img), 0, 32767).astype(np.int16)
    meta = {"lesions": len(anat.lesions), "organ_voxels": int((label == 1).sum()),
            "lesion_voxels": int((label == 2).sum())}
    return Volume(img[None], aff), Volume(label[None], aff), meta


def generate_site(spec: SiteSpec, out: Path, zoom: float = 1.0, cases: float = 1.0, seed: int = 0) -> Path:
    """Write one site's images, labels and dataset.json under ``out/spec.name``."""
    root = out / spec.name
    if root.exists():
        shutil.rmtree(root)
    (root / "labelsTr").mkdir(parents=True)
    (root / "imagesTr").mkdir(parents=True)
    n_train = max(int(round(spec.n_train * cases)), 1 if spec.n_train else 0)
    n_val = max(int(round(spec.n_val * cases)), 1)
    entries = {"training": [], "validation": []}
    for i in range(n_train + n_val):
        cid = f"{spec.name}_{i:03d}"
        image, label, _ = make_case(spec, i, zoom, seed)
        if spec.storage == "dicom":
            from imaging_core.io.dicom_write import write_dicom_series
            rel_img = f"imagesTr/{cid}"
            write_dicom_series(image, root / rel_img, modality=spec.modality,
                               rescale_intercept=-1024.0, patient_id=cid,
                               series_description=f"{spec.name} synthetic abdomen")
        else:
            rel_img = f"imagesTr/{cid}.nii.gz"
            save_nifti(image, root / rel_img)
        rel_lab = f"labelsTr/{cid}.nii.gz"
        save_nifti(label, root / rel_lab)
        split = "training" if i < n_train else "validation"
        entries[split].append({"image": rel_img, "label": rel_lab})
    write_datalist(root / "dataset.json", spec.name, phantom.LABELS, {"0": spec.modality}, entries)
    return root


def generate(out: str | Path, zoom: float = 1.0, cases: float = 1.0, seed: int = 0,
             sites=SITES) -> dict[str, Path]:
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    roots = {s.name: generate_site(s, out, zoom, cases, seed) for s in sites}
    manifest = {"seed": seed, "zoom": zoom, "cases": cases,
                "sites": {s.name: {"modality": s.modality, "storage": s.storage, "role": s.role,
                                   "spacing_mm": [x / zoom for x in s.spacing], "axcodes": s.axcodes,
                                   "tilt_deg": s.tilt_deg} for s in sites}}
    (out / "federation_manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    return roots


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="work/sites")
    ap.add_argument("--zoom", type=float, default=1.0, help="divide voxel sizes by this (size knob)")
    ap.add_argument("--cases", type=float, default=1.0, help="multiply case counts by this")
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args(argv)
    for name, root in generate(a.out, a.zoom, a.cases, a.seed).items():
        print(f"{name}: {root}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
