"""Overlay PNGs: image + ground truth and image + prediction on the three
orthogonal slices through the structure."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

import numpy as np
from matplotlib.figure import Figure

# label colours for overlays: label 1, 2, ... (cycled)
LABEL_COLORS = [(0.95, 0.15, 0.15), (1.0, 0.85, 0.0), (0.1, 0.75, 1.0), (0.3, 0.95, 0.3),
                (0.9, 0.3, 0.9), (1.0, 0.55, 0.1)]


def _label_rgba(lab: np.ndarray, alpha: float) -> np.ndarray:
    rgba = np.zeros(lab.shape + (4,), dtype=np.float32)
    for v in np.unique(lab):
        if v == 0:
            continue
        rgba[lab == v] = (*LABEL_COLORS[(int(v) - 1) % len(LABEL_COLORS)], alpha)
    return rgba


def representative_slices(gt: np.ndarray, pred: np.ndarray | None = None) -> tuple[int, int, int]:
    """Per axis, the slice with the most ground-truth foreground (prediction if the gt is
    empty, the centre if both are)."""
    ref = gt if np.any(gt) else (pred if pred is not None and np.any(pred) else None)
    if ref is None:
        return tuple(s // 2 for s in gt.shape)
    fgm = ref > 0
    return tuple(int(np.argmax(fgm.sum(axis=tuple(a for a in range(3) if a != ax)))) for ax in range(3))


def overlay_png(image: np.ndarray, gt: np.ndarray, pred: np.ndarray, out_path: str | os.PathLike,
                spacing: Sequence[float] = (1.0, 1.0, 1.0), labels: dict | None = None,
                title: str | None = None, slices: Sequence[int] | None = None, alpha: float = 0.45) -> Path:
    """Image + ground truth (top row) and image + prediction (bottom row) on axial,
    coronal and sagittal slices through the structure. Arrays are (X, Y, Z) in RAS
    order (a leading channel axis of 1 is dropped); ``spacing`` sets the aspect."""
    img, g, p = (np.asarray(a) for a in (image, gt, pred))
    img = img[0] if img.ndim == 4 else img
    g = g[0] if g.ndim == 4 else g
    p = p[0] if p.ndim == 4 else p
    if not (img.shape == g.shape == p.shape) or img.ndim != 3:
        raise ValueError(f"image, gt and pred must be 3D of one shape, got {img.shape}, {g.shape}, {p.shape}")
    sx, sy, sz = (float(s) for s in spacing)
    ix, iy, iz = slices if slices is not None else representative_slices(g, p)
    lo, hi = np.percentile(img, [1, 99]) if img.size else (0, 1)
    hi = hi if hi > lo else lo + 1
    # (extract 2D, aspect = row spacing / column spacing); shown with rows = 2nd axis, origin lower
    views = [("axial z=%d" % iz, lambda a: a[:, :, iz], sy / sx),
             ("coronal y=%d" % iy, lambda a: a[:, iy, :], sz / sx),
             ("sagittal x=%d" % ix, lambda a: a[ix, :, :], sz / sy)]
    fig = Figure(figsize=(11, 7.4), constrained_layout=True)
    axes = fig.subplots(2, 3)
    for col, (name, take, aspect) in enumerate(views):
        for row, (lab, what) in enumerate(((g, "ground truth"), (p, "prediction"))):
            ax = axes[row, col]
            ax.imshow(take(img).T, cmap="gray", vmin=lo, vmax=hi, origin="lower", aspect=aspect,
                      interpolation="nearest")
            ax.imshow(_label_rgba(take(lab).T, alpha), origin="lower", aspect=aspect, interpolation="nearest")
            if row == 1 and np.any(take(g)):  # where the prediction should be
                ax.contour(take(g).T > 0, levels=[0.5], colors="cyan", linewidths=0.9, origin="lower")
            ax.set_title(f"{what}: {name}" + (" (cyan: ground truth outline)" if row == 1 else ""),
                         fontsize=9)
            ax.set_xticks([])
            ax.set_yticks([])
    present = sorted((set(np.unique(g).tolist()) | set(np.unique(p).tolist())) - {0})
    if present:
        from matplotlib.patches import Patch
        names = labels or {}
        fig.legend(handles=[Patch(color=LABEL_COLORS[(int(v) - 1) % len(LABEL_COLORS)],
                                  label=str(names.get(str(int(v)), names.get(int(v), f"label {int(v)}"))))
                            for v in present], loc="outside lower center", ncol=len(present), fontsize=9)
    if title:
        fig.suptitle(title)
    out = Path(out_path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=90)
    return out
