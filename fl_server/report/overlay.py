"""Overlay PNGs: image + ground truth and image + prediction on the three
orthogonal slices through the structure, the way a radiologist reads them.

Given the image's affine, the voxels are shown on their own grid (no
resampling): the axes are only permuted/flipped to the closest RAS order so
that every view can carry anatomical edge labels. Axial and coronal views
follow the radiological convention (patient's right on the viewer's left);
the sagittal view has anterior on the left. Pixels are drawn at their size in
mm, so a scale bar in mm is exact.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

import numpy as np
from matplotlib.figure import Figure

# label colours for overlays: label 1, 2, ... (cycled)
LABEL_COLORS = [(0.95, 0.15, 0.15), (1.0, 0.85, 0.0), (0.1, 0.75, 1.0), (0.3, 0.95, 0.3),
                (0.9, 0.3, 0.9), (1.0, 0.55, 0.1)]
_SCALE_STEPS_MM = (1, 2, 5, 10, 20, 50, 100, 200)
# per view: (name, kept-axes, left, right, top, bottom) in a RAS-ordered array
VIEWS = (("axial", (0, 1), "R", "L", "A", "P"),
         ("coronal", (0, 2), "R", "L", "S", "I"),
         ("sagittal", (1, 2), "A", "P", "S", "I"))


def _label_rgba(lab: np.ndarray, alpha: float) -> np.ndarray:
    rgba = np.zeros(lab.shape + (4,), dtype=np.float32)
    for v in np.unique(lab):
        if v == 0:
            continue
        rgba[lab == v] = (*LABEL_COLORS[(int(v) - 1) % len(LABEL_COLORS)], alpha)
    return rgba


def to_ras(arrays: Sequence[np.ndarray], affine: np.ndarray) -> tuple[list[np.ndarray], tuple[float, ...], str]:
    """The arrays with their axes permuted/flipped to the closest RAS order (the voxels
    themselves untouched), the voxel size per new axis (mm) and the original axis codes."""
    from nibabel.orientations import aff2axcodes, apply_orientation, axcodes2ornt, io_orientation, ornt_transform
    affine = np.asarray(affine, dtype=np.float64)
    ornt = io_orientation(affine)
    xform = ornt_transform(ornt, axcodes2ornt("RAS"))
    zooms = np.sqrt((affine[:3, :3] ** 2).sum(axis=0))
    # ornt[i] = (new axis, flip) of old axis i: the new axis j holds old axis i's spacing
    spacing = [0.0, 0.0, 0.0]
    for i, (j, _) in enumerate(ornt):
        spacing[int(j)] = float(zooms[i])
    return [apply_orientation(np.asarray(a), xform) for a in arrays], tuple(spacing), "".join(aff2axcodes(affine))


def representative_slices(gt: np.ndarray, pred: np.ndarray | None = None) -> tuple[int, int, int]:
    """Per axis, the slice with the most ground-truth foreground (prediction if the gt is
    empty, the centre if both are)."""
    ref = gt if np.any(gt) else (pred if pred is not None and np.any(pred) else None)
    if ref is None:
        return tuple(s // 2 for s in gt.shape)
    fgm = ref > 0
    return tuple(int(np.argmax(fgm.sum(axis=tuple(a for a in range(3) if a != ax)))) for ax in range(3))


def scale_bar_mm(width_mm: float) -> int:
    """A round bar length near a fifth of the view's width."""
    target = width_mm / 5
    return max((s for s in _SCALE_STEPS_MM if s <= max(target, 1)), default=1)


def _view2d(a: np.ndarray, keep: tuple[int, int], index: int) -> np.ndarray:
    """The slice through ``index`` on the dropped axis, as (rows, cols) ready for
    ``imshow(origin="lower")``: rows = second kept axis, columns flipped so the
    first kept axis increases to the viewer's left (radiological convention)."""
    drop = ({0, 1, 2} - set(keep)).pop()
    s = np.take(a, index, axis=drop)
    return s.T[:, ::-1]


def _edge_labels(ax, left, right, top, bottom) -> None:
    box = dict(boxstyle="round,pad=0.15", fc="black", ec="none", alpha=0.55)
    kw = dict(transform=ax.transAxes, color="white", fontsize=10, fontweight="bold", bbox=box)
    ax.text(0.015, 0.5, left, ha="left", va="center", **kw)
    ax.text(0.985, 0.5, right, ha="right", va="center", **kw)
    ax.text(0.5, 0.985, top, ha="center", va="top", **kw)
    ax.text(0.5, 0.015, bottom, ha="center", va="bottom", **kw)


def _scale_bar(ax, width_mm: float) -> None:
    from mpl_toolkits.axes_grid1.anchored_artists import AnchoredSizeBar
    n = scale_bar_mm(width_mm)
    bar = AnchoredSizeBar(ax.transData, n, f"{n} mm", "lower right", pad=0.25, color="white", frameon=True,
                          size_vertical=max(width_mm / 150, 0.3), fontproperties={"size": 8}, borderpad=0.5, sep=2)
    bar.patch.set(facecolor="black", alpha=0.55, edgecolor="none")  # readable on bright tissue too
    ax.add_artist(bar)


def overlay_png(image: np.ndarray, gt: np.ndarray, pred: np.ndarray, out_path: str | os.PathLike,
                spacing: Sequence[float] = (1.0, 1.0, 1.0), labels: dict | None = None,
                title: str | None = None, slices: Sequence[int] | None = None, alpha: float = 0.45,
                affine: np.ndarray | None = None) -> Path:
    """Image + ground truth (top row) and image + prediction (bottom row) on axial,
    coronal and sagittal slices through the structure, with orientation labels and a
    mm scale bar. With ``affine`` (the image's voxel-to-RAS matrix, e.g. its original
    grid) the arrays may be in any orientation; without it they are taken as RAS-ordered
    with voxel size ``spacing``. A leading channel axis of 1 is dropped. ``slices`` index
    the RAS-ordered arrays."""
    img, g, p = (np.asarray(a) for a in (image, gt, pred))
    img = img[0] if img.ndim == 4 else img
    g = g[0] if g.ndim == 4 else g
    p = p[0] if p.ndim == 4 else p
    if not (img.shape == g.shape == p.shape) or img.ndim != 3:
        raise ValueError(f"image, gt and pred must be 3D of one shape, got {img.shape}, {g.shape}, {p.shape}")
    grid = f"{'x'.join(map(str, img.shape))} voxels"
    if affine is not None:
        (img, g, p), spacing, codes = to_ras((img, g, p), affine)
        grid += f", stored {codes}"
    sp = tuple(float(s) for s in spacing)
    grid += " at " + " x ".join(f"{s:.3g}" for s in sp) + " mm"
    idx = slices if slices is not None else representative_slices(g, p)
    lo, hi = np.percentile(img, [1, 99]) if img.size else (0, 1)
    hi = hi if hi > lo else lo + 1
    fig = Figure(figsize=(11, 7.8), constrained_layout=True)
    axes = fig.subplots(2, 3)
    for col, (name, keep, left, right, top, bottom) in enumerate(VIEWS):
        drop = ({0, 1, 2} - set(keep)).pop()
        extent = (0, img.shape[keep[0]] * sp[keep[0]], 0, img.shape[keep[1]] * sp[keep[1]])
        for row, (lab, what) in enumerate(((g, "ground truth"), (p, "prediction"))):
            ax = axes[row, col]
            ax.imshow(_view2d(img, keep, idx[drop]), cmap="gray", vmin=lo, vmax=hi, origin="lower",
                      extent=extent, interpolation="nearest")
            ax.imshow(_label_rgba(_view2d(lab, keep, idx[drop]), alpha), origin="lower", extent=extent,
                      interpolation="nearest")
            gslice = _view2d(g, keep, idx[drop])
            if row == 1 and np.any(gslice):  # where the prediction should be
                ax.contour(gslice > 0, levels=[0.5], colors="cyan", linewidths=0.9, origin="lower",
                           extent=extent)
            ax.set_title(f"{what}: {name}, slice {idx[drop] + 1} of {img.shape[drop]}", fontsize=9)
            ax.set_xticks([])
            ax.set_yticks([])
            _edge_labels(ax, left, right, top, bottom)
            _scale_bar(ax, extent[1])
    present = sorted((set(np.unique(g).tolist()) | set(np.unique(p).tolist())) - {0})
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch
    names = labels or {}
    handles = [Patch(color=LABEL_COLORS[(int(v) - 1) % len(LABEL_COLORS)],
                     label=str(names.get(str(int(v)), names.get(int(v), f"label {int(v)}")))) for v in present]
    handles.append(Line2D([], [], color="cyan", lw=1.2, label="ground-truth outline (bottom row)"))
    fig.legend(handles=handles, loc="outside lower center", ncol=len(handles), fontsize=9)
    fig.suptitle((title + "\n" if title else "") + f"image grid: {grid}; patient's right on the viewer's left",
                 fontsize=10)
    out = Path(out_path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=90)
    return out
