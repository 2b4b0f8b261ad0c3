"""Evaluate a network on cached cases: sliding window, argmax, optional
post-processing, per-class Dice / HD95 / ASSD, measured in the ORIGINAL space
of each case (the prediction put back on the label file's grid, metrics against
that file, at its spacing: what a clinician measures and what a bundle's output
is compared with) or, for cases whose label file is unknown, in the
preprocessed space."""
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
    return predict_base_and_final(net, image, roi, device, cfg, amp, overlap, sw_batch_size, progress)[1]


def _is_crf(step) -> bool:
    return (step if isinstance(step, str) else step.get("name")) == "crf"


def predict_base_and_final(net: torch.nn.Module, image: np.ndarray, roi: Sequence[int], device: torch.device,
                           cfg: Mapping | None, amp: str | None = None, overlap: float = 0.5,
                           sw_batch_size: int = 4, progress=None) -> tuple[np.ndarray, np.ndarray]:
    """``(base, final)`` uint8 label maps: ``base`` before the chain's label steps (argmax,
    after a "crf" step if the chain starts with one), ``final`` after the whole chain."""
    if not has_chain(cfg):
        lab = predict_labels(net, image, roi, device, amp, overlap, sw_batch_size, progress=progress)
        return lab, lab
    from ..postprocess.chain import build_postprocess, postprocess_probs
    logits = _logits(net, image, roi, device, amp, overlap, sw_batch_size, progress=progress)
    probs = torch.softmax(logits, 0).numpy()
    ch = np.asarray(image[0], dtype=np.float32)
    image01 = (ch - ch.min()) / max(float(np.ptp(ch)), 1e-6)
    base = postprocess_probs(probs, image01[None], {**cfg, "chain": [s for s in cfg["chain"] if _is_crf(s)]})
    return base, np.asarray(build_postprocess(cfg).apply_labels(base), dtype=np.uint8)


def original_label(case, num_classes: int):
    """The case's label file as loaded (its own grid), or None when the cache entry
    does not know it; an unreadable label is one ImagingError naming the file."""
    src = getattr(case, "label_source", None)
    if src is None:
        return None
    from ..data.checks import check_label
    from ..io import load_volume
    lab = load_volume(src)
    return lab.replace(check_label(lab, num_classes, require_foreground=False).astype(np.uint8))


def _dice(pred: np.ndarray, gt: np.ndarray, num_classes: int) -> dict:
    from ..metrics.dice import dice_from_counts
    out = {}
    for c in range(1, num_classes):
        p, g = pred == c, gt == c
        out[str(c)] = float(dice_from_counts(np.count_nonzero(p & g), np.count_nonzero(p), np.count_nonzero(g)))
    return out


def _largest(base: np.ndarray, num_classes: int, connectivity):
    """Each class's largest component kept (the candidate), or None where fedvox's
    compiled ops cannot be built here: an evaluation without a chain must not need a
    compiler, so the candidate is then simply not measured."""
    from ..postprocess.build import OpsBuildError
    from ..postprocess.components import keep_largest
    try:
        return keep_largest(base, classes=list(range(1, num_classes)), connectivity=connectivity)
    except OpsBuildError:
        return None


def evaluate_cases(net: torch.nn.Module, cases, roi: Sequence[int], num_classes: int,
                   device: torch.device, amp: str | None = None, overlap: float = 0.5,
                   sw_batch_size: int = 4, postprocess: Callable | Mapping | None = None,
                   on_prediction: Callable | None = None, space: str = "original") -> list[dict]:
    """Per-case metrics for cached cases (``CachedCase``).

    ``space``: "original" measures on each case's label file (a case whose cache
    entry does not name it is measured in the preprocessed space, and its row says
    so), "preprocessed" on the cached grid. Every row carries ``space``, the
    preprocessed-space Dice (``dice_preprocessed``) and the largest-component
    candidates (``candidates``: per-class Dice before the chain's label steps and
    with each class's largest component kept; see choose_postprocess).
    ``postprocess``: a label-map callable, or a chain config (an empty chain is plain
    argmax). ``on_prediction(case, item, pred)``: sees each scored prediction, on the
    preprocessed grid (the report keeps some for overlays)."""
    if space not in ("original", "preprocessed"):
        raise ValueError(f"space must be 'original' or 'preprocessed', got {space!r}")
    from .invert import labels_to_grid
    conn = postprocess.get("connectivity") if isinstance(postprocess, Mapping) else None
    results = []
    for cc in cases:
        item = cc.load(mmap=True)
        base, pred = predict_base_and_final(net, item["image"].array, roi, device,
                                            postprocess if has_chain(postprocess) else None, amp, overlap,
                                            sw_batch_size)
        if callable(postprocess):
            pred = postprocess(pred)
        pre_pred, gt = pred, np.asarray(item["label"].array[0])
        row = {"case_id": cc.case_id, "dice_preprocessed": _dice(pred, gt, num_classes)}
        lcc = _largest(base, num_classes, conn)
        lab = original_label(cc, num_classes) if space == "original" else None
        if lab is not None:
            aff, shape = item["image"].affine, lab.spatial_shape
            gt, spacing = lab.array[0], lab.spacing
            same = base is pred  # no label steps: one inversion serves both
            pred = labels_to_grid(pred, aff, lab.affine, shape)
            base = pred if same else labels_to_grid(base, aff, lab.affine, shape)
            lcc = None if lcc is None else labels_to_grid(lcc, aff, lab.affine, shape)
            row["space"] = "original"
        else:
            spacing = item["image"].spacing
            row["space"] = "preprocessed"
        m = case_metrics(pred, gt, num_classes, spacing=tuple(float(s) for s in spacing))
        row.update(m)
        if lcc is not None:
            row["candidates"] = {"raw": _dice(base, gt, num_classes), "largest": _dice(lcc, gt, num_classes)}
        results.append(row)
        if on_prediction is not None:
            on_prediction(cc, item, pre_pred)
    return results
