"""Build the site pipeline from the typed [preprocess], [sampling] and [augment]
tables (imaging_core.config, where their defaults live).

The deterministic part (orientation, spacing, intensity, crop) is what the
on-disk cache stores; the random part (patch sampling, augmentation) runs per
sample from the cache.
"""
from __future__ import annotations

from ..config import AugmentTable, PercentileRule, PreprocessTable, SamplingTable, WindowRule, ZScoreRule
from .augment import (RandAdjustContrast, RandAffine, RandFlip, RandGaussianNoise, RandRotate90,
                      RandScaleIntensity, RandShiftIntensity)
from .base import Compose
from .crop_pad import CropForeground
from .intensity import NormalizeIntensity, ScaleIntensityRange, ScaleIntensityRangePercentiles
from .orientation import Orientation
from .patches import RandCropByLabelClasses, RandCropByPosNeg
from .spatial import Spacing


def intensity_transform(rule: WindowRule | ZScoreRule | PercentileRule):
    if isinstance(rule, WindowRule):
        return ScaleIntensityRange(rule.a_min, rule.a_max, rule.b_min, rule.b_max, clip=rule.clip)
    if isinstance(rule, ZScoreRule):
        return NormalizeIntensity(mask=rule.mask, outside=rule.outside)
    return ScaleIntensityRangePercentiles(rule.lower, rule.upper, rule.b_min, rule.b_max, clip=rule.clip,
                                          relative=rule.relative)


def build_preprocess(cfg: PreprocessTable, modality: str = "CT") -> Compose:
    """Deterministic preprocessing for one modality: the cached part."""
    if modality not in cfg.intensity:
        raise ValueError(f"no [preprocess.intensity.{modality}] rule (there are {', '.join(sorted(cfg.intensity))})")
    ts = [Orientation(cfg.orientation), Spacing(tuple(cfg.pixdim)), intensity_transform(cfg.intensity[modality])]
    if cfg.crop_foreground:
        ts.append(CropForeground(threshold=cfg.crop_threshold(modality), margin=cfg.margin))
    return Compose(ts)


def build_sampler(cfg: SamplingTable, num_classes: int):
    size = tuple(cfg.patch_size)
    if cfg.mode == "classes":
        return RandCropByLabelClasses(size, num_classes=num_classes, ratios=cfg.class_ratios,
                                      num_samples=cfg.samples_per_case)
    return RandCropByPosNeg(size, pos=cfg.pos, neg=cfg.neg, num_samples=cfg.samples_per_case)


def build_augment(cfg: AugmentTable) -> list:
    p_int = cfg.intensity_prob
    return [RandFlip(prob=cfg.flip_prob),
            RandRotate90(prob=cfg.rot90_prob),
            RandAffine(prob=cfg.affine_prob, rotate_range=(0.2, 0.2, 0.2), scale_range=(0.1, 0.1, 0.1)),
            RandScaleIntensity(prob=p_int, factors=0.1),
            RandShiftIntensity(prob=p_int, offsets=0.1),
            RandAdjustContrast(prob=p_int, gamma=(0.8, 1.25)),
            RandGaussianNoise(prob=cfg.noise_prob, std=0.05)]


def build_train_transforms(sampling: SamplingTable, augment: AugmentTable, num_classes: int) -> Compose:
    """Random part run on cached items: sample patches, then augment each patch."""
    return Compose([build_sampler(sampling, num_classes), *build_augment(augment)])
