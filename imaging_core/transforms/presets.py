"""Build the site pipeline from config dicts (the [preprocess], [sampling] and
[augment] tables of the federation TOML).

The deterministic part (orientation, spacing, intensity, crop) is what the
on-disk cache stores; the random part (patch sampling, augmentation) runs per
sample from the cache.
"""
from __future__ import annotations

from .augment import (RandAdjustContrast, RandAffine, RandFlip, RandGaussianNoise, RandRotate90,
                      RandScaleIntensity, RandShiftIntensity)
from .base import Compose
from .crop_pad import CropForeground
from .intensity import NormalizeIntensity, ScaleIntensityRange, ScaleIntensityRangePercentiles
from .orientation import Orientation
from .patches import RandCropByLabelClasses, RandCropByPosNeg
from .spatial import Spacing


def intensity_transform(cfg: dict):
    kind = cfg.get("kind", "window")
    if kind == "window":
        return ScaleIntensityRange(cfg["a_min"], cfg["a_max"], cfg.get("b_min", 0.0),
                                   cfg.get("b_max", 1.0), clip=cfg.get("clip", True))
    if kind == "zscore":
        return NormalizeIntensity(nonzero=cfg.get("nonzero", True))
    if kind == "percentile":
        return ScaleIntensityRangePercentiles(cfg.get("lower", 0.5), cfg.get("upper", 99.5),
                                              cfg.get("b_min", 0.0), cfg.get("b_max", 1.0),
                                              clip=cfg.get("clip", True))
    raise ValueError(f"unknown intensity kind {kind!r} (window, zscore, percentile)")


def build_preprocess(cfg: dict, modality: str = "CT") -> Compose:
    """Deterministic preprocessing for one modality: the cached part."""
    ts = [Orientation(cfg.get("orientation", "RAS")), Spacing(tuple(cfg["pixdim"]))]
    ts.append(intensity_transform(cfg["intensity"][modality]))
    if cfg.get("crop_foreground", True):
        thr = float(cfg.get("foreground_threshold", 0.05))
        if cfg["intensity"][modality].get("kind") == "zscore":
            thr = -0.5  # after z-scoring (nonzero), air sits well below the body's mean
        ts.append(CropForeground(threshold=thr, margin=int(cfg.get("margin", 0))))
    return Compose(ts)


def build_sampler(cfg: dict, num_classes: int):
    size = tuple(cfg["patch_size"])
    n = int(cfg.get("samples_per_case", 4))
    if cfg.get("mode", "classes") == "classes":
        return RandCropByLabelClasses(size, num_classes=num_classes, ratios=cfg.get("class_ratios"),
                                      num_samples=n)
    return RandCropByPosNeg(size, pos=cfg.get("pos", 1.0), neg=cfg.get("neg", 1.0), num_samples=n)


def build_augment(cfg: dict) -> list:
    p_int = float(cfg.get("intensity_prob", 0.3))
    return [RandFlip(prob=float(cfg.get("flip_prob", 0.5))),
            RandRotate90(prob=float(cfg.get("rot90_prob", 0.25))),
            RandAffine(prob=float(cfg.get("affine_prob", 0.2)), rotate_range=(0.2, 0.2, 0.2),
                       scale_range=(0.1, 0.1, 0.1)),
            RandScaleIntensity(prob=p_int, factors=0.1),
            RandShiftIntensity(prob=p_int, offsets=0.1),
            RandAdjustContrast(prob=p_int, gamma=(0.8, 1.25)),
            RandGaussianNoise(prob=float(cfg.get("noise_prob", 0.15)), std=0.05)]


def build_train_transforms(sampling: dict, augment: dict, num_classes: int) -> Compose:
    """Random part run on cached items: sample patches, then augment each patch."""
    return Compose([build_sampler(sampling, num_classes), *build_augment(augment)])
