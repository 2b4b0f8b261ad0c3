"""Overlay PNGs."""
from __future__ import annotations


import numpy as np
import pytest



def test_overlay_png(tmp_path):
    from fl_server.report import overlay_png, representative_slices
    gt = np.zeros((30, 30, 10), np.uint8)
    gt[5:12, 20:28, 6:9] = 1
    assert representative_slices(gt) == (5, 20, 6)
    p = overlay_png(np.random.default_rng(0).normal(size=gt.shape), gt, gt, tmp_path / "o.png")
    assert p.is_file() and p.stat().st_size > 10_000
    with pytest.raises(ValueError):
        overlay_png(np.zeros((3, 3, 3)), gt, gt, tmp_path / "bad.png")


