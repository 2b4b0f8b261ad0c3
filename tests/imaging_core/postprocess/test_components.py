import numpy as np
import pytest
import scipy.ndimage as ndi
import torch

from imaging_core.postprocess import connected_components, keep_largest, remove_small

STRUCT = {6: 1, 18: 2, 26: 3}


def _volumes():
    rng = np.random.default_rng(0)
    for shape in [(17, 19, 23), (1, 40, 40), (30, 1, 70), (9, 8, 130), (1, 1, 1)]:
        for density in (0.05, 0.3, 0.5, 0.8):
            yield f"{shape}-{density}", rng.random(shape) < density
    blob = ndi.gaussian_filter(rng.standard_normal((40, 36, 50)), 1.5) > 0.1
    yield "blobs", blob
    yield "empty", np.zeros((5, 6, 7), bool)
    yield "full", np.ones((5, 6, 7), bool)


VOLUMES = list(_volumes())


@pytest.mark.parametrize("conn", [6, 18, 26])
@pytest.mark.parametrize("name, vol", VOLUMES, ids=[n for n, _ in VOLUMES])
def test_matches_scipy_label(ops, name, vol, conn):
    ref, n_ref = ndi.label(vol, ndi.generate_binary_structure(3, STRUCT[conn]))
    labels, n = connected_components(torch.from_numpy(vol), connectivity=conn)
    assert n == n_ref
    assert labels.dtype == torch.int32 and labels.shape == vol.shape
    lab = labels.numpy()
    sizes = np.sort(np.bincount(lab.ravel(), minlength=n + 1)[1:])
    assert np.array_equal(sizes, np.sort(np.bincount(ref.ravel(), minlength=n + 1)[1:]))
    # Same raster-order numbering as scipy, so the maps are identical.
    assert np.array_equal(lab, ref)


@pytest.mark.parametrize("conn, s", [(4, 1), (8, 2)])
def test_2d(ops, conn, s):
    rng = np.random.default_rng(1)
    img = rng.random((64, 57)) < 0.45
    ref, n_ref = ndi.label(img, ndi.generate_binary_structure(2, s))
    lab, n = connected_components(img, connectivity=conn)
    assert isinstance(lab, np.ndarray) and n == n_ref and np.array_equal(lab, ref)


def test_integer_masks_and_numpy_roundtrip(ops):
    rng = np.random.default_rng(2)
    vol = rng.integers(0, 3, (12, 13, 14)).astype(np.uint16)  # nonzero = foreground
    lab, n = connected_components(vol, 6)
    ref, n_ref = ndi.label(vol != 0)
    assert isinstance(lab, np.ndarray) and lab.dtype == np.int32
    assert n == n_ref and np.array_equal(lab, ref)


def _keep_largest_ref(lm, classes, s=3):
    out = lm.copy()
    for c in classes:
        lab, n = ndi.label(lm == c, ndi.generate_binary_structure(3, s))
        if n > 1:
            sizes = np.bincount(lab.ravel())
            sizes[0] = -1
            out[(lm == c) & (lab != np.argmax(sizes))] = 0
    return out


def _remove_small_ref(lm, classes, k, s=3):
    out = lm.copy()
    for c in classes:
        lab, n = ndi.label(lm == c, ndi.generate_binary_structure(3, s))
        sizes = np.bincount(lab.ravel())
        small = sizes < k
        small[0] = False
        out[(lm == c) & small[lab]] = 0
    return out


@pytest.mark.parametrize("conn", [6, 26])
def test_keep_largest_and_remove_small_per_class(ops, conn):
    rng = np.random.default_rng(3)
    lm = rng.integers(0, 4, (20, 22, 18)).astype(np.uint8)
    lm[rng.random(lm.shape) < 0.5] = 0
    s = STRUCT[conn]
    out = keep_largest(lm, connectivity=conn)
    assert isinstance(out, np.ndarray) and out.dtype == np.uint8
    assert np.array_equal(out, _keep_largest_ref(lm, [1, 2, 3], s))
    # Only the classes asked for change.
    out2 = keep_largest(torch.from_numpy(lm), classes=[2], connectivity=conn)
    assert isinstance(out2, torch.Tensor)
    assert np.array_equal(out2.numpy(), _keep_largest_ref(lm, [2], s))
    for k in (1, 2, 5, 50):
        assert np.array_equal(remove_small(lm, k, connectivity=conn),
                              _remove_small_ref(lm, [1, 2, 3], k, s))
    assert np.array_equal(remove_small(lm, 3, classes=1, connectivity=conn),
                          _remove_small_ref(lm, [1], 3, s))
    assert lm.max() == 3  # the input is not modified


def test_keep_largest_sphere_with_islands(ops):
    g = np.indices((40, 40, 40)).astype(float)
    sphere = ((g - 20) ** 2).sum(0) < 100
    lm = sphere.astype(np.int64)
    lm[2, 2, 2] = lm[37, 5, 30] = 1  # islands
    lm[30:33, 30:33, 30:33] = 2
    lm[0, 39, 0] = 2
    out = keep_largest(torch.from_numpy(lm))
    assert out.dtype == torch.int64
    assert np.array_equal(out.numpy() == 1, sphere)
    assert (out.numpy() == 2).sum() == 27


def test_bool_mask_helpers(ops):
    m = np.zeros((10, 10, 10), bool)
    m[1:4, 1:4, 1:4] = True
    m[7, 7, 7] = True
    assert keep_largest(m).sum() == 27 and keep_largest(m).dtype == bool
    assert remove_small(m, 2).sum() == 27


@pytest.mark.parametrize("bad, match", [
    (lambda: connected_components(np.zeros((4, 4, 4), np.float32)), "bool or integer"),
    (lambda: connected_components(torch.zeros(2, 3, 4, 5, dtype=torch.bool)), "2-D or 3-D"),
    (lambda: connected_components(torch.zeros(4, 4, 4, dtype=torch.bool), connectivity=8), "connectivity"),
    (lambda: connected_components(torch.zeros(4, 4, dtype=torch.bool), connectivity=26), "connectivity"),
    (lambda: connected_components([[1, 0]]), "torch.Tensor or numpy"),
    (lambda: connected_components(torch.zeros(4, 4, 4, dtype=torch.bool, device="meta")), "device"),
    (lambda: keep_largest(np.zeros((4, 4, 4), np.float64)), "bool or integer"),
    (lambda: remove_small(np.zeros((4, 4, 4), np.uint8), -1), "min_voxels"),
    (lambda: remove_small(np.zeros((4, 4, 4), np.uint8), 2.5), "min_voxels"),
    (lambda: keep_largest(np.zeros((4, 4, 4), np.uint8), classes=[0]), "class"),
])
def test_bad_input(ops, bad, match):
    with pytest.raises(ValueError, match=match):
        bad()
