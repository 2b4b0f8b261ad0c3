import numpy as np
import pytest
import torch

from imaging_core.postprocess import build_postprocess, keep_largest, postprocess_probs, remove_small


def _labels():
    lm = np.zeros((20, 20, 20), np.uint8)
    lm[2:10, 2:10, 2:10] = 1
    lm[15, 15, 15] = 1           # island of class 1
    lm[12:18, 2:6, 2:6] = 2
    lm[0:2, 18:20, 18:20] = 2    # 8-voxel island of class 2
    return lm


def test_largest_component_chain():
    lm = _labels()
    pp = build_postprocess({"chain": ["largest_component"]})
    out = pp(lm)
    assert isinstance(out, np.ndarray) and out.dtype == np.uint8
    assert np.array_equal(out, keep_largest(lm))
    assert out[15, 15, 15] == 0 and out[0, 18, 18] == 0
    # classes restrict which labels are touched
    out1 = build_postprocess({"chain": ["keep_largest"], "classes": [1]})(torch.from_numpy(lm))
    assert out1[15, 15, 15] == 0 and out1[0, 18, 18] == 2


def test_remove_small_then_largest_with_step_options():
    lm = _labels()
    cfg = {"chain": [{"name": "remove_small", "min_voxels": 2}, "largest_component"],
           "connectivity": 6}
    out = build_postprocess(cfg)(lm)
    ref = keep_largest(remove_small(lm, 2, connectivity=6), connectivity=6)
    assert np.array_equal(out, ref)
    out2 = build_postprocess({"chain": ["remove_small"], "remove_small": {"min_voxels": 9}})(lm)
    assert out2[15, 15, 15] == 0 and out2[0, 18, 18] == 0 and out2[5, 5, 5] == 1
    assert np.array_equal(build_postprocess({})(lm), lm)  # empty chain: identity


def test_postprocess_probs_with_crf(ops):
    gen = torch.Generator().manual_seed(0)
    g = torch.stack(torch.meshgrid(*[torch.arange(24, dtype=torch.float32)] * 3, indexing="ij"))
    gt = ((g - 11.5) ** 2).sum(0).sqrt() < 7
    image = (gt.float() + 0.15 * torch.randn(gt.shape, generator=gen))[None]
    pf = torch.sigmoid((2 * gt.float() - 1) + 1.5 * torch.randn(gt.shape, generator=gen))
    probs = torch.stack([1 - pf, pf])
    dice = lambda a: 2 * float((a & gt).sum()) / float(a.sum() + gt.sum())  # noqa: E731
    plain = postprocess_probs(probs, image, {"chain": []})
    assert plain.dtype == torch.uint8 and torch.equal(plain, probs.argmax(0).to(torch.uint8))
    lc = postprocess_probs(probs, image, {"chain": ["largest_component"]})
    cfg = {"chain": ["crf", "largest_component"],
           "crf": {"bilateral_spatial_sigma": 2.0, "bilateral_color_sigma": 0.3}}
    both = postprocess_probs(probs, image, cfg)
    assert dice(both == 1) > dice(lc == 1) > dice(plain == 1)
    assert dice(both == 1) > 0.95
    # batch and numpy faces
    bn = postprocess_probs(probs[None].numpy(), image[None].numpy(), cfg)
    assert isinstance(bn, np.ndarray) and bn.shape == (1, 24, 24, 24)
    assert np.array_equal(bn[0], both.numpy())


@pytest.mark.parametrize("cfg, match", [
    ({"chain": ["crf"]}, "postprocess_probs"),  # raised when called on a label map
    ({"chain": "largest_component"}, "list"),
    ({"chain": ["blur"]}, "unknown step"),
    ({"chain": ["largest_component", "crf"]}, "first step"),
    ({"chain": ["remove_small"]}, "min_voxels"),
    ({"chain": [{"name": "largest_component", "min_voxels": 3}]}, "unknown options"),
    ({"chain": ["crf"], "crf": {"sigma": 1}}, "unknown options"),
    ({"chain": [], "colour": 1}, "unknown keys"),
    ({"chain": [3]}, "step 0"),
    ([], "dict"),
])
def test_bad_config(cfg, match):
    with pytest.raises(ValueError, match=match):
        build_postprocess(cfg)(_labels())
