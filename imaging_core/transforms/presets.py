"""Build the site pipeline from the typed [preprocess], [sampling] and [augment]
tables (imaging_core.config, where their defaults live).

The deterministic part (orientation, spacing, intensity, crop) is what the
on-disk cache stores; the random part (patch sampling, augmentation) runs per
sample from the cache.
"""
from __future__ import annotations

from ..config import AugmentTable, PercentileRule, PreprocessTable, SamplingTable, WindowRule, ZScoreRule
from .augment_intensity import (RandAdjustContrast, RandContrast, RandGaussianNoise, RandGaussianSmooth,
                                RandScaleIntensity, RandShiftIntensity, RandSimulateLowResolution)
from .augment_spatial import RandFlip, RandRotate90
from .augment_warp import RandSpatial, WithSource
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
    """Per-patch augmentation in nnU-Net v2's order: geometry (one resampling), then
    noise, blur, brightness, contrast, low resolution, inverted gamma, gamma."""
    b_lo, b_hi = cfg.brightness_range
    return [RandFlip(prob=cfg.flip_prob),
            RandRotate90(prob=cfg.rot90_prob),
            RandSpatial(rotate_prob=cfg.rotate_prob, rotate_range=cfg.rotate_range,
                        scale_prob=cfg.scale_prob, scale_range=cfg.scale_range,
                        elastic_prob=cfg.elastic_prob, elastic_spacing=cfg.elastic_spacing,
                        elastic_magnitude=cfg.elastic_magnitude),
            RandGaussianNoise(prob=cfg.noise_prob, std=cfg.noise_std),
            RandGaussianSmooth(prob=cfg.blur_prob, sigma=cfg.blur_sigma),
            RandScaleIntensity(prob=cfg.brightness_prob, factors=(b_lo - 1.0, b_hi - 1.0)),
            RandShiftIntensity(prob=cfg.shift_prob, offsets=cfg.shift_range),
            RandContrast(prob=cfg.contrast_prob, factors=cfg.contrast_range),
            RandSimulateLowResolution(prob=cfg.lowres_prob, zoom_range=cfg.lowres_zoom),
            RandAdjustContrast(prob=cfg.gamma_invert_prob, gamma=cfg.gamma_range, invert_image=True,
                               retain_stats=cfg.gamma_retain_stats, around_one=True),
            RandAdjustContrast(prob=cfg.gamma_prob, gamma=cfg.gamma_range,
                               retain_stats=cfg.gamma_retain_stats, around_one=True)]


def build_train_transforms(sampling: SamplingTable, augment: AugmentTable, num_classes: int) -> Compose:
    """Random part run on cached items: sample patches, then augment each patch; the
    patches keep their case so the warp reads real content past the patch edge."""
    return Compose([WithSource(build_sampler(sampling, num_classes)), *build_augment(augment)])
