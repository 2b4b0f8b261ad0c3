"""Deterministic generator of the real-anatomy rehearsal federation.

What is real: the anatomy, intensities and tissue labels come from the MNI
ICBM152 2009c nonlinear symmetric template that nilearn ships inside its wheel
(a 1 mm skull-stripped T1 and its grey- and white-matter probability maps,
averaged from 152 real MR scans). Nothing is downloaded.

What is simulated: the subjects and the scanners. Each subject is the template
under a random affine (scale, rotation) and a smooth random deformation, with
its tissue contrast and gamma varied; each site then "acquires" it on its own
grid: orientation, voxel spacing (isotropic or thick slices), field of view,
receiver gain, bias field and background convention (zero-filled outside the
head, as skull-stripping exports write it, or magnitude noise, which is Rician).
Labels: 1 = grey matter, 2 = white matter, from the deformed probability maps
(the larger of the two where together they exceed one half); "brain" = 1 | 2.

    python -m sites_example.real.generate --out work/real-sites [--cases 1] [--seed 0]
"""
from __future__ import annotations

import argparse
import hashlib
import importlib.util
import json
import shutil
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import nibabel as nib
import numpy as np
from scipy import ndimage

from imaging_core.data.datalist import write_datalist
from imaging_core.io import Volume, save_nifti

LABELS = {0: "background", 1: "grey_matter", 2: "white_matter"}
TEMPLATE = "mni_icbm152_{}_tal_nlin_sym_09a_converted.nii.gz"
_CODE_DIR = {"R": (0, 1.0), "L": (0, -1.0), "A": (1, 1.0), "P": (1, -1.0), "S": (2, 1.0), "I": (2, -1.0)}


@dataclass(frozen=True)
class RealSite:
    name: str
    axcodes: str               # orientation of the stored array
    spacing: tuple             # mm per array axis
    background: str            # "zero" (zero-filled outside the head) or "rician" (magnitude noise)
    n_train: int
    n_val: int
    noise: float = 0.0         # noise sigma as a fraction of the white-matter signal
    gain: float = 1.0          # receiver gain (arbitrary MR units)
    bias: float = 0.0          # bias-field strength (fraction)
    tilt_deg: float = 0.0      # oblique acquisition about the R-L axis
    fov_margin_mm: float = 10.0  # air around the brain's bounding box
    crop_inferior_mm: float = 0.0  # field of view starting this far above the brain's bottom
    role: str = "site"         # "site" or "coordinator" (held out: never trained on)


SITES = (
    RealSite("site_a", "RAS", (2.0, 2.0, 2.0), "rician", 4, 1, noise=0.03, gain=1.0, bias=0.15),
    RealSite("site_b", "LPS", (1.5, 1.5, 3.0), "rician", 4, 1, noise=0.05, gain=4.0, bias=0.3,
             tilt_deg=6.0),
    RealSite("site_c", "LSA", (2.5, 2.5, 2.5), "rician", 4, 1, noise=0.04, gain=0.6, bias=0.2,
             crop_inferior_mm=25.0),
    # held out entirely: zero-filled background (issue 16's unseen site), thick slices, wide FOV
    RealSite("heldout", "LAS", (1.2, 1.2, 3.0), "zero", 0, 4, gain=2.5, bias=0.25, fov_margin_mm=30.0,
             role="coordinator"),
)


def template_path(kind: str) -> Path:
    """nilearn's shipped ICBM152 file (``kind``: t1, gm, wm), found without importing nilearn."""
    spec = importlib.util.find_spec("nilearn")
    if spec is None or spec.origin is None:
        raise FileNotFoundError("the real-anatomy example needs nilearn (pip install 'nilearn>=0.11,<0.14'), "
                                "which ships the ICBM152 template")
    p = Path(spec.origin).parent / "datasets" / "data" / TEMPLATE.format(kind)
    if not p.is_file():
        raise FileNotFoundError(f"{p}: ICBM152 {kind} map missing from the nilearn install")
    return p


@lru_cache(maxsize=1)
def template() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(T1, GM, WM, affine): float32 maps in [0, 1] on the template's 1 mm RAS grid."""
    imgs = [nib.load(template_path(k)) for k in ("t1", "gm", "wm")]
    maps = [np.asarray(i.dataobj, dtype=np.float32) / 255.0 for i in imgs]
    return (*maps, imgs[0].affine)


def _rng(seed: int, *parts) -> np.random.Generator:
    digest = hashlib.sha256("/".join(map(str, (seed, *parts))).encode()).digest()
    return np.random.default_rng(int.from_bytes(digest[:8], "little"))


def site_grid(site: RealSite) -> tuple[np.ndarray, tuple[int, int, int]]:
    """Affine and shape of the site's scanner grid around the template brain."""
    t1, _, _, taff = template()
    idx = np.argwhere(t1 > 0)
    lo = taff[:3, :3] @ idx.min(0) + taff[:3, 3]
    hi = taff[:3, :3] @ idx.max(0) + taff[:3, 3]
    lo, hi = np.minimum(lo, hi) - site.fov_margin_mm, np.maximum(lo, hi) + site.fov_margin_mm
    lo[2] += site.fov_margin_mm + site.crop_inferior_mm if site.crop_inferior_mm else 0.0
    centre, extent = (lo + hi) / 2, hi - lo
    sp = np.asarray(site.spacing, dtype=float)
    a3 = np.zeros((3, 3))
    for k, code in enumerate(site.axcodes):
        axis, sign = _CODE_DIR[code]
        a3[axis, k] = sign * sp[k]
    t = np.deg2rad(site.tilt_deg)
    a3 = np.array([[1, 0, 0], [0, np.cos(t), -np.sin(t)], [0, np.sin(t), np.cos(t)]]) @ a3
    shape = tuple(int(np.ceil(e / s)) for e, s in zip(np.abs(a3 / sp).T @ extent, sp))
    aff = np.eye(4)
    aff[:3, :3] = a3
    aff[:3, 3] = centre - a3 @ ((np.array(shape) - 1) / 2.0)
    return aff, shape


def _subject_map(rng: np.random.Generator, world: np.ndarray) -> np.ndarray:
    """Template voxel coordinates of the world points ``world`` (3, N) for one subject:
    a random affine about the brain's centre plus a smooth displacement (a few mm)."""
    _, _, _, taff = template()
    ang = rng.uniform(-0.12, 0.12, 3)
    cx, cy, cz = np.cos(ang)
    sx, sy, sz = np.sin(ang)
    rot = (np.array([[1, 0, 0], [0, cx, -sx], [0, sx, cx]]) @ np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
           @ np.array([[cz, -sz, 0], [sz, cz, 0], [0, 0, 1]]))
    lin = rot @ np.diag(rng.uniform(0.92, 1.08, 3))
    p = lin @ world + rng.uniform(-4, 4, (3, 1))
    # smooth random displacement: noise on an 8 mm lattice, smoothed, trilinear at p
    lat = 8.0
    lo = world.min(1, keepdims=True) - 3 * lat
    n = np.ceil((world.max(1, keepdims=True) - lo) / lat).astype(int).ravel() + 6
    amp = rng.uniform(2.0, 4.0)
    field = [ndimage.gaussian_filter(rng.normal(0, 1, n), 1.5) for _ in range(3)]
    field = [f * (amp / max(f.std(), 1e-6)) for f in field]
    q = (p - lo) / lat
    p = p + np.stack([ndimage.map_coordinates(f, q, order=1, mode="nearest") for f in field])
    inv = np.linalg.inv(taff)
    return inv[:3, :3] @ p + inv[:3, 3:4]


def _bias_field(world: np.ndarray, strength: float, rng: np.random.Generator) -> np.ndarray:
    x = world / 100.0
    c = rng.uniform(-1, 1, 6)
    f = c[0] * x[0] + c[1] * x[1] + c[2] * x[2] + c[3] * x[0] * x[1] + c[4] * x[2] ** 2 + c[5] * x[1] * x[2]
    return np.exp(strength * f / max(np.abs(c).sum(), 1e-6)).astype(np.float32)


def make_case(site: RealSite, index: int, seed: int = 0) -> tuple[Volume, Volume]:
    """One (image, label) on the site's grid, deterministic in (site, index, seed)."""
    t1, gm, wm, _ = template()
    rng = _rng(seed, "subject", site.name, index)
    aff, shape = site_grid(site)
    vox = np.indices(shape, dtype=np.float64).reshape(3, -1)
    world = aff[:3, :3] @ vox + aff[:3, 3:4]
    src = _subject_map(rng, world)
    # partial volume: the scanner averages over its voxel, so blur the 1 mm template first
    blur = 0.4 * float(np.mean(site.spacing))
    img = ndimage.map_coordinates(_blurred(blur), src, order=1, mode="constant", cval=0.0)
    pg, pw = (ndimage.map_coordinates(m, src, order=1, mode="constant", cval=0.0) for m in (gm, wm))
    tissue = (pg + pw) > 0.5
    label = np.where(tissue, np.where(pg >= pw, 1, 2), 0).astype(np.uint8).reshape(shape)
    # subject contrast: grey/white balance and gamma vary between people and sequences
    img = img * (1 + rng.uniform(-0.08, 0.08) * pg + rng.uniform(-0.08, 0.08) * pw)
    img = np.clip(img, 0, None) ** rng.uniform(0.85, 1.15)
    srng = _rng(seed, "scan", site.name, index)
    img = img * (1000.0 * site.gain) * _bias_field(world, site.bias, srng)
    if site.background == "rician":
        s = site.noise * 1000.0 * site.gain
        img = np.hypot(img + srng.normal(0, s, img.shape), srng.normal(0, s, img.shape))
    img = np.clip(np.round(img), 0, 32767).astype(np.int16).reshape(shape)
    return Volume(img[None], aff), Volume(label[None], aff)


@lru_cache(maxsize=8)
def _blurred(sigma_mm: float) -> np.ndarray:
    t1 = template()[0]
    return ndimage.gaussian_filter(t1, sigma_mm) if sigma_mm > 0 else t1


def generate_site(site: RealSite, out: Path, cases: float = 1.0, seed: int = 0) -> Path:
    root = out / site.name
    if root.exists():
        shutil.rmtree(root)
    (root / "imagesTr").mkdir(parents=True)
    (root / "labelsTr").mkdir(parents=True)
    n_train = max(int(round(site.n_train * cases)), 1) if site.n_train else 0
    n_val = max(int(round(site.n_val * cases)), 1)
    entries = {"training": [], "validation": []}
    for i in range(n_train + n_val):
        cid = f"{site.name}_{i:03d}"
        image, label = make_case(site, i, seed)
        save_nifti(image, root / f"imagesTr/{cid}.nii.gz")
        save_nifti(label, root / f"labelsTr/{cid}.nii.gz")
        entries["training" if i < n_train else "validation"].append(
            {"image": f"imagesTr/{cid}.nii.gz", "label": f"labelsTr/{cid}.nii.gz"})
    write_datalist(root / "dataset.json", site.name, LABELS, {"0": "MR"}, entries)
    return root


def generate(out: str | Path, cases: float = 1.0, seed: int = 0, sites=SITES) -> dict[str, Path]:
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    roots = {s.name: generate_site(s, out, cases, seed) for s in sites}
    manifest = {"seed": seed, "cases": cases, "source": "nilearn ICBM152 2009c (real); subjects and scanners "
                "simulated (see sites_example/real/generate.py)",
                "sites": {s.name: {"role": s.role, "axcodes": s.axcodes, "spacing_mm": list(s.spacing),
                                   "background": s.background, "tilt_deg": s.tilt_deg,
                                   "crop_inferior_mm": s.crop_inferior_mm} for s in sites}}
    (out / "federation_manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    return roots


def federation_path() -> Path:
    return Path(__file__).parent / "federation.toml"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="work/real-sites")
    ap.add_argument("--cases", type=float, default=1.0, help="multiply case counts by this")
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args(argv)
    for name, root in generate(a.out, a.cases, a.seed).items():
        print(f"{name}: {root}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
