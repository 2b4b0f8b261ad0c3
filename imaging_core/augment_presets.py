"""The [augment] presets (imaging_core.config.AugmentTable fills what a file leaves out
from these); pure data, so the schema module stays about the schema."""
from __future__ import annotations

from typing import Any

# [augment] defaults per preset. "nnunet": nnU-Net v2's nnUNetTrainer training
# augmentation (probabilities are per patch; nnU-Net's p_per_channel=0.5 on blur and
# low resolution is folded in). It ships elastic deformation off; it is on here at
# nnU-Net v1's probability because site shift includes anatomy and pose. "light":
# fedvox's earlier, milder pipeline (flips, quarter turns, small warp, mild intensity).
AUGMENT_PRESETS: dict[str, dict[str, Any]] = {
    "nnunet": dict(flip_prob=0.5, rot90_prob=0.0,
                   rotate_prob=0.2, rotate_range=0.5236, scale_prob=0.2, scale_range=[0.7, 1.4],
                   elastic_prob=0.2, elastic_spacing=[12.0, 16.0], elastic_magnitude=[0.0, 3.0],
                   noise_prob=0.1, noise_std=0.1, blur_prob=0.1, blur_sigma=[0.5, 1.0],
                   brightness_prob=0.15, brightness_range=[0.75, 1.25], shift_prob=0.0, shift_range=0.1,
                   contrast_prob=0.15, contrast_range=[0.75, 1.25], lowres_prob=0.125, lowres_zoom=[0.5, 1.0],
                   gamma_prob=0.3, gamma_invert_prob=0.1, gamma_range=[0.7, 1.5], gamma_retain_stats=True),
    "light": dict(flip_prob=0.5, rot90_prob=0.25,
                  rotate_prob=0.2, rotate_range=0.2, scale_prob=0.2, scale_range=[0.9, 1.1],
                  elastic_prob=0.0, elastic_spacing=[12.0, 16.0], elastic_magnitude=[0.0, 3.0],
                  noise_prob=0.15, noise_std=0.05, blur_prob=0.0, blur_sigma=[0.5, 1.0],
                  brightness_prob=0.3, brightness_range=[0.9, 1.1], shift_prob=0.3, shift_range=0.1,
                  contrast_prob=0.0, contrast_range=[0.75, 1.25], lowres_prob=0.0, lowres_zoom=[0.5, 1.0],
                  gamma_prob=0.3, gamma_invert_prob=0.0, gamma_range=[0.8, 1.25], gamma_retain_stats=False),
}
# keys of older files, each setting several probabilities the file does not set itself
AUGMENT_ALIASES = {"affine_prob": ("rotate_prob", "scale_prob"),
                   "intensity_prob": ("brightness_prob", "shift_prob", "gamma_prob")}
