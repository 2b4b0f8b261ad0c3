"""Random augmentation of training patches: the spatial half (augment_spatial) and the
intensity half (augment_intensity), importable from here as before the split."""
from .augment_intensity import (RandAdjustContrast, RandContrast, RandGaussianNoise, RandGaussianSmooth,
                                RandScaleIntensity, RandShiftIntensity, RandSimulateLowResolution,
                                adjust_contrast, gaussian_kernel_1d, gaussian_smooth, scale_about_mean,
                                simulate_low_resolution)
from .augment_spatial import (RandAffine, RandFlip, RandRotate90, RandSpatial, affine_index_map,
                              draw_around_one, elastic_field, flip_affine, rot90_index_map, sample_grid,
                              sampling_grid, warp_array)

__all__ = ["RandAdjustContrast", "RandAffine", "RandContrast", "RandFlip", "RandGaussianNoise",
           "RandGaussianSmooth", "RandRotate90", "RandScaleIntensity", "RandShiftIntensity",
           "RandSimulateLowResolution", "RandSpatial", "adjust_contrast", "affine_index_map",
           "draw_around_one", "elastic_field", "flip_affine", "gaussian_kernel_1d", "gaussian_smooth",
           "rot90_index_map", "sample_grid", "sampling_grid", "scale_about_mean", "simulate_low_resolution", "warp_array"]
