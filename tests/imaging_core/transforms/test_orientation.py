"""Orientation vs MONAI Orientationd (arrays and affines), views, no mutation."""
import itertools
import warnings

import numpy as np
import pytest
import torch
from scipy.spatial.transform import Rotation

from imaging_core.io.volume import Volume
from imaging_core.transforms.orientation import Orientation, reorient

monai = pytest.importorskip("monai")
from monai.data import MetaTensor  # noqa: E402
from monai.transforms import Orientationd  # noqa: E402

ALL_CODES = ["".join(p) for combo in itertools.product("LR", "PA", "IS")
             for p in itertools.permutations(combo)]


def rand_affine(rng, oblique=0.0):
    perm = rng.permutation(3)
    flips = rng.choice([-1, 1], 3)
    P = np.zeros((3, 3))
    P[perm, np.arange(3)] = flips
    M = P @ np.diag(rng.uniform(0.5, 3.0, 3))
    if oblique:
        M = Rotation.from_rotvec(rng.normal(0, oblique, 3)).as_matrix() @ M
    A = np.eye(4)
    A[:3, :3] = M
    A[:3, 3] = rng.uniform(-80, 80, 3)
    return A


def monai_orient(arr, A, codes):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        d = {"image": MetaTensor(torch.from_numpy(arr.copy()), affine=torch.from_numpy(A))}
        m = Orientationd(["image"], axcodes=codes, labels=(("L", "R"), ("P", "A"), ("I", "S")))(d)["image"]
    return m.numpy(), m.affine.numpy()


def test_all_codes_match_monai():
    rng = np.random.default_rng(0)
    assert len(ALL_CODES) == 48
    for i, codes in enumerate(ALL_CODES):
        A = rand_affine(rng, oblique=0.15 if i % 2 else 0.0)
        shape = tuple(int(s) for s in rng.integers(3, 9, 3))
        img = rng.normal(size=(2,) + shape).astype(np.float32)
        lab = rng.integers(0, 5, (1,) + shape).astype(np.uint8)
        img0, lab0 = img.copy(), lab.copy()
        out = Orientation(codes)({"image": Volume(img, A), "label": Volume(lab, A, {"x": 1})})
        ma, maff = monai_orient(img, A, codes)
        assert out["image"].orientation == tuple(codes)
        np.testing.assert_array_equal(out["image"].array, ma)
        np.testing.assert_allclose(out["image"].affine, maff, atol=1e-10)
        np.testing.assert_array_equal(out["label"].array, monai_orient(lab, A, codes)[0])
        assert out["label"].array.dtype == np.uint8
        assert out["label"].meta == {"x": 1}
        # views, input untouched
        assert np.shares_memory(out["image"].array, img)
        np.testing.assert_array_equal(img, img0)
        np.testing.assert_array_equal(lab, lab0)


def test_world_coordinates_preserved():
    rng = np.random.default_rng(1)
    A = rand_affine(rng, 0.1)
    shape = (4, 5, 6)
    arr = np.arange(np.prod(shape), dtype=np.int32).reshape((1,) + shape)
    out = reorient(Volume(arr, A), "PLI")
    # each value's world coordinate is the same before and after
    for val in (0, 17, 59, 119):
        i = np.argwhere(arr[0] == val)[0]
        j = np.argwhere(out.array[0] == val)[0]
        np.testing.assert_allclose(A @ np.r_[i, 1], out.affine @ np.r_[j, 1], atol=1e-9)


def test_identity_and_missing_keys():
    A = np.diag([1.0, 2.0, 3.0, 1.0])
    v = Volume(np.zeros((1, 2, 3, 4), np.float32), A)
    out = Orientation("RAS")({"image": v})
    assert set(out) == {"image"}
    assert out["image"].array is v.array
    assert Orientation("LPS")({"image": v, "label": None})["label"] is None


@pytest.mark.parametrize("bad", ["RRS", "XYZ", "RA", "RASR"])
def test_bad_codes(bad):
    with pytest.raises(ValueError):
        Orientation(bad)
