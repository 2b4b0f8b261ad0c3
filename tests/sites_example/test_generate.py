import hashlib
import json

import numpy as np

from imaging_core.data.checks import check_label, check_pair
from imaging_core.data.datalist import load_datalist
from imaging_core.io import load_volume
from sites_example.generate import SITES, make_case


def test_federation_layout_and_scanner_differences(example_sites):
    manifest = json.loads((example_sites / "federation_manifest.json").read_text())
    roles = [s["role"] for s in manifest["sites"].values()]
    assert roles.count("site") >= 3 and roles.count("coordinator") == 1
    storages = {s["storage"] for s in manifest["sites"].values()}
    assert storages == {"nifti", "dicom"}
    seen = {}
    for spec in SITES:
        dl = load_datalist(example_sites / spec.name / "dataset.json")
        assert dl.labels == {0: "background", 1: "organ", 2: "lesion"}
        assert len(dl.split("validation")) >= 1
        if spec.role == "site":
            assert len(dl.split("training")) >= 2
        case = dl.cases[0]
        img, lab = load_volume(case.image), load_volume(case.label)
        check_pair(img, lab)
        counts = np.bincount(check_label(lab, 3).reshape(-1), minlength=3)
        assert counts[1] > 0 and counts[2] > 0 and counts[2] < counts[1] / 5  # a small lesion
        if spec.storage == "dicom":
            assert case.image.is_dir() and img.meta["format"] == "dicom"
        seen[spec.name] = (tuple(np.round(img.spacing, 3)), img.orientation, img.array.dtype)
    assert len({s[0] for s in seen.values()}) == len(seen)  # every scanner has its own spacing
    assert len({s[1] for s in seen.values()}) >= 2          # and not all the same orientation


def test_generator_is_deterministic():
    a_img, a_lab, _ = make_case(SITES[2], 1, 1.0, seed=7)
    b_img, b_lab, _ = make_case(SITES[2], 1, 1.0, seed=7)
    c_img, _, _ = make_case(SITES[2], 1, 1.0, seed=8)
    assert hashlib.sha256(a_img.array.tobytes()).digest() == hashlib.sha256(b_img.array.tobytes()).digest()
    np.testing.assert_array_equal(a_lab.array, b_lab.array)
    assert not np.array_equal(a_img.array, c_img.array)


def test_zoom_is_a_size_knob():
    small, _, _ = make_case(SITES[0], 0, 1.0, seed=0)
    big, _, _ = make_case(SITES[0], 0, 2.0, seed=0)
    assert all(b >= 2 * s - 1 for s, b in zip(small.spatial_shape, big.spatial_shape))
