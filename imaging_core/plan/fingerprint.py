"""A site's fingerprint: what the plan and the harmonisation check need to know
about its data, computed from the same files its pipeline reads (the datalist's
images and labels, through imaging_core.io).

Three parts, by what may leave the site and how:
- ``vector``: SUMMABLE, a fixed-length integer vector (layout.Layout): intensity
  histograms over the whole image and the foreground (label > 0) on fixed edges,
  spacing and extent counts on fixed grids, background and label counts. It
  leaves only inside a secure sum.
- ``categorical``: orientation codes and scanner (manufacturer|model|kernel)
  counts; a count below SMALL_COUNT is merged into "other", and an "other"
  still below it is left out, so no reported count is below SMALL_COUNT. Where
  the site keeps its case count, ``coarsen_categorical`` also rounds every count
  down to a multiple of SMALL_COUNT, so their sum does not give the count.
- ``summary``: the site's own row of the harmonisation table (medians and
  percentiles over its cases, its label set, skipped cases); it names only the
  orientations of at least SMALL_COUNT cases.
Per-case records stay at the site (``cases``).
"""
from __future__ import annotations

import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from nibabel import orientations as nio
from scipy import ndimage

from ..errors import ImagingError
from ..io import load_volume
from ..data.datalist import Case, load_datalist
from .layout import (EXTENT_BINS, EXTENT_STEP, FRACTION_BINS, MAX_LABEL, SPACING_BINS, SPACING_STEP,
                     Layout, grid_index, intensity_bins, intensity_counts)

SMALL_COUNT = 3            # no count (nor the name of a category) below this leaves
BACKGROUND_FRACTION = 0.05  # this share of voxels at the image minimum: a filled background
FINGERPRINT_VERSION = 1


@dataclass
class CaseFingerprint:
    case_id: str
    shape: list[int]            # RAS axis order (world x, y, z)
    spacing: list[float]        # mm, RAS axis order
    orientation: str            # the stored array's axis codes
    crop_shape: list[int]       # RAS order, after crop-to-nonzero
    min_value: float
    at_min_fraction: float      # voxels at the image minimum (background convention)
    percentiles_all: dict[str, float]
    percentiles_fg: dict[str, float]
    labels: dict[int, dict[str, int]]   # value -> {"voxels", "components"}
    scanner: str | None = None


@dataclass
class SiteFingerprint:
    site: str
    modality: str
    vector: np.ndarray
    categorical: dict[str, dict[str, int]]
    summary: dict[str, Any]
    cases: list[CaseFingerprint] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)

    def to_reply(self) -> dict:
        """What leaves the site: the vector (for the secure sum), the suppressed
        categorical counts and the summary row; never the per-case records."""
        return {"version": FINGERPRINT_VERSION, "site": self.site, "modality": self.modality,
                "vector": [int(v) for v in self.vector], "categorical": self.categorical,
                "summary": self.summary}


_PCTS = (0.5, 50.0, 99.5)


def _ras(values, affine) -> list:
    """Per-array-axis values reordered to world axes (x, y, z)."""
    ornt = nio.io_orientation(np.asarray(affine, dtype=np.float64))
    out = [0] * 3
    for i, (world, _) in enumerate(ornt):
        out[int(world)] = values[i]
    return out


def _scanner(path: Path) -> str | None:
    """manufacturer|model|kernel of a DICOM series (first readable header)."""
    if not (path.is_dir() or path.suffix.lower() in (".dcm", ".ima")):
        return None
    import pydicom
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    for f in files[:16]:
        try:
            ds = pydicom.dcmread(f, stop_before_pixels=True)
        except Exception:  # not a DICOM file (DICOMDIR, notes): try the next
            continue
        kernel = ds.get("ConvolutionKernel", "")
        kernel = "/".join(kernel) if isinstance(kernel, (list, pydicom.multival.MultiValue)) else str(kernel)
        return "|".join(str(x).strip() or "?" for x in
                        (ds.get("Manufacturer", ""), ds.get("ManufacturerModelName", ""), kernel))
    return None


def fingerprint_case(case: Case, modality: str, parts: dict[str, np.ndarray]) -> CaseFingerprint:
    """Fingerprint one case and add its counts into ``parts`` (layout sections)."""
    img = load_volume(case.image)
    if case.label is None:
        raise ImagingError(case.image, "case has no label: the fingerprint needs the foreground")
    lab = load_volume(case.label)
    if lab.spatial_shape != img.spatial_shape:
        raise ImagingError(case.label, f"label shape {lab.spatial_shape} differs from the image's "
                                       f"{img.spatial_shape}")
    x = img.array[0]
    seg = lab.array[0]
    if not np.issubdtype(seg.dtype, np.integer):
        seg = np.rint(seg).astype(np.int32)
    fg = seg > 0
    lo = float(x.min())
    at_min = float(np.count_nonzero(x == lo)) / x.size
    # percentiles from a strided subsample of large images (nnU-Net samples too):
    # exact enough for the summary row, and seconds instead of a minute at 512^2 x 300
    pa = np.percentile(_subsample(x), _PCTS)
    xf = x[fg]
    pf = np.percentile(_subsample(xf), _PCTS) if xf.size else np.full(3, np.nan)
    rel = intensity_bins(modality)[3]
    scale = float(pa[2]) if rel and pa[2] > 0 else 1.0
    parts["hist_all"] += intensity_counts(x, modality, scale)
    if xf.size:
        parts["hist_fg"] += intensity_counts(xf, modality, scale)

    spacing = _ras([float(s) for s in img.spacing], img.affine)
    shape = _ras(list(img.spatial_shape), img.affine)
    crop = _ras(_nonzero_extent(x), img.affine)
    for ax in range(3):
        parts["spacing"][ax * (SPACING_BINS + 1) + grid_index(spacing[ax], SPACING_STEP, SPACING_BINS)] += 1
        parts["extent"][ax * (EXTENT_BINS + 1)
                        + grid_index(crop[ax] * spacing[ax], EXTENT_STEP, EXTENT_BINS)] += 1
        parts["crop_voxels"][ax * (EXTENT_BINS + 1) + grid_index(crop[ax], 1, EXTENT_BINS)] += 1
    frac = float(np.prod(crop)) / float(np.prod(shape))
    parts["crop_frac"][grid_index(frac, 1.0 / (FRACTION_BINS - 1), FRACTION_BINS - 1)] += 1
    parts["min_frac"][grid_index(at_min, 1.0 / (FRACTION_BINS - 1), FRACTION_BINS - 1)] += 1
    parts["zero_min"] += int(lo == 0.0)

    labels: dict[int, dict[str, int]] = {}
    if seg.min() >= 0 and seg.max() <= 1 << 16:
        counts = np.bincount(seg.reshape(-1))
        values = np.flatnonzero(counts)
        voxels = counts[values]
        boxes = ndimage.find_objects(seg)   # each value's bounding box: label components inside it
    else:
        values, voxels = np.unique(seg, return_counts=True)
        boxes = []
    for v, n in zip(values.tolist(), voxels.tolist()):
        box = boxes[v - 1] if 0 < v <= len(boxes) and boxes[v - 1] is not None else slice(None)
        comps = 0 if v == 0 else int(ndimage.label(seg[box] == v, structure=np.ones((3, 3, 3)))[1])
        labels[int(v)] = {"voxels": int(n), "components": comps}
        slot = v if 0 <= v <= MAX_LABEL else MAX_LABEL + 1
        parts["label_voxels"][slot] += n
        parts["label_components"][slot] += comps
        parts["label_cases"][slot] += 1
    parts["cases"] += 1
    return CaseFingerprint(case.case_id, [int(s) for s in shape], [round(s, 6) for s in spacing],
                           "".join(img.orientation), [int(c) for c in crop], lo, at_min,
                           dict(zip(map(str, _PCTS), map(float, pa))),
                           dict(zip(map(str, _PCTS), map(float, pf))), labels, _scanner(case.image))


SUBSAMPLE = 2_000_000   # voxels the percentiles of one image are read from, at most


def _subsample(v: np.ndarray) -> np.ndarray:
    flat = v.reshape(-1)
    return flat[::max(1, flat.size // SUBSAMPLE)]


def _nonzero_extent(x: np.ndarray) -> list[int]:
    """Voxels per array axis of the bounding box of x != 0 (nnU-Net's crop_to_nonzero)."""
    nz = x != 0
    out = []
    for ax in range(3):
        hit = np.flatnonzero(nz.any(axis=tuple(a for a in range(3) if a != ax)))
        out.append(int(hit[-1] - hit[0] + 1) if hit.size else 0)
    return out


def background_convention(at_min_fraction: float, min_value: float) -> str:
    """'zero-filled' / 'constant-filled' (a share of voxels at the minimum) or 'noisy'."""
    if at_min_fraction < BACKGROUND_FRACTION:
        return "noisy"
    return "zero-filled" if min_value == 0.0 else "constant-filled"


def suppress(counts: Counter) -> dict[str, int]:
    """Category counts with those below SMALL_COUNT merged into 'other', and an
    'other' below SMALL_COUNT left out (it would count one or two cases)."""
    out: dict[str, int] = {}
    for k, n in sorted(counts.items()):
        key = k if n >= SMALL_COUNT else "other"
        out[key] = out.get(key, 0) + n
    return {k: n for k, n in out.items() if n >= SMALL_COUNT}


def coarsen_categorical(categorical: dict[str, dict[str, int]]) -> dict[str, dict[str, int]]:
    """Suppressed counts rounded down to multiples of SMALL_COUNT: for a site that
    keeps its case count, whose counts would otherwise sum to it (each is still
    >= SMALL_COUNT, and the true total may be up to 2 more per category and 'other')."""
    return {f: {k: int(n) // SMALL_COUNT * SMALL_COUNT for k, n in suppress(Counter(c)).items()}
            for f, c in categorical.items()}


def _summary(site: str, modality: str, label_names: dict[int, str], cases: list[CaseFingerprint],
             skipped: dict[str, str]) -> dict[str, Any]:
    def med(vals):
        vals = [v for v in vals if np.isfinite(v)]
        return float(np.median(vals)) if vals else None

    conv = Counter(background_convention(c.at_min_fraction, c.min_value) for c in cases)
    # names of one or two cases' orientations would single them out: as in the counts
    orient = Counter({k: n for k, n in suppress(Counter(c.orientation for c in cases)).items() if k != "other"})
    return {
        "site": site, "modality": modality, "cases": len(cases), "skipped": len(skipped),
        "spacing": [med([c.spacing[a] for c in cases]) for a in range(3)],
        "orientation": orient.most_common(1)[0][0] if orient else None,
        "orientations": sorted(orient),
        "background": conv.most_common(1)[0][0] if conv else None,
        "min_value": med([c.min_value for c in cases]),
        "whole": {q: med([c.percentiles_all[q] for c in cases]) for q in map(str, _PCTS)},
        "foreground": {q: med([c.percentiles_fg[q] for c in cases]) for q in map(str, _PCTS)},
        "label_values": sorted({v for c in cases for v in c.labels}),
        "label_names": {str(k): v for k, v in sorted(label_names.items())},
    }


def fingerprint_site(datalist_path: str | os.PathLike, modality: str, site: str | None = None,
                     progress=None) -> SiteFingerprint:
    """The fingerprint of every labelled case of a site's datalist (training and
    validation). A case that cannot be read is skipped and named in ``skipped``."""
    dl = load_datalist(datalist_path)
    site = site or dl.name
    layout = Layout(modality)
    parts = layout.zeros()
    cases, skipped = [], {}
    for case in dl.cases:
        if case.label is None:
            continue
        try:
            cases.append(fingerprint_case(case, modality, parts))
        except (ImagingError, ValueError, OSError) as e:
            skipped[case.case_id] = str(e)
            parts["skipped"] += 1
        if progress is not None:
            progress(case.case_id)
    categorical = {"orientation": suppress(Counter(c.orientation for c in cases)),
                   "scanner": suppress(Counter(c.scanner for c in cases if c.scanner))}
    return SiteFingerprint(site, modality, layout.pack(parts), categorical,
                           _summary(site, modality, dl.labels, cases, skipped), cases, skipped)
