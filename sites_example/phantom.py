"""A synthetic abdomen in world (RAS, mm) coordinates: body, fat, spine, an
organ with an irregular outline and small lesions inside it.

Anatomy is defined continuously in millimetres and then sampled on each
site's own voxel grid, so differences in spacing, orientation and field of
view between sites are real resampling problems, not relabelled arrays.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

BACKGROUND, ORGAN, LESION = 0, 1, 2
LABELS = {BACKGROUND: "background", ORGAN: "organ", LESION: "lesion"}


@dataclass
class Anatomy:
    body_axes: tuple[float, float]          # ellipse semi-axes (x, y), mm
    organ_centre: np.ndarray                # mm
    organ_axes: np.ndarray                  # mm
    organ_harmonics: np.ndarray             # (k, 4): amplitude, freq_theta, freq_phi, phase
    lesions: list[tuple[np.ndarray, float]]  # (centre mm, radius mm)
    rotation_z: float                       # patient rotation on the table, radians
    shift: np.ndarray                       # patient position on the table, mm


def random_anatomy(rng: np.random.Generator) -> Anatomy:
    organ_axes = np.array([42.0, 34.0, 38.0]) * rng.uniform(0.85, 1.15, 3)
    organ_centre = np.array([-28.0, 6.0, 0.0]) + rng.uniform(-6, 6, 3)
    harmonics = np.column_stack([rng.uniform(0.03, 0.09, 3), rng.integers(2, 5, 3),
                                 rng.integers(1, 4, 3), rng.uniform(0, 2 * np.pi, 3)])
    lesions = []
    for _ in range(int(rng.integers(1, 3))):
        direction = rng.normal(size=3)
        direction /= np.linalg.norm(direction)
        radius = float(rng.uniform(7.0, 13.0))
        # keep the lesion well inside the organ's core ellipsoid
        centre = organ_centre + direction * organ_axes * rng.uniform(0.0, 0.45)
        lesions.append((centre, radius))
    return Anatomy(body_axes=(float(rng.uniform(85, 95)), float(rng.uniform(62, 72))),
                   organ_centre=organ_centre, organ_axes=organ_axes, organ_harmonics=harmonics,
                   lesions=lesions, rotation_z=float(rng.uniform(-0.08, 0.08)),
                   shift=rng.uniform([-8, -8, -10], [8, 8, 10]))


def tissue_maps(anat: Anatomy, world: np.ndarray) -> dict[str, np.ndarray]:
    """Boolean tissue masks at world points ``world`` (3, ...) in scanner RAS mm."""
    c, s = np.cos(anat.rotation_z), np.sin(anat.rotation_z)
    x0, y0, z0 = world[0] - anat.shift[0], world[1] - anat.shift[1], world[2] - anat.shift[2]
    x, y, z = c * x0 + s * y0, -s * x0 + c * y0, z0  # patient coordinates
    bx, by = anat.body_axes
    body_r = (x / bx) ** 2 + (y / by) ** 2
    body = body_r <= 1.0
    fat = body & (body_r > 0.78)
    spine = ((x / 11.0) ** 2 + ((y + by * 0.62) / 11.0) ** 2) <= 1.0
    d = np.stack([x, y, z]) - anat.organ_centre.reshape(3, *([1] * (world.ndim - 1)))
    r = np.sqrt(((d / anat.organ_axes.reshape(3, *([1] * (world.ndim - 1)))) ** 2).sum(0))
    theta = np.arctan2(d[1], d[0])
    phi = np.arccos(np.clip(d[2] / np.maximum(np.linalg.norm(d, axis=0), 1e-6), -1, 1))
    wobble = sum(a * np.sin(ft * theta + fp * phi + ph) for a, ft, fp, ph in anat.organ_harmonics)
    organ = body & (r <= 1.0 + wobble)
    lesion = np.zeros_like(organ)
    for centre, radius in anat.lesions:
        lesion |= ((d + (anat.organ_centre - centre).reshape(3, *([1] * (world.ndim - 1)))) ** 2
                   ).sum(0) <= radius ** 2
    lesion &= organ
    return {"body": body, "fat": fat, "spine": spine & body, "organ": organ, "lesion": lesion}


def label_map(t: dict[str, np.ndarray]) -> np.ndarray:
    lab = np.zeros(t["organ"].shape, dtype=np.uint8)
    lab[t["organ"]] = ORGAN
    lab[t["lesion"]] = LESION
    return lab


def ct_hu(t: dict[str, np.ndarray], lesion_hu: float) -> np.ndarray:
    hu = np.full(t["body"].shape, -1000.0, dtype=np.float32)
    hu[t["body"]] = 40.0
    hu[t["fat"]] = -100.0
    hu[t["spine"]] = 450.0
    hu[t["organ"]] = 95.0
    hu[t["lesion"]] = lesion_hu
    return hu


def mr_signal(t: dict[str, np.ndarray]) -> np.ndarray:
    """T2-like contrast: fat and lesions bright, bone dark, air zero."""
    sig = np.zeros(t["body"].shape, dtype=np.float32)
    sig[t["body"]] = 300.0
    sig[t["fat"]] = 700.0
    sig[t["spine"]] = 80.0
    sig[t["organ"]] = 450.0
    sig[t["lesion"]] = 900.0
    return sig
