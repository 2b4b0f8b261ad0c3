"""Evaluate a network on preprocessed (cached) cases: sliding window, argmax,
optional post-processing, per-class Dice / HD95 / ASSD."""
from __future__ import annotations

from typing import Callable, Sequence

import numpy as np
import torch

from ..metrics import case_metrics
from .sliding_window import sliding_window_inference


def predict_labels(net: torch.nn.Module, image: np.ndarray, roi: Sequence[int], device: torch.device,
                   amp: str | None = None, overlap: float = 0.5, sw_batch_size: int = 4,
                   flip_tta: bool = False, out_device: str = "cpu") -> np.ndarray:
    """``image`` (C, X, Y, Z) -> uint8 label map (X, Y, Z)."""
    x = torch.from_numpy(np.array(image, dtype=np.float32))[None].to(device)  # copy: cache arrays are read-only memmaps
    net.eval()
    logits = sliding_window_inference(x, roi, net, sw_batch_size=sw_batch_size, overlap=overlap,
                                      mode="gaussian", amp=amp, flip_tta=flip_tta, out_device=out_device)
    return logits[0].argmax(0).to(torch.uint8).numpy()


def evaluate_cases(net: torch.nn.Module, cases, roi: Sequence[int], num_classes: int,
                   device: torch.device, amp: str | None = None, overlap: float = 0.5,
                   sw_batch_size: int = 4, postprocess: Callable | None = None) -> list[dict]:
    """Per-case metrics for cached cases (``CachedCase``), in the preprocessed space."""
    results = []
    for cc in cases:
        item = cc.load(mmap=True)
        pred = predict_labels(net, item["image"].array, roi, device, amp, overlap, sw_batch_size)
        if postprocess is not None:
            pred = postprocess(pred)
        gt = np.asarray(item["label"].array[0])
        m = case_metrics(pred, gt, num_classes, spacing=tuple(float(s) for s in item["image"].spacing))
        results.append({"case_id": cc.case_id, **m})
    return results
