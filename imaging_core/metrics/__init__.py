"""Segmentation metrics with MONAI's semantics: Dice, Hausdorff (HD / HD95), ASSD."""
from .dice import dice_from_counts, dice_labels, dice_onehot, label_counts
from .summary import case_metrics, flat_scores, metrics_for_files, stats, summarize, write_summary
from .surface import (average_surface_distance, compute_average_surface_distance,
                      compute_hausdorff_distance, get_distance_transform, hausdorff_distance,
                      mask_edges, scipy_distance_transform, set_distance_method,
                      set_distance_transform, surface_distances, surface_metrics)

__all__ = [
    "dice_from_counts", "dice_labels", "dice_onehot", "label_counts",
    "case_metrics", "metrics_for_files", "stats", "summarize", "write_summary",
    "average_surface_distance", "compute_average_surface_distance", "compute_hausdorff_distance",
    "get_distance_transform", "hausdorff_distance", "mask_edges", "scipy_distance_transform",
    "set_distance_method", "set_distance_transform", "surface_distances", "surface_metrics",
]
