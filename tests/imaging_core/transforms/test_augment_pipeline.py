"""[augment] -> the per-patch pipeline: presets, older keys, validation, seeded reproducibility."""
import tomllib
from pathlib import Path

import numpy as np
import pytest

from imaging_core.config import AUGMENT_PRESETS, AugmentTable, ConfigError, imaging_config
from imaging_core.io.volume import Volume
from imaging_core.transforms.augment import (RandAdjustContrast, RandContrast, RandGaussianSmooth,
                                             RandSimulateLowResolution, RandSpatial)
from imaging_core.transforms.base import Compose
from imaging_core.transforms.presets import build_augment

ROOT = Path(__file__).resolve().parents[3]


def test_default_is_nnunet_and_light_is_the_milder_set():
    d, light = AugmentTable(), AugmentTable(preset="light")
    assert d.preset == "nnunet"
    assert d.model_dump(exclude={"preset", "affine_prob", "intensity_prob"}) == AUGMENT_PRESETS["nnunet"]
    assert light.model_dump(exclude={"preset", "affine_prob", "intensity_prob"}) == AUGMENT_PRESETS["light"]
    # nnU-Net v2's figures (nnUNetTrainer.get_training_transforms)
    assert (d.scale_range, d.gamma_range, d.gamma_invert_prob, d.gamma_prob) == ([0.7, 1.4], [0.7, 1.5], 0.1, 0.3)
    assert light.lowres_prob == light.blur_prob == light.contrast_prob == 0.0


def test_file_keys_win_over_the_preset():
    cfg = AugmentTable(preset="light", blur_prob=0.4, gamma_range=[0.6, 1.6])
    assert cfg.blur_prob == 0.4 and cfg.gamma_range == [0.6, 1.6] and cfg.rot90_prob == 0.25


def test_older_files_keep_working():
    """The five keys of earlier federation files still parse and still mean what they did."""
    old = {"flip_prob": 0.5, "rot90_prob": 0.25, "affine_prob": 0.2, "intensity_prob": 0.3, "noise_prob": 0.15}
    cfg = imaging_config({"augment": old}, "fed.toml").augment
    assert (cfg.flip_prob, cfg.rot90_prob, cfg.noise_prob) == (0.5, 0.25, 0.15)
    assert cfg.rotate_prob == cfg.scale_prob == 0.2
    assert cfg.brightness_prob == cfg.shift_prob == cfg.gamma_prob == 0.3
    # an explicit new key beats the alias
    assert AugmentTable(intensity_prob=0.3, gamma_prob=0.05).gamma_prob == 0.05


@pytest.mark.parametrize("doc,key,words", [
    ({"elastc_prob": 0.1}, "elastc_prob", "elastic_prob"),
    ({"preset": "heavy"}, "preset", "nnunet"),
    ({"blur_prob": 1.5}, "blur_prob", "less than or equal to 1"),
    ({"gamma_range": [0.7]}, "gamma_range", "at least 2"),
])
def test_bad_keys_are_one_clear_error(doc, key, words):
    with pytest.raises(ConfigError) as e:
        imaging_config({"augment": doc}, "fed.toml")
    assert e.value.key == key and words in str(e.value) and "fed.toml" in str(e.value)


@pytest.mark.parametrize("doc,words", [({"scale_range": [1.4, 0.7]}, "low <= high"),
                                       ({"lowres_zoom": [0.5, 1.5]}, "within (0, 1]"),
                                       ({"contrast_range": [0.0, 1.2]}, "positive")])
def test_bad_ranges_are_refused(doc, words):
    with pytest.raises(ConfigError) as e:
        imaging_config({"augment": doc}, "fed.toml")
    assert words in str(e.value) and "[augment]" in str(e.value)


def test_example_federation_augment_table_parses():
    doc = tomllib.loads((ROOT / "sites_example" / "federation.toml").read_text())
    cfg = AugmentTable(**doc["augment"])
    assert cfg.preset in AUGMENT_PRESETS


def test_pipeline_follows_the_table():
    ts = build_augment(AugmentTable())
    kinds = [type(t) for t in ts]
    for k in (RandSpatial, RandGaussianSmooth, RandContrast, RandSimulateLowResolution):
        assert k in kinds
    gammas = [t for t in ts if isinstance(t, RandAdjustContrast)]
    assert [(g.invert_image, g.prob) for g in gammas] == [(True, 0.1), (False, 0.3)]
    sp = next(t for t in ts if isinstance(t, RandSpatial))
    assert (sp.rotate_prob, sp.scale_range, sp.elastic_prob) == (0.2, (0.7, 1.4), 0.2)


def _item(seed=0, n=16):
    rng = np.random.default_rng(seed)
    img = rng.random((1, n, n, n), dtype=np.float32)
    img.setflags(write=False)  # cached patches are read-only memory maps
    lab = (img > 0.6).astype(np.uint8) + (img > 0.9).astype(np.uint8)
    lab.setflags(write=False)
    return {"image": Volume(img, np.eye(4)), "label": Volume(lab, np.eye(4))}


@pytest.mark.parametrize("preset", ["nnunet", "light"])
def test_seeded_pipeline_is_reproducible_and_keeps_labels_and_inputs(preset):
    probs = {k: 1.0 for k in AUGMENT_PRESETS[preset] if k.endswith("_prob")}
    cfg = AugmentTable(preset=preset, **probs)   # every transform fires
    it = _item()
    before = it["image"].array.copy()
    a = Compose(build_augment(cfg), seed=7)(it)
    b = Compose(build_augment(cfg), seed=7)(it)
    c = Compose(build_augment(cfg), seed=8)(it)
    np.testing.assert_array_equal(a["image"].array, b["image"].array)
    np.testing.assert_array_equal(a["label"].array, b["label"].array)
    assert not np.array_equal(a["image"].array, c["image"].array)
    np.testing.assert_array_equal(it["image"].array, before)
    assert a["image"].array.shape == before.shape and a["image"].array.dtype == np.float32
    assert a["label"].array.dtype == np.uint8 and set(np.unique(a["label"].array)) <= {0, 1, 2}


def _index_case(shape=(21, 21, 21)):
    arr = np.arange(np.prod(shape), dtype=np.float32).reshape((1, *shape))
    A = np.diag([1.5, 2.0, 1.0, 1.0])
    A[:3, 3] = (-5, 3, 8)
    return {"image": Volume(arr, A), "label": Volume((arr % 3).astype(np.uint8), A), "case_id": "c"}, shape


def test_warp_reads_the_case_past_the_patch_edge():
    """nnU-Net crops a larger patch before rotating/zooming; WithSource + RandSpatial read the
    case instead: a 2x zoom-out of a flipped, centred 7^3 patch holds case voxels from outside
    the patch (exact: the sample points are voxel centres), and the source key is dropped."""
    from imaging_core.transforms.augment import SOURCE_KEY, RandFlip, RandSpatial, WithSource
    from imaging_core.transforms.patches import RandCropByPosNeg
    case, shape = _index_case()
    lab = np.zeros((1, *shape), np.uint8)
    lab[0, 10, 10, 10] = 1  # the one positive voxel: the patch is centred on it
    case["label"] = Volume(lab, case["image"].affine)
    patch = WithSource(RandCropByPosNeg((7, 7, 7), pos=1.0, neg=0.0, num_samples=1))(case, np.random.default_rng(0))[0]
    assert patch[SOURCE_KEY]["image"] is case["image"]
    patch = RandFlip().flip(patch, (1,))
    sources = patch.pop(SOURCE_KEY)
    out = RandSpatial().warp(patch, (0.0, 0.0, np.pi / 2), (2.0, 2.0, 2.0), sources=sources)
    ijk = np.stack(np.meshgrid(*[np.arange(7)] * 3, indexing="ij")).reshape(3, -1)
    m = np.linalg.solve(case["image"].affine, out["image"].affine)
    src = np.rint(m[:3, :3] @ ijk + m[:3, 3:]).astype(int)
    assert src.min() < 7 and src.max() > 13  # reaches well outside the patch (voxels 7..13)
    flat = np.ravel_multi_index(tuple(src), shape)
    np.testing.assert_allclose(out["image"].array.reshape(-1), flat, atol=1e-2)
    np.testing.assert_array_equal(out["label"].array.reshape(-1), lab.reshape(-1)[flat])
    # the patch alone can only repeat its edge there
    alone = RandSpatial().warp(patch, (0.0, 0.0, np.pi / 2), (2.0, 2.0, 2.0))
    assert not np.allclose(alone["image"].array.reshape(-1), flat)


def test_training_pipeline_drops_the_source_whether_or_not_the_warp_fires():
    from imaging_core.config import SamplingTable
    from imaging_core.transforms.augment import SOURCE_KEY
    from imaging_core.transforms.presets import build_train_transforms
    case, shape = _index_case()
    case["label"] = Volume((case["image"].array > 4000).astype(np.uint8), case["image"].affine)
    for p in (0.0, 1.0):
        train = build_train_transforms(SamplingTable(patch_size=[8, 8, 8], samples_per_case=3, mode="posneg"),
                                       AugmentTable(rotate_prob=p, scale_prob=p, elastic_prob=p), num_classes=2)
        assert train.deterministic_prefix().transforms == []
        patches = train(case, np.random.default_rng(1))
        assert len(patches) == 3
        for it in patches:
            assert SOURCE_KEY not in it and it["image"].spatial_shape == (8, 8, 8)
