"""labels_to_grid: a crop's prediction back on the input grid, without smearing a
label that touches the crop's edge (the resampler pads with the border value)."""
from __future__ import annotations

import numpy as np

from imaging_core.inference.invert import labels_to_grid


def test_crop_edge_label_is_not_smeared_and_lands_where_it_was():
    full_aff = np.diag([-2.0, -2.0, 3.0, 1.0])  # an LPS input grid, 20 x 18 x 10
    crop = np.zeros((6, 5, 4), np.uint8)
    crop[:, 2, 1] = 1  # a label running across the whole crop, touching its edges
    crop[5, 4, 3] = 2
    start = np.array([7, 6, 3])
    shift = np.eye(4)
    shift[:3, 3] = start
    out = labels_to_grid(crop, full_aff @ shift, full_aff, (20, 18, 10))
    want = np.zeros((20, 18, 10), np.uint8)
    want[7:13, 6:11, 3:7] = crop
    np.testing.assert_array_equal(out, want)  # same grid spacing: an exact paste, nothing outside
    # onto a finer grid of the same field of view: the label stays within the crop's extent
    fine = full_aff.copy()
    fine[:3, :3] /= 2
    fine[:3, 3] -= np.diag(full_aff)[:3] / 4  # voxel centres of the half-size grid
    o2 = labels_to_grid(crop, full_aff @ shift, fine, (40, 36, 20))
    idx = np.argwhere(o2 == 1)
    assert idx[:, 0].min() >= 2 * 7 - 1 and idx[:, 0].max() <= 2 * 13
    assert (o2 == 2).sum() == 8  # one coarse voxel = 2 x 2 x 2 fine ones
