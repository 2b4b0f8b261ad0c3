"""Hausdorff / surface distances against MONAI 1.6.1 and the reference values in
shared/notes/monai-reference.md."""
import math
import warnings

import numpy as np
import pytest
import torch
from scipy import ndimage as ndi

from imaging_core.metrics import nearest as N
from imaging_core.metrics import surface as S
from imaging_core.metrics import (average_surface_distance, compute_average_surface_distance,
                                  compute_hausdorff_distance, hausdorff_distance, mask_edges,
                                  scipy_distance_transform, set_distance_method,
                                  set_distance_transform, surface_distances, surface_metrics)

monai_metrics = pytest.importorskip("monai.metrics")

# "edt" runs fedvox's compiled EDT (built on first use); "edt-scipy" the same
# method with the compiled ops taken away, as where they cannot be built.
METHODS = ("edt", "edt-scipy", "kdtree")


class use_method:
    """``with use_method(m):`` runs the block with one of METHODS, then restores."""

    def __init__(self, name):
        self.name = name

    def __enter__(self):
        self.saved = N._compiled
        if self.name == "edt-scipy":
            N._compiled = False
        self.prev = set_distance_method(self.name.split("-")[0])

    def __exit__(self, *exc):
        set_distance_method(self.prev)
        N._compiled = self.saved


def sphere(size, centre, r):
    grid = np.ogrid[tuple(slice(0, s) for s in ((size,) * 3 if np.isscalar(size) else size))]
    return sum((g - c) ** 2 for g, c in zip(grid, centre)) <= r * r


def random_labels(rng, shape, n_classes, n_blobs):
    """Random ellipsoids of random classes; some touch the border, some classes may be absent."""
    lab = np.zeros(shape, np.uint8)
    grid = np.ogrid[tuple(slice(0, s) for s in shape)]
    for _ in range(n_blobs):
        c = rng.uniform(0, shape)
        r = rng.uniform(1.0, max(shape) / 3, size=len(shape))
        lab[sum(((g - ci) / ri) ** 2 for g, ci, ri in zip(grid, c, r)) <= 1] = rng.integers(1, n_classes)
    return lab


def perturb(rng, lab, n_classes):
    """A plausible prediction: shifted, with a blob added or a class dropped now and then."""
    pred = np.roll(lab, tuple(rng.integers(-3, 4, size=lab.ndim)), axis=tuple(range(lab.ndim)))
    u = rng.random()
    if u < 0.25:
        pred = np.maximum(pred, random_labels(rng, lab.shape, n_classes, 1))
    elif u < 0.4:
        pred[pred == rng.integers(1, n_classes)] = 0
    elif u < 0.5:
        pred = ndi.binary_dilation(pred > 0) * pred.max(initial=0)
    return pred.astype(np.uint8)


def onehot(lab, n_classes):
    return torch.from_numpy(np.stack([lab == c for c in range(n_classes)])[None].astype(np.float32))


def monai(metric_cls, y_pred, y, spacing, **kw):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return metric_cls(**kw)(y_pred, y, spacing=spacing).numpy().astype(np.float64)


def assert_same(ours, ref, tol=1e-5):
    ours, ref = np.asarray(ours, dtype=np.float64), np.asarray(ref, dtype=np.float64)
    assert ours.shape == ref.shape
    np.testing.assert_allclose(ours, ref, rtol=tol, atol=tol)  # NaN/inf must sit in the same places


@pytest.fixture(params=METHODS)
def method(request):
    with use_method(request.param):
        yield request.param


# ----------------------------------------------------------------- reference values
CASE_A = (sphere(128, (70, 64, 64), 20), sphere(128, (64, 64, 64), 20))
CASE_B = (sphere(128, (64, 64, 64), 25), sphere(128, (64, 64, 64), 20))


@pytest.mark.parametrize("case, spacing, hd, hd95, asd, assd", [
    (CASE_A, None, 6.0, 5.4772257804870605, 2.8513858318328857, 2.8513858318328857),
    (CASE_A, (1.5, 1.5, 2.0), 9.0, 8.631338119506836, 4.533981800079346, 4.533981800079346),
    (CASE_B, None, 5.385164737701416, 5.099019527435303, 4.81807804107666, 4.79721212387085),
])
def test_reference_values(method, case, spacing, hd, hd95, asd, assd):
    pred, gt = case
    assert hausdorff_distance(pred, gt, spacing) == pytest.approx(hd, abs=1e-6)
    assert hausdorff_distance(pred, gt, spacing, percentile=95) == pytest.approx(hd95, abs=1e-6)
    assert average_surface_distance(pred, gt, spacing) == pytest.approx(asd, abs=1e-6)
    assert average_surface_distance(pred, gt, spacing, symmetric=True) == pytest.approx(assd, abs=1e-6)
    m = surface_metrics(pred, gt, spacing, percentile=95)
    assert m["hd"] == pytest.approx(hd, abs=1e-6) and m["hd95"] == pytest.approx(hd95, abs=1e-6)
    assert m["assd"] == pytest.approx(assd, abs=1e-6)


def test_reference_values_256():
    gt = sphere(256, (128, 128, 128), 40)
    pred = sphere(256, (140, 128, 128), 40)
    assert hausdorff_distance(pred, gt, percentile=95) == pytest.approx(11.180339813232422, abs=1e-6)
    assert hausdorff_distance(pred, gt, (1.5, 1.5, 2.0), percentile=95) == pytest.approx(16.889345169067383,
                                                                                         abs=1e-6)
    assert average_surface_distance(pred, gt) == pytest.approx(5.763519763946533, abs=1e-6)


# ------------------------------------------------------------- random cases vs MONAI
@pytest.mark.parametrize("seed", range(60))
def test_random_cases_match_monai(seed):
    rng = np.random.default_rng(seed)
    shape = tuple(int(s) for s in rng.integers(8, 33, size=3))
    n_classes = int(rng.integers(2, 4))
    gt = random_labels(rng, shape, n_classes, int(rng.integers(0, 4)))
    pred = perturb(rng, gt, n_classes)
    spacing = [float(s) for s in rng.uniform(0.3, 3.0, size=3)]
    inc = bool(rng.integers(0, 2))
    yp, y = onehot(pred, n_classes), onehot(gt, n_classes)
    refs = {}
    for pct in (95, None):
        for directed in (False, True):
            refs["hd", pct, directed] = monai(monai_metrics.HausdorffDistanceMetric, yp, y, spacing,
                                              include_background=inc, percentile=pct, directed=directed)
    for sym in (False, True):
        refs["asd", sym] = monai(monai_metrics.SurfaceDistanceMetric, yp, y, spacing,
                                 include_background=inc, symmetric=sym)
    for m in METHODS:
        with use_method(m):
            for pct in (95, None):
                for directed in (False, True):
                    assert_same(compute_hausdorff_distance(yp, y, inc, pct, directed, spacing),
                                refs["hd", pct, directed])
            for sym in (False, True):
                assert_same(compute_average_surface_distance(yp, y, inc, sym, spacing), refs["asd", sym])


def test_numpy_bool_inputs_and_per_batch_spacing():
    rng = np.random.default_rng(7)
    labs = [random_labels(rng, (20, 18, 16), 2, 3) for _ in range(2)]
    gts = np.stack([np.stack([la == 0, la == 1]) for la in labs])
    preds = np.roll(gts, 2, axis=2)
    spacing = [[1.0, 1.0, 2.5], [0.7, 0.7, 1.0]]
    ref = monai(monai_metrics.HausdorffDistanceMetric, torch.from_numpy(preds).float(),
                torch.from_numpy(gts).float(), spacing, percentile=95)
    assert_same(compute_hausdorff_distance(preds, gts, percentile=95, spacing=spacing), ref)


# --------------------------------------------------------------------- empty masks
EMPTY = {"pred empty": (False, True), "gt empty": (True, False), "both empty": (False, False)}


@pytest.mark.parametrize("which", list(EMPTY))
@pytest.mark.parametrize("pct", [None, 0, 50, 95, 100])
@pytest.mark.parametrize("directed", [False, True])
def test_empty_hausdorff_matches_monai(which, pct, directed):
    blob = sphere((16, 14, 12), (8, 7, 5), 4)
    has_p, has_g = EMPTY[which]
    p = blob if has_p else np.zeros_like(blob)
    g = np.roll(blob, 2, axis=0) if has_g else np.zeros_like(blob)
    ref = monai(monai_metrics.HausdorffDistanceMetric, onehot(p.astype(np.uint8), 2),
                onehot(g.astype(np.uint8), 2), None, percentile=pct, directed=directed)
    ours = hausdorff_distance(p, g, None, pct, directed)
    assert_same([[ours]], ref)
    # the documented rule, spelled out
    if which == "both empty" or pct:  # pct 0 counts as "no percentile", like MONAI
        assert math.isnan(ours)
    else:
        assert ours == math.inf


@pytest.mark.parametrize("which", list(EMPTY))
@pytest.mark.parametrize("symmetric", [False, True])
def test_empty_surface_distance_matches_monai(which, symmetric):
    blob = sphere((16, 14, 12), (8, 7, 5), 4)
    has_p, has_g = EMPTY[which]
    p = blob if has_p else np.zeros_like(blob)
    g = blob if has_g else np.zeros_like(blob)
    ref = monai(monai_metrics.SurfaceDistanceMetric, onehot(p.astype(np.uint8), 2),
                onehot(g.astype(np.uint8), 2), None, symmetric=symmetric)
    ours = average_surface_distance(p, g, symmetric=symmetric)
    assert_same([[ours]], ref)
    assert math.isnan(ours) if which == "both empty" else ours == math.inf


@pytest.mark.parametrize("which", list(EMPTY))
def test_empty_surface_metrics(which):
    blob = sphere((10, 10, 10), (5, 5, 5), 3)
    has_p, has_g = EMPTY[which]
    m = surface_metrics(blob if has_p else blob & False, blob if has_g else blob & False)
    assert math.isnan(m["hd95"])
    assert (math.isnan(m["hd"]) and math.isnan(m["assd"])) if which == "both empty" \
        else (m["hd"] == math.inf and m["assd"] == math.inf)


# ------------------------------------------------------------- building blocks
@pytest.mark.parametrize("seed", range(6))
def test_mask_edges_equal_scipy_erosion_xor(seed):
    rng = np.random.default_rng(seed)
    m = random_labels(rng, (15, 12, 9), 2, 4) > 0
    m[0, :3, :3] = True  # touching the image border: outside counts as background
    np.testing.assert_array_equal(mask_edges(m), m ^ ndi.binary_erosion(m))
    assert not mask_edges(np.zeros((4, 4, 4), bool)).any()
    m2 = rng.random((9, 11)) > 0.4  # any dimensionality
    np.testing.assert_array_equal(mask_edges(m2), m2 ^ ndi.binary_erosion(m2))


@pytest.mark.parametrize("seed", range(8))
def test_box_distances_equal_full_volume_edt(method, seed):
    """The distance transform restricted to the box gives the full-volume distances,
    also for far-apart objects and objects on the image border."""
    rng = np.random.default_rng(100 + seed)
    shape = (30, 26, 20)
    p = random_labels(rng, shape, 2, 2) > 0
    g = random_labels(rng, shape, 2, 2) > 0
    p[rng.integers(0, 30), rng.integers(0, 26), rng.integers(0, 20)] = True  # a stray voxel
    if not g.any() or not p.any():
        g[3, 3, 3] = True
    sp = tuple(rng.uniform(0.5, 2.5, size=3))
    ep, eg = mask_edges(p), mask_edges(g)
    full_pg = ndi.distance_transform_edt(~eg, sampling=sp)[ep]
    full_gp = ndi.distance_transform_edt(~ep, sampling=sp)[eg]
    d_pg, d_gp = surface_distances(p, g, sp, symmetric=True)
    np.testing.assert_allclose(d_pg, full_pg, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(d_gp, full_gp, rtol=1e-12, atol=1e-12)


def test_pluggable_distance_transform():
    calls = []

    def plug(targets, sampling):
        calls.append((targets.shape, tuple(sampling)))
        return scipy_distance_transform(targets, sampling)

    pred, gt = CASE_A
    prev = set_distance_transform(plug)
    try:
        assert S.get_distance_transform() is plug
        assert hausdorff_distance(pred, gt, (1.5, 1.5, 2.0), 95) == pytest.approx(8.631338119506836, abs=1e-6)
        assert len(calls) == 2  # one per direction, on the box only
        assert calls[0][0] == (47, 41, 41) and calls[0][1] == (1.5, 1.5, 2.0)
        set_distance_transform(lambda t, s: np.zeros((2, 2, 2)))
        with pytest.raises(ValueError, match="distance transform returned shape"):
            hausdorff_distance(pred, gt)
        with pytest.raises(TypeError):
            set_distance_transform("not callable")
    finally:
        set_distance_transform(prev)
    assert S.get_distance_transform() is prev


def test_auto_method_picks_kdtree_for_stretched_box(monkeypatch):
    p = np.zeros((40, 40, 40), bool)
    g = np.zeros_like(p)
    g[2:5, 2:5, 2:5] = True
    p[36, 37, 38] = True  # one far false positive stretches the box over the volume
    used = []
    real = N.cKDTree
    monkeypatch.setattr(N, "cKDTree", lambda *a, **k: used.append(1) or real(*a, **k))
    auto = surface_distances(p, g, (1.0, 2.0, 0.5), symmetric=True)
    assert used
    prev = set_distance_method("edt")
    try:
        edt = surface_distances(p, g, (1.0, 2.0, 0.5), symmetric=True)
    finally:
        set_distance_method(prev)
    for a, b in zip(auto, edt):
        np.testing.assert_allclose(a, b, rtol=1e-12)
    with pytest.raises(ValueError):
        set_distance_method("brute")


@pytest.mark.parametrize("n", [1, 2, 3, 7, 20, 101])
@pytest.mark.parametrize("pct", [1, 5, 50, 90, 95, 99, 100])
def test_percentile_matches_torch_quantile(n, pct):
    d = np.random.default_rng(n * pct).random(n) * 10
    ref = torch.quantile(torch.from_numpy(d), pct / 100).item()
    assert S.percentile_of(d, pct) == pytest.approx(ref, rel=1e-12, abs=1e-12)
    assert S.percentile_of(d, None) == d.max() == S.percentile_of(d, 0)
    assert math.isnan(S.percentile_of(np.full(n, np.inf), pct))
    assert math.isnan(S.percentile_of(np.zeros(0), pct))


def test_bad_arguments():
    m = np.ones((4, 4, 4), bool)
    with pytest.raises(ValueError, match="percentile"):
        hausdorff_distance(m, m, percentile=101)
    with pytest.raises(ValueError, match="spacing"):
        hausdorff_distance(m, m, spacing=(1.0, 1.0))
    with pytest.raises(ValueError, match="spacing"):
        hausdorff_distance(m, m, spacing=(1.0, 0.0, 1.0))
    with pytest.raises(ValueError, match="shapes differ"):
        hausdorff_distance(m, m[:3])
    assert hausdorff_distance(m, m, spacing=2.0) == 0.0


def test_non_bool_inputs_same_as_bool():
    rng = np.random.default_rng(11)
    p = random_labels(rng, (22, 19, 17), 2, 3) > 0
    g = np.roll(p, 3, axis=1)
    g[0:3, 0:3, 0:3] = True
    sp = (0.9, 1.1, 2.0)
    want = surface_metrics(p, g, sp)
    convs = [lambda m: m.astype(np.uint8), lambda m: m.astype(np.float32),
             lambda m: np.where(m, 1.0, -0.0),  # -0.0 is background though its bits are not zero
             lambda m: torch.from_numpy(m.astype(np.float32)),
             lambda m: np.asfortranarray(m.astype(np.int16)), lambda m: m.astype(np.float64)[:, ::-1][:, ::-1]]
    for conv in convs:
        assert surface_metrics(conv(p), conv(g), sp) == want
    z = np.full((5, 5, 5), -0.0)
    assert math.isnan(hausdorff_distance(z, z))


def _ops_build_here() -> bool:
    from imaging_core.postprocess.build import OpsBuildError, load_ops
    try:
        load_ops()
        return True
    except OpsBuildError:
        return False


@pytest.mark.parametrize("shape", [(31, 24, 17), (40, 33)])
def test_compiled_edt_used_and_equal_to_scipy(shape):
    """Where the ops build, "edt" runs the compiled transform, with scipy's values."""
    if not _ops_build_here():
        pytest.skip("fedvox's compiled ops cannot be built here (the scipy path is tested)")
    rng = np.random.default_rng(7)
    p = random_labels(rng, shape, 2, 3) > 0
    g = np.roll(p, 2, axis=0)
    g[(0,) * len(shape)] = True
    sp = tuple(rng.uniform(0.4, 2.5, size=len(shape)))
    with use_method("edt"):
        assert N.dense_backend(len(shape)) == "compiled"
        ours = surface_distances(p, g, sp, symmetric=True)
    with use_method("edt-scipy"):
        assert N.dense_backend(len(shape)) == "scipy"
        ref = surface_distances(p, g, sp, symmetric=True)
    for a, b in zip(ours, ref):
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-12)
    assert N.dense_backend(1) == "scipy"  # the compiled EDT is 2-D/3-D only


def test_falls_back_to_scipy_where_ops_cannot_build(tmp_path):
    """No C++ compiler (and no cached build): the metrics still run, on scipy's EDT."""
    import os
    import subprocess
    import sys
    code = ("import numpy as np\n"
            "from imaging_core.metrics import nearest, hausdorff_distance\n"
            "x = np.ogrid[:128, :128, :128]\n"
            "r2 = lambda c: sum((a - b) ** 2 for a, b in zip(x, c)) <= 400\n"
            "print(nearest.dense_backend(3), repr(hausdorff_distance(r2((70, 64, 64)), r2((64, 64, 64)),"
            " (1.5, 1.5, 2.0), 95)))\n")
    env = dict(os.environ, CXX="no-such-compiler-xyz", FEDVOX_OPS_CACHE=str(tmp_path))
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
    env["PYTHONPATH"] = root + os.pathsep + env.get("PYTHONPATH", "")
    res = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                         timeout=120)
    assert res.returncode == 0, res.stderr
    backend, value = res.stdout.split()
    assert backend == "scipy"
    assert float(value) == pytest.approx(8.631338119506836, abs=1e-6)
