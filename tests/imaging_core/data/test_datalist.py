import json

import numpy as np
import pytest

from imaging_core.data.checks import check_label, check_pair
from imaging_core.data.datalist import load_datalist
from imaging_core.errors import ImagingError
from imaging_core.io import Volume


def _dl(tmp_path, doc):
    p = tmp_path / "site" / "dataset.json"
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(json.dumps(doc))
    return p


def test_msd_datalist_parses(tmp_path):
    p = _dl(tmp_path, {"labels": {"0": "background", "1": "organ", "2": "lesion"},
                       "training": [{"image": "imagesTr/a.nii.gz", "label": "labelsTr/a.nii.gz"}],
                       "validation": [{"image": "imagesTr/dcm_b", "label": "labelsTr/b.nii.gz"}],
                       "test": ["imagesTs/c.nii.gz"]})
    dl = load_datalist(p)
    assert dl.num_classes == 3
    assert [c.case_id for c in dl.cases] == ["a", "dcm_b", "c"]
    assert dl.cases[0].image == (tmp_path / "site" / "imagesTr/a.nii.gz").resolve()
    assert dl.split("test")[0].label is None


@pytest.mark.parametrize("bad, fragment", [
    ("../other_site/x.nii.gz", "outside the site root"),
    ("imagesTr/../../x.nii.gz", "outside the site root"),
    ("/etc/passwd", "absolute path"),
])
def test_paths_outside_root_refused(tmp_path, bad, fragment):
    p = _dl(tmp_path, {"training": [{"image": bad, "label": "l.nii.gz"}]})
    with pytest.raises(ImagingError) as e:
        load_datalist(p)
    assert str(p) in str(e.value) and fragment in str(e.value)


def test_structural_errors(tmp_path):
    with pytest.raises(ImagingError, match="not valid JSON"):
        p = tmp_path / "d.json"
        p.write_text("{")
        load_datalist(p)
    with pytest.raises(ImagingError, match="training case has no 'label'"):
        load_datalist(_dl(tmp_path, {"training": [{"image": "a.nii.gz"}]}))
    with pytest.raises(ImagingError, match="duplicate case id"):
        load_datalist(_dl(tmp_path, {"training": [{"image": "a.nii.gz", "label": "x"},
                                                   {"image": "a.nii.gz", "label": "y"}]}))
    with pytest.raises(ImagingError, match="datalist not found"):
        load_datalist(tmp_path / "none.json")


def _vol(arr, aff=None, src="lab.nii.gz"):
    return Volume(np.asarray(arr)[None], np.eye(4) if aff is None else aff, {"source": src})


def test_label_checks():
    ok = np.zeros((4, 4, 4), np.int16)
    ok[1, 1, 1] = 2
    assert check_label(_vol(ok), 3).dtype == np.uint8
    with pytest.raises(ImagingError, match="lab.nii.gz: label values span \\[0, 2\\]"):
        check_label(_vol(ok), 2)
    neg = ok.copy()
    neg[0, 0, 0] = -1
    with pytest.raises(ImagingError, match="span \\[-1, 2\\]"):
        check_label(_vol(neg), 3)
    with pytest.raises(ImagingError, match="non-integer"):
        check_label(_vol(ok.astype(np.float32) * 0.3), 3)
    with pytest.raises(ImagingError, match="label is empty"):
        check_label(_vol(np.zeros((4, 4, 4), np.uint8)), 3)


def test_pair_checks():
    img = _vol(np.zeros((4, 4, 4)), src="img.nii.gz")
    with pytest.raises(ImagingError, match="lab.nii.gz: label shape \\(4, 4, 5\\) does not match"):
        check_pair(img, _vol(np.zeros((4, 4, 5))))
    shifted = np.eye(4)
    shifted[0, 3] = 2.0
    with pytest.raises(ImagingError, match="label affine differs"):
        check_pair(img, _vol(np.zeros((4, 4, 4)), shifted))
    check_pair(img, _vol(np.zeros((4, 4, 4))))
