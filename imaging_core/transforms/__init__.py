"""Dictionary transforms over Volumes: geometry, intensity, crop/pad, augmentation, patches."""
from .augment import (RandAdjustContrast, RandAffine, RandContrast, RandFlip, RandGaussianNoise,
                      RandGaussianSmooth, RandRotate90, RandScaleIntensity, RandShiftIntensity,
                      RandSimulateLowResolution, RandSpatial, WithSource, adjust_contrast, affine_index_map,
                      elastic_field, flip_affine, rot90_index_map, warp_array)
from .base import DEFAULT_KEYS, Compose, Data, RandomTransform, Transform, is_label_key
from .crop_pad import (CenterSpatialCrop, CropForeground, DivisiblePad, SpatialPad, crop_or_pad,
                       crop_or_pad_array, foreground_box, shifted_affine)
from .intensity import (NormalizeIntensity, ScaleIntensityRange, ScaleIntensityRangePercentiles,
                        scale_intensity_range)
from .orientation import Orientation, reorient
from .patches import RandCropByLabelClasses, RandCropByPosNeg, patch_start
from .presets import (build_augment, build_preprocess, build_sampler, build_train_transforms,
                      intensity_transform)
from .spatial import Spacing, resample_array, resample_to_grid, spacing_grid, to_original_space

__all__ = [
    # base
    "DEFAULT_KEYS", "Compose", "Data", "RandomTransform", "Transform", "is_label_key",
    # geometry
    "Orientation", "reorient", "Spacing", "resample_array", "resample_to_grid", "spacing_grid",
    "to_original_space",
    # intensity
    "NormalizeIntensity", "ScaleIntensityRange", "ScaleIntensityRangePercentiles",
    "scale_intensity_range",
    # crop / pad
    "CenterSpatialCrop", "CropForeground", "DivisiblePad", "SpatialPad", "crop_or_pad",
    "crop_or_pad_array", "foreground_box", "shifted_affine",
    # augmentation
    "RandAdjustContrast", "RandAffine", "RandContrast", "RandFlip", "RandGaussianNoise",
    "RandGaussianSmooth", "RandRotate90", "RandScaleIntensity", "RandShiftIntensity",
    "RandSimulateLowResolution", "RandSpatial", "WithSource", "adjust_contrast", "affine_index_map", "elastic_field",
    "flip_affine", "rot90_index_map", "warp_array",
    # patches
    "RandCropByLabelClasses", "RandCropByPosNeg", "patch_start",
    # presets
    "build_augment", "build_preprocess", "build_sampler", "build_train_transforms",
    "intensity_transform",
]
