"""case_metrics / summarize / write_summary / metrics_for_files."""
import csv
import json
import math
import warnings

import nibabel as nib
import numpy as np
import pytest
import torch

from imaging_core.errors import ImagingError
from imaging_core.metrics import case_metrics, metrics_for_files, stats, summarize, write_summary

monai_metrics = pytest.importorskip("monai.metrics")


def random_labels(rng, shape, n_classes, n_blobs):
    lab = np.zeros(shape, np.uint8)
    grid = np.ogrid[tuple(slice(0, s) for s in shape)]
    for _ in range(n_blobs):
        c = rng.uniform(0, shape)
        r = rng.uniform(1.5, max(shape) / 3, size=len(shape))
        lab[sum(((g - ci) / ri) ** 2 for g, ci, ri in zip(grid, c, r)) <= 1] = rng.integers(1, n_classes)
    return lab


def onehot(lab, n_classes):
    return torch.from_numpy(np.stack([lab == c for c in range(n_classes)])[None].astype(np.float32))


def monai_case(pred, gt, k, spacing, include_background):
    yp, y = onehot(pred, k), onehot(gt, k)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return {
            "dice": monai_metrics.DiceMetric(include_background=include_background)(yp, y)[0].numpy(),
            "hd95": monai_metrics.HausdorffDistanceMetric(include_background=include_background, percentile=95)(
                yp, y, spacing=spacing)[0].numpy(),
            "hd": monai_metrics.HausdorffDistanceMetric(include_background=include_background)(
                yp, y, spacing=spacing)[0].numpy(),
            "assd": monai_metrics.SurfaceDistanceMetric(include_background=include_background, symmetric=True)(
                yp, y, spacing=spacing)[0].numpy(),
        }


def two_blobs(shape=(24, 20, 16)):
    """gt with classes 1 and 2; prediction shifted, class 2 missed."""
    gt = np.zeros(shape, np.uint8)
    gt[4:12, 5:13, 3:9] = 1
    gt[15:20, 4:9, 8:14] = 2
    pred = np.roll(gt, 2, axis=0)
    pred[pred == 2] = 0
    return pred, gt


# -------------------------------------------------------------------- case_metrics
@pytest.mark.parametrize("seed", range(8))
def test_case_metrics_match_monai(seed):
    rng = np.random.default_rng(seed)
    shape = tuple(int(s) for s in rng.integers(10, 30, size=3))
    k = int(rng.integers(2, 5))
    gt = random_labels(rng, shape, k, int(rng.integers(1, 5)))
    pred = random_labels(rng, shape, k, int(rng.integers(0, 5)))
    spacing = tuple(float(s) for s in rng.uniform(0.5, 2.5, size=3))
    inc = bool(seed % 2)
    m = case_metrics(pred, gt, k, spacing=spacing, include_background=inc)
    ref = monai_case(pred, gt, k, list(spacing), inc)
    classes = [str(c) for c in range(0 if inc else 1, k)]
    for name in ("dice", "hd95", "hd", "assd"):
        assert list(m[name]) == classes
        np.testing.assert_allclose([m[name][c] for c in classes], ref[name], rtol=1e-5, atol=1e-6)
    for c in range(0 if inc else 1, k):
        present_g, present_p = (gt == c).any(), (pred == c).any()
        assert (c in m["missed"]) == (present_g and not present_p)
        assert (c in m["spurious"]) == (present_p and not present_g)
        assert m["gt_voxels"][str(c)] == np.count_nonzero(gt == c)
    json.loads(json.dumps(m))  # JSON-able (NaN / Infinity as Python writes them)


def test_case_metrics_missed_and_spurious():
    pred, gt = two_blobs()
    pred[0:2, 0:2, 0:2] = 3  # a structure the ground truth does not have
    m = case_metrics(pred, gt, 4, spacing=(1.0, 1.0, 2.0))
    assert m["missed"] == [2] and m["spurious"] == [3]
    assert m["dice"]["2"] == 0.0 and math.isnan(m["hd95"]["2"]) and m["hd"]["2"] == math.inf
    assert math.isnan(m["dice"]["3"]) and math.isnan(m["hd95"]["3"]) and m["assd"]["3"] == math.inf
    assert m["diagonal_mm"] == pytest.approx(math.sqrt(23 ** 2 + 19 ** 2 + 30 ** 2))
    assert all(isinstance(v, float) for v in m["dice"].values())
    with pytest.raises(ValueError, match="shapes differ"):
        case_metrics(pred, gt[:-1], 4)


# ------------------------------------------------------------------------ summarize
def test_stats_match_numpy():
    rng = np.random.default_rng(0)
    v = list(rng.random(23) * 10) + [math.nan, math.inf, math.nan]
    s = stats(v)
    fin = np.asarray(v[:23])
    assert s["mean"] == pytest.approx(fin.mean()) and s["median"] == pytest.approx(np.median(fin))
    assert s["std"] == pytest.approx(fin.std()) and s["n"] == 23
    assert s["p5"] == pytest.approx(np.percentile(fin, 5)) and s["p95"] == pytest.approx(np.percentile(fin, 95))
    assert s["n_inf"] == 1 and s["n_nan"] == 2
    e = stats([math.nan, math.inf])
    assert e["n"] == 0 and all(math.isnan(e[k]) for k in ("mean", "median", "std", "p5", "p95"))


def test_summarize_counts_and_worst_case():
    rng = np.random.default_rng(5)
    per_case = []
    for i in range(12):
        gt = random_labels(rng, (20, 18, 14), 3, 3)
        pred = np.roll(gt, int(rng.integers(-2, 3)), axis=0)
        if i % 4 == 0:
            pred[pred == 2] = 0  # missed whenever class 2 exists
        if i % 5 == 0:
            gt[gt == 1] = 0  # class 1 absent from the gt: spurious if predicted
        per_case.append({"case_id": f"c{i}", **case_metrics(pred, gt, 3, spacing=(1.0, 1.2, 2.0))})
    summ = summarize(per_case, 3)
    assert set(summ) == {"1", "2"}
    for k in ("1", "2"):
        c = int(k)
        s = summ[k]
        dice = np.array([m["dice"][k] for m in per_case])
        hd95 = np.array([m["hd95"][k] for m in per_case])
        # MONAI's aggregate("mean"): NaN skipped
        assert s["dice"]["mean"] == pytest.approx(np.nanmean(dice))
        assert s["hd95"]["mean"] == pytest.approx(np.nanmean(hd95))
        assert s["hd95"]["p95"] == pytest.approx(np.nanpercentile(hd95, 95))
        missed = [c in m["missed"] for m in per_case]
        spurious = [c in m["spurious"] for m in per_case]
        assert s["n_cases"] == 12 and s["n_missed"] == sum(missed) and s["n_spurious"] == sum(spurious)
        assert s["n_present"] == int(np.isfinite(dice).sum())
        assert s["n_present"] + s["n_spurious"] + s["n_both_empty"] == 12
        strict = [d if not math.isnan(d) else (0.0 if sp else 1.0) for d, sp in zip(dice, spurious)]
        assert s["dice_strict"]["mean"] == pytest.approx(np.mean(strict))
        worst = [m["diagonal_mm"] if (mi or sp) else h for m, mi, sp, h in zip(per_case, missed, spurious, hd95)]
        assert s["hd95_worst"]["mean"] == pytest.approx(np.nanmean(worst))
        assert s["hd95_worst_case_mean"] == s["hd95_worst"]["mean"]
        assert s["hd95_worst"]["n"] == s["n_present"] + s["n_spurious"]
    assert summ["2"]["n_missed"] > 0 and summ["1"]["n_spurious"] > 0
    assert summ["2"]["hd95_worst"]["mean"] > summ["2"]["hd95"]["mean"]  # the missed cases show up


def test_summary_feeds_trainer_flat_scores():
    from imaging_core.metrics import flat_scores

    pred, gt = two_blobs()
    summ = summarize([case_metrics(pred, gt, 3), case_metrics(gt, gt, 3)], 3)
    flat = flat_scores(summ, 3)
    assert flat["missed_2"] == 1 and flat["dice_2"] == pytest.approx(0.5)
    assert flat["hd95_1"] == pytest.approx(summ["1"]["hd95"]["mean"])


def test_write_summary(tmp_path):
    pred, gt = two_blobs()
    per_case = [{"case_id": "a", **case_metrics(pred, gt, 3)}, {"case_id": "b", **case_metrics(gt, gt, 3)}]
    summ = summarize(per_case, 3)
    paths = write_summary(summ, per_case, tmp_path / "out")
    doc = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert doc["summary"]["2"]["n_missed"] == 1 and doc["per_case"][0]["missed"] == [2]
    rows = list(csv.DictReader(open(paths["per_case"])))
    assert [(r["case_id"], r["class"]) for r in rows] == [("a", "1"), ("a", "2"), ("b", "1"), ("b", "2")]
    assert rows[1]["missed"] == "1" and rows[1]["hd95"] == "nan" and rows[1]["hd"] == "inf"
    srows = list(csv.DictReader(open(paths["summary"])))
    assert [r["class"] for r in srows] == ["1", "2"]
    assert float(srows[1]["dice_mean"]) == pytest.approx(0.5) and srows[1]["n_missed"] == "1"
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["metrics.json", "per_case.csv", "summary.csv"]


# ----------------------------------------------------------------- metrics_for_files
def _affine(spacing=(0.8, 0.9, 2.5)):
    a = np.diag([-spacing[0], -spacing[1], spacing[2], 1.0])
    a[:3, 3] = (10.0, -20.0, 5.0)
    return a


def _save(path, arr, affine, dtype=None):
    nib.save(nib.Nifti1Image(arr.astype(dtype or arr.dtype), affine), path)
    return path


def test_metrics_for_files_nifti(tmp_path):
    pred, gt = two_blobs()
    aff = _affine()
    pp = _save(tmp_path / "pred.nii.gz", pred, aff, np.uint8)
    gp = _save(tmp_path / "gt.nii", gt, aff, np.float32)  # float label files are common
    res = metrics_for_files(pp, gp)
    want = case_metrics(pred, gt, 3, spacing=(0.8, 0.9, 2.5))
    assert res["num_classes"] == 3 and res["shape"] == [24, 20, 16]
    assert res["spacing"] == pytest.approx([0.8, 0.9, 2.5])
    for name in ("dice", "hd95", "hd", "assd"):
        np.testing.assert_allclose(list(res[name].values()), list(want[name].values()), rtol=1e-6)
    assert res["missed"] == [2]
    json.loads(json.dumps(res))
    iso = metrics_for_files(pp, gp, spacing=1.0, num_classes=4)
    assert iso["spacing"] == [1.0, 1.0, 1.0] and list(iso["dice"]) == ["1", "2", "3"]
    assert iso["hd"]["1"] == pytest.approx(case_metrics(pred, gt, 3)["hd"]["1"])


def test_metrics_for_files_errors(tmp_path):
    pred, gt = two_blobs()
    aff = _affine()
    gp = _save(tmp_path / "gt.nii.gz", gt, aff, np.uint8)
    bad_shape = _save(tmp_path / "small.nii.gz", pred[:-2], aff, np.uint8)
    with pytest.raises(ImagingError, match="shape") as e:
        metrics_for_files(bad_shape, gp)
    assert e.value.path == str(bad_shape) and "gt.nii.gz" in str(e.value)
    moved = _save(tmp_path / "moved.nii.gz", pred, _affine((0.8, 0.9, 3.0)), np.uint8)
    with pytest.raises(ImagingError, match="affine") as e:
        metrics_for_files(moved, gp)
    assert e.value.path == str(moved)
    frac = _save(tmp_path / "prob.nii.gz", pred * 0.5, aff, np.float32)
    with pytest.raises(ImagingError, match="non-integer") as e:
        metrics_for_files(frac, gp)
    assert e.value.path == str(frac)
    ok = _save(tmp_path / "pred.nii.gz", pred, aff, np.uint8)
    with pytest.raises(ImagingError, match="num_classes"):
        metrics_for_files(ok, gp, num_classes=2)
    with pytest.raises(ImagingError, match="not found"):
        metrics_for_files(tmp_path / "nope.nii.gz", gp)
