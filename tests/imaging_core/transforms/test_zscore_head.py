"""The head-masked z-score on a real brain (nilearn's ICBM152 2009 T1): a zero-filled
and a noisy (Rician) background of the same image end at the same normalised
background, with the brain's statistics nearly unchanged; and the TOML key."""
import importlib.util
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from imaging_core.config import ConfigError, PreprocessTable, ZScoreRule, parse
from imaging_core.io.volume import Volume
from imaging_core.transforms.crop_pad import CropForeground
from imaging_core.transforms.intensity import NormalizeIntensity, head_mask, otsu_threshold


def _icbm(kind: str) -> np.ndarray:
    spec = importlib.util.find_spec("nilearn")
    if spec is None:
        pytest.skip("nilearn (ships the ICBM152 template) is not installed")
    f = Path(spec.origin).parent / "datasets" / "data" / f"mni_icbm152_{kind}_tal_nlin_sym_09a_converted.nii.gz"
    # every 3rd voxel: 3 mm, ~66x78x63, fast enough for a unit test
    return np.asarray(nib.load(f).dataobj, dtype=np.float32)[::3, ::3, ::3]


@pytest.fixture(scope="module")
def brain():
    t1 = _icbm("t1")
    rng = np.random.default_rng(0)
    sigma = 0.04 * float(np.percentile(t1[t1 > 0], 90))  # noise 4% of white matter
    noisy = np.hypot(t1 + rng.normal(0, sigma, t1.shape), rng.normal(0, sigma, t1.shape)).astype(np.float32)
    tissue = (_icbm("gm") + _icbm("wm")) > 127  # grey + white matter, well inside the head
    return t1, noisy, tissue


def norm(arr, mask):
    d = {"image": Volume(arr[None], np.eye(4)), "case_id": "c"}
    return NormalizeIntensity(mask=mask, outside=-3.0)(d)["image"].array[0]


def test_otsu_splits_two_populations():
    rng = np.random.default_rng(1)
    v = np.concatenate([rng.normal(10, 2, 5000), rng.normal(100, 10, 2000)])
    t = otsu_threshold(v)
    assert v[:5000].max() < t < v[5000:].min()
    assert 25 < t < 60  # the middle of the empty gap, not its edge


def test_head_mask_same_for_zero_filled_and_noisy_background(brain):
    t1, noisy, tissue = brain
    m0, m1 = head_mask(t1), head_mask(noisy)
    assert m0[tissue].all() and m1[tissue].all()          # brain tissue always inside
    assert (m0 != m1).mean() < 0.01                       # the two masks agree on >99% of voxels
    assert 0.1 < m1.mean() < 0.4                          # neither empty nor the whole volume


def test_head_zscore_equal_backgrounds_and_close_brain_statistics(brain):
    t1, noisy, tissue = brain
    z0, z1 = norm(t1, "head"), norm(noisy, "head")
    outside = ~head_mask(t1) & ~head_mask(noisy)
    assert outside.mean() > 0.5
    np.testing.assert_array_equal(z0[outside], -3.0)       # one fixed value, whatever the air was
    np.testing.assert_array_equal(z1[outside], -3.0)
    # the brain reads the same: mean within 0.05; spread within 10% (the added noise widens it)
    assert abs(z0[tissue].mean() - z1[tissue].mean()) < 0.05
    assert abs(z0[tissue].std() / z1[tissue].std() - 1) < 0.10


def test_nonzero_zscore_is_the_problem_head_fixes(brain):
    # what issue 16 measured: non-zero statistics put zero-filled air at the tissue mean (0)
    # while noisy air lands well below it: the model sees two different backgrounds
    t1, noisy, tissue = brain
    z0, z1 = norm(t1, "nonzero"), norm(noisy, "nonzero")
    air = ~head_mask(t1) & ~head_mask(noisy)
    assert np.all(z0[air] == 0.0)
    assert z1[air].mean() < -0.5


def test_crop_threshold_finds_the_same_head_for_both_backgrounds(brain):
    t1, noisy, _ = brain
    pre = PreprocessTable(intensity={"MR": {"kind": "zscore", "mask": "head"}})
    thr = pre.crop_threshold("MR")
    assert -3.0 < thr < -0.5
    crop = CropForeground(threshold=thr, margin=0)
    boxes = []
    for arr in (t1, noisy):
        out = crop({"image": Volume(norm(arr, "head")[None], np.eye(4)), "case_id": "c"})["image"].array
        boxes.append(out.shape)
    assert boxes[0] == boxes[1] and np.prod(boxes[0][1:]) < 0.7 * t1.size


def test_zscore_mask_key_and_the_older_nonzero_key():
    assert ZScoreRule().mask == "head"  # the default since bundles can ship it (scripts/)
    assert parse(ZScoreRule, {"kind": "zscore", "nonzero": False}).mask == "all"
    assert parse(ZScoreRule, {"kind": "zscore", "nonzero": True}).mask == "nonzero"
    assert "nonzero" not in ZScoreRule().model_dump()               # one field in the model
    pre = PreprocessTable.model_validate({"intensity": {"MR": {"kind": "zscore", "mask": "head"}}})
    assert pre.intensity["MR"].mask == "head" and pre.intensity["CT"].kind == "window"
    with pytest.raises(ConfigError, match="not both"):
        parse(PreprocessTable, {"intensity": {"MR": {"kind": "zscore", "mask": "all", "nonzero": True}}},
              "fed.toml", "preprocess")
    with pytest.raises(ConfigError, match="mask"):
        parse(PreprocessTable, {"intensity": {"MR": {"kind": "zscore", "mask": "brain"}}}, "fed.toml", "preprocess")
