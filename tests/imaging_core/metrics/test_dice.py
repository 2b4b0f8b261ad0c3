"""Dice against MONAI 1.6.1's DiceMetric and the reference values in the notes."""
import math
import warnings

import numpy as np
import pytest
import torch

from imaging_core.metrics import dice_from_counts, dice_labels, dice_onehot, label_counts
from imaging_core.metrics import dice as D

monai_metrics = pytest.importorskip("monai.metrics")


def sphere(size, centre, r):
    grid = np.ogrid[tuple(slice(0, s) for s in (size,) * 3)]
    return sum((g - c) ** 2 for g, c in zip(grid, centre)) <= r * r


def random_labels(rng, shape, n_classes, n_blobs):
    lab = np.zeros(shape, np.uint8)
    grid = np.ogrid[tuple(slice(0, s) for s in shape)]
    for _ in range(n_blobs):
        c = rng.uniform(0, shape)
        r = rng.uniform(1.0, max(shape) / 3, size=len(shape))
        lab[sum(((g - ci) / ri) ** 2 for g, ci, ri in zip(grid, c, r)) <= 1] = rng.integers(1, n_classes)
    return lab


def onehot(lab, n_classes):
    return torch.from_numpy(np.stack([lab == c for c in range(n_classes)])[None].astype(np.float32))


def monai_dice(y_pred, y, **kw):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return monai_metrics.DiceMetric(**kw)(y_pred, y).numpy().astype(np.float64)


def test_reference_values():
    gt = sphere(128, (64, 64, 64), 20)
    a = sphere(128, (70, 64, 64), 20)
    b = sphere(128, (64, 64, 64), 25)
    d = dice_onehot(np.stack([~a, a])[None], np.stack([~gt, gt])[None])
    assert d[0, 1] == pytest.approx(0.777072548866272, abs=1e-6)
    assert d[0, 0] == pytest.approx(0.996392011642456, abs=1e-6)
    assert dice_labels(b.astype(np.uint8), gt.astype(np.uint8), 2, include_background=False)[0] == \
        pytest.approx(0.6770381331443787, abs=1e-6)


@pytest.mark.parametrize("seed", range(50))
def test_random_cases_match_monai(seed):
    rng = np.random.default_rng(seed)
    shape = tuple(int(s) for s in rng.integers(6, 40, size=3))
    k = int(rng.integers(2, 5))
    gt = random_labels(rng, shape, k, int(rng.integers(0, 5)))
    pred = random_labels(rng, shape, k, int(rng.integers(0, 5))) if rng.random() < 0.3 else \
        np.roll(gt, int(rng.integers(-3, 4)), axis=int(rng.integers(0, 3)))
    inc, ign = bool(rng.integers(0, 2)), bool(rng.integers(0, 2))
    ref = monai_dice(onehot(pred, k), onehot(gt, k), include_background=inc, ignore_empty=ign)
    np.testing.assert_allclose(dice_onehot(onehot(pred, k), onehot(gt, k), inc, ign), ref, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(dice_labels(pred, gt, k, inc, ign), ref[0], rtol=1e-6, atol=1e-7)
    # MONAI's label-map input form (B, 1, ...) with num_classes
    ref_lab = monai_dice(torch.from_numpy(pred[None, None].astype(np.float32)),
                         torch.from_numpy(gt[None, None].astype(np.float32)),
                         include_background=inc, ignore_empty=ign, num_classes=k)
    np.testing.assert_allclose(dice_labels(pred, gt, k, inc, ign), ref_lab[0], rtol=1e-6, atol=1e-7)


EMPTY = {"pred empty": (False, True), "gt empty": (True, False), "both empty": (False, False)}
EXPECTED = {  # (ignore_empty=True, ignore_empty=False), as in the notes
    "pred empty": (0.0, 0.0), "gt empty": (math.nan, 0.0), "both empty": (math.nan, 1.0)}


@pytest.mark.parametrize("which", list(EMPTY))
@pytest.mark.parametrize("ignore_empty", [True, False])
def test_empty_masks(which, ignore_empty):
    blob = sphere(12, (6, 6, 6), 3)
    has_p, has_g = EMPTY[which]
    p = (blob if has_p else np.zeros_like(blob)).astype(np.uint8)
    g = (blob if has_g else np.zeros_like(blob)).astype(np.uint8)
    ref = monai_dice(onehot(p, 2), onehot(g, 2), include_background=False, ignore_empty=ignore_empty)
    want = EXPECTED[which][0 if ignore_empty else 1]
    for ours in (dice_onehot(onehot(p, 2), onehot(g, 2), False, ignore_empty)[0, 0],
                 dice_labels(p, g, 2, False, ignore_empty)[0]):
        np.testing.assert_allclose(ours, ref[0, 0])
        np.testing.assert_allclose(ours, want)


def test_bincount_path_equals_loop_and_ignores_out_of_range(monkeypatch):
    rng = np.random.default_rng(3)
    pred = rng.integers(-2, 30, size=(17, 13, 11))
    gt = np.where(rng.random(pred.shape) < 0.7, pred, rng.integers(0, 30, size=pred.shape))
    for k in (5, 26):
        monkeypatch.setattr(D, "_BINCOUNT_FROM", 10**9)
        loop = label_counts(pred, gt, k)
        monkeypatch.setattr(D, "_BINCOUNT_FROM", 1)
        fast = label_counts(pred, gt, k)
        for a, b in zip(loop, fast):
            np.testing.assert_array_equal(a, b)
        want_inter = [np.count_nonzero((pred == c) & (gt == c)) for c in range(k)]
        np.testing.assert_array_equal(loop[0], want_inter)
    u = rng.integers(0, 40, size=(9, 9, 9)).astype(np.uint8)  # unsigned: no negative check needed
    np.testing.assert_array_equal(label_counts(u, u, 30)[1], [np.count_nonzero(u == c) for c in range(30)])


def test_counts_and_shapes():
    np.testing.assert_allclose(dice_from_counts([5, 0, 0], [10, 0, 4], [0 + 10, 0, 0]),
                               [0.5, math.nan, math.nan])
    np.testing.assert_allclose(dice_from_counts([5, 0, 0], [10, 0, 4], [10, 0, 0], ignore_empty=False),
                               [0.5, 1.0, 0.0])
    with pytest.raises(ValueError, match="shapes differ"):
        label_counts(np.zeros((3, 3)), np.zeros((3, 4)), 2)
    with pytest.raises(ValueError, match="same shapes"):
        dice_onehot(np.zeros((1, 2, 3, 3)), np.zeros((1, 2, 3, 4)))
    with pytest.raises(ValueError, match="batch, channel"):
        dice_onehot(np.zeros((3, 3)), np.zeros((3, 3)))
    # a single channel is the foreground, as in MONAI
    one = np.zeros((1, 1, 4, 4, 4))
    one[0, 0, :2] = 1
    assert dice_onehot(one, one, include_background=False).shape == (1, 1)
    np.testing.assert_allclose(dice_onehot(one, one, include_background=False),
                               monai_dice(torch.from_numpy(one), torch.from_numpy(one), include_background=False))
