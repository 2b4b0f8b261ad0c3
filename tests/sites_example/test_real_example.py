"""The real-anatomy rehearsal federation (sites_example/real): ICBM152 anatomy from
nilearn's wheel, deterministic simulated subjects and scanners, one held-out site."""
import dataclasses
import importlib.util

import nibabel as nib
import numpy as np
import pytest

from fl_common.config import load_federation
from imaging_core.data.checks import check_pair
from imaging_core.data.datalist import load_datalist
from imaging_core.io import load_volume

if importlib.util.find_spec("nilearn") is None:
    pytest.skip("nilearn (ships the ICBM152 template) is not installed", allow_module_level=True)

from sites_example.real.generate import LABELS, SITES, federation_path, generate, make_case, site_grid  # noqa: E402

BY_NAME = {s.name: s for s in SITES}


def tiny(site, **kw):
    """The site's scanner conventions on a coarse grid: the same code, a test-sized volume."""
    return dataclasses.replace(site, spacing=(4.0, 4.0, 4.0), **kw)


def test_sites_have_the_promised_orientation_spacing_and_background():
    roles = [s.role for s in SITES]
    assert roles.count("site") >= 3 and roles.count("coordinator") == 1
    for s in SITES:
        aff, shape = site_grid(s)
        assert "".join(nib.aff2axcodes(aff)) == s.axcodes
        np.testing.assert_allclose(np.linalg.norm(aff[:3, :3], axis=0), s.spacing, atol=1e-9)
        assert min(shape) > 20
    assert {s.axcodes for s in SITES} >= {"RAS", "LPS", "LSA"}
    assert any(max(s.spacing) / min(s.spacing) >= 2 for s in SITES)            # thick slices
    assert BY_NAME["heldout"].background == "zero"                            # issue 16's unseen site
    assert all(s.background == "rician" for s in SITES if s.role == "site")


def test_background_conventions_and_labels_on_real_anatomy():
    zero = make_case(tiny(BY_NAME["heldout"]), 0)
    noisy = make_case(tiny(BY_NAME["site_b"]), 0)
    for img, lab in (zero, noisy):
        check_pair(img, lab)
        counts = np.bincount(lab.array.ravel(), minlength=3)
        assert counts.size == 3 and counts[1] > 0 and counts[2] > 0           # grey and white matter
        assert (img.array[lab.array > 0] > 0).all()                           # labels lie on signal
    assert (zero[0].array == 0).mean() > 0.5                                  # zero-filled air
    assert (noisy[0].array == 0).mean() < 0.01                                # magnitude noise in the air


def test_generator_is_deterministic_and_subjects_differ():
    s = tiny(BY_NAME["site_c"])
    a, b, c = make_case(s, 0), make_case(s, 0), make_case(s, 1)
    np.testing.assert_array_equal(a[0].array, b[0].array)
    np.testing.assert_array_equal(a[1].array, b[1].array)
    assert (a[1].array != c[1].array).mean() > 0.02                           # another subject's anatomy
    assert not np.array_equal(make_case(s, 0, seed=1)[0].array, a[0].array)


def test_federation_toml_loads_and_holds_the_site_out(tmp_path):
    sites = [tiny(s, n_train=min(s.n_train, 1)) for s in SITES]
    generate(tmp_path, sites=sites)
    fed = load_federation(federation_path(), data_base=tmp_path)
    train = [s.name for s in fed.sites]
    assert len(train) >= 3 and fed.coordinator.name == "heldout" and "heldout" not in train
    assert fed.labels == LABELS
    rule = fed.preprocess.intensity["MR"]
    assert rule.kind == "zscore" and rule.mask == "head"
    for site in fed.all_sites:
        assert site.modality == "MR"
        dl = load_datalist(site.datalist_path)
        assert dl.labels == LABELS
        assert len(dl.split("training")) == (0 if site.name == "heldout" else 1)
        case = dl.split("validation")[0]
        img = load_volume(case.image)
        assert "".join(nib.aff2axcodes(img.affine)) == BY_NAME[site.name].axcodes
