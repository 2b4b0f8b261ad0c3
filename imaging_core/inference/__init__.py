"""Sliding-window inference (and whole-volume prediction back in the input's space)."""
from .sliding_window import importance_map, sliding_window_inference, window_starts

__all__ = ["sliding_window_inference", "importance_map", "window_starts"]
