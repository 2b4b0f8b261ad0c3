import numpy as np
import pytest

from imaging_core.config import imaging_config
from imaging_core.plan.aggregate import PlanError, aggregate_fingerprints
from imaging_core.plan.fingerprint import fingerprint_site
from imaging_core.plan.planner import MR_RULE, make_plan, sample_bytes

GiB = 2 ** 30


def _pool(paths_mods):
    replies = {}
    for path, mod in paths_mods:
        fp = fingerprint_site(path, mod)
        replies[fp.site] = fp.to_reply()
    return aggregate_fingerprints(replies), replies


def test_plan_for_known_medians_and_sizes(site_writer):
    # 3 cases at 1x1x2 mm (40x40x20 voxels) + 2 at 2x2x2 mm (20x20x20): the same 40 mm box
    pooled, _ = _pool([(site_writer("a", modality="CT", n=3, shape=(40, 40, 20), spacing=(1, 1, 2)), "CT"),
                       (site_writer("b", modality="CT", n=2, shape=(20, 20, 20), spacing=(2, 2, 2)), "CT")])
    plan = make_plan(pooled, memory_bytes=8 * GiB, base_channels=8)
    assert plan["preprocess"]["pixdim"] == [1.0, 1.0, 2.0]          # per-axis median
    # median shape at 1x1x2 mm is 40x40x20; 20 allows two halvings (20/4 = 5 >= 4)
    assert plan["sampling"]["patch_size"] == [40, 40, 20]
    assert plan["model"]["strides"] == [2, 2] and plan["model"]["channels"] == [8, 16, 32]
    assert plan["sampling"]["samples_per_case"] == 2               # at least 2 (5% of 5 cases caps it)
    assert plan["preprocess"]["crop_foreground"] is False          # CT air is non-zero: nothing to crop
    # the CT rule is nnU-Net's: clip to foreground 0.5/99.5 %, then (x - mean) / std
    ct = plan["preprocess"]["intensity"]["CT"]
    assert ct["kind"] == "window" and -10 < ct["a_min"] < 40 < ct["a_max"] < 90
    assert ct["b_min"] == pytest.approx(-ct["b_max"], abs=0.4)    # symmetric foreground around its mean
    imaging_config({k: plan[k] for k in ("preprocess", "sampling", "model")})   # validates as the tables
    assert set(plan["reasons"]) >= {"pixdim", "patch_size", "intensity", "crop_foreground", "model"}


def test_anisotropy_rule_takes_10th_percentile(site_writer):
    zs = [3.5, 5.0, 5.0, 5.0, 5.0]
    paths = [(site_writer(f"s{i}", n=1, shape=(64, 64, 8), spacing=(1, 1, z), seed=i), "MR")
             for i, z in enumerate(zs)]
    pooled, _ = _pool(paths)
    plan = make_plan(pooled, memory_bytes=8 * GiB)
    assert plan["preprocess"]["pixdim"] == [1.0, 1.0, pytest.approx(np.percentile(zs, 10))]
    assert "10th percentile" in plan["reasons"]["pixdim"]
    assert plan["preprocess"]["intensity"]["MR"].items() >= MR_RULE.items()  # + schema defaults


def test_patch_shrinks_to_the_memory_budget(site_writer):
    pooled, _ = _pool([(site_writer("a", n=2, shape=(96, 96, 64)), "MR")])
    budget = 64 * 2 ** 20
    plan = make_plan(pooled, memory_bytes=budget)
    patch, ch = plan["sampling"]["patch_size"], plan["model"]["channels"]
    assert 2 * sample_bytes(patch, ch) <= budget and patch != [96, 96, 64]
    k = 2 ** len(plan["model"]["strides"])
    assert all(p % k == 0 and p // k >= 4 for p in patch)
    with pytest.raises(PlanError, match="holds no two patches"):
        make_plan(pooled, memory_bytes=1000)


def test_bad_or_missing_reply_is_one_line(site_writer):
    _, replies = _pool([(site_writer("a", n=2), "MR")])
    good = replies["a"]
    cases = {"b": None, "c": {**good, "vector": good["vector"][:-1]}, "d": {k: v for k, v in good.items() if k != "summary"},
             "e": {**good, "version": 99}}
    for site, bad in cases.items():
        with pytest.raises(PlanError) as e:
            aggregate_fingerprints({"a": good, site: bad})
        msg = str(e.value)
        assert msg.startswith(f"site {site}: ") and "\n" not in msg
