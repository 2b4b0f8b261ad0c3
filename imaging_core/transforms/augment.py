"""Random augmentation of training patches: flips, quarter turns and warping helpers
(augment_spatial), the combined rotation/scaling/elastic warp (augment_warp) and the
intensity set (augment_intensity), importable from here as before the split."""
from .augment_intensity import (RandAdjustContrast, RandContrast, RandGaussianNoise, RandGaussianSmooth,
                                RandScaleIntensity, RandShiftIntensity, RandSimulateLowResolution,
                                adjust_contrast, gaussian_kernel_1d, gaussian_smooth, scale_about_mean,
                                simulate_low_resolution)
from .augment_spatial import (RandAffine, RandFlip, RandRotate90, affine_index_map, draw_around_one,
                              flip_affine, rot90_index_map, sample_grid, sampling_grid, warp_array)
from .augment_warp import SOURCE_KEY, RandSpatial, WithSource, elastic_field

__all__ = ["SOURCE_KEY", "RandAdjustContrast", "RandAffine", "RandContrast", "RandFlip", "RandGaussianNoise",
           "RandGaussianSmooth", "RandRotate90", "RandScaleIntensity", "RandShiftIntensity",
           "RandSimulateLowResolution", "RandSpatial", "WithSource", "adjust_contrast", "affine_index_map",
           "draw_around_one", "elastic_field", "flip_affine", "gaussian_kernel_1d", "gaussian_smooth",
           "rot90_index_map", "sample_grid", "sampling_grid", "scale_about_mean", "simulate_low_resolution", "warp_array"]
