"""Evaluate a network on preprocessed (cached) cases: sliding window, argmax,
optional post-processing, per-class Dice / HD95 / ASSD."""
from __future__ import annotations

from typing import Callable, Mapping, Sequence

import numpy as np
import torch

from ..metrics import case_metrics
from .sliding_window import sliding_window_inference


def _logits(net: torch.nn.Module, image: np.ndarray, roi: Sequence[int], device: torch.device,
            amp: str | None, overlap: float, sw_batch_size: int, flip_tta: bool = False,
            out_device: str = "cpu", progress=None) -> torch.Tensor:
    """Sliding-window logits (K, X, Y, Z) of one (C, X, Y, Z) image."""
    x = torch.from_numpy(np.array(image, dtype=np.float32))[None].to(device)  # copy: cache arrays are read-only memmaps
    net.eval()
    return sliding_window_inference(x, roi, net, sw_batch_size=sw_batch_size, overlap=overlap,
                                    mode="gaussian", amp=amp, flip_tta=flip_tta, out_device=out_device,
                                    progress=progress)[0]


def predict_labels(net: torch.nn.Module, image: np.ndarray, roi: Sequence[int], device: torch.device,
                   amp: str | None = None, overlap: float = 0.5, sw_batch_size: int = 4,
                   flip_tta: bool = False, out_device: str = "cpu", progress=None) -> np.ndarray:
    """``image`` (C, X, Y, Z) -> uint8 label map (X, Y, Z)."""
    logits = _logits(net, image, roi, device, amp, overlap, sw_batch_size, flip_tta, out_device, progress)
    return logits.argmax(0).to(torch.uint8).numpy()


def has_chain(postprocess) -> bool:
    """True for a post-processing chain config with at least one step."""
    return isinstance(postprocess, Mapping) and bool(postprocess.get("chain"))


def predict_postprocessed(net: torch.nn.Module, image: np.ndarray, roi: Sequence[int], device: torch.device,
                          cfg: Mapping, amp: str | None = None, overlap: float = 0.5,
                          sw_batch_size: int = 4, progress=None) -> np.ndarray:
    """``image`` (C, X, Y, Z) -> uint8 labels after the post-processing chain ``cfg``
    (imaging_core.postprocess.chain): a "crf" step refines the softmax
    probabilities against the first image channel scaled to [0, 1] (the scale
    its colour sigma assumes), then argmax and the label steps."""
    from ..postprocess.chain import postprocess_probs
    logits = _logits(net, image, roi, device, amp, overlap, sw_batch_size, progress=progress)
    probs = torch.softmax(logits, 0).numpy()
    ch = np.asarray(image[0], dtype=np.float32)
    image01 = (ch - ch.min()) / max(float(np.ptp(ch)), 1e-6)
    return postprocess_probs(probs, image01[None], cfg)


def evaluate_cases(net: torch.nn.Module, cases, roi: Sequence[int], num_classes: int,
                   device: torch.device, amp: str | None = None, overlap: float = 0.5,
                   sw_batch_size: int = 4, postprocess: Callable | Mapping | None = None,
                   on_prediction: Callable | None = None) -> list[dict]:
    """Per-case metrics for cached cases (``CachedCase``), in the preprocessed space.

    ``postprocess``: a label-map callable, or a chain config for
    predict_postprocessed (an empty chain is plain argmax). ``on_prediction(case,
    item, pred)``: sees each scored prediction (the report keeps some for overlays)."""
    results = []
    for cc in cases:
        item = cc.load(mmap=True)
        if has_chain(postprocess):
            pred = predict_postprocessed(net, item["image"].array, roi, device, postprocess, amp, overlap,
                                         sw_batch_size)
        else:
            pred = predict_labels(net, item["image"].array, roi, device, amp, overlap, sw_batch_size)
            if callable(postprocess):
                pred = postprocess(pred)
        gt = np.asarray(item["label"].array[0])
        m = case_metrics(pred, gt, num_classes, spacing=tuple(float(s) for s in item["image"].spacing))
        results.append({"case_id": cc.case_id, **m})
        if on_prediction is not None:
            on_prediction(cc, item, pred)
    return results
