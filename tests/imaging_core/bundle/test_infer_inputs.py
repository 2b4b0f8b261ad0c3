"""`fedvox infer` checks the input against the bundle (modality, intensity, spacing),
each mismatch one clear error unless forced; folder in / folder out; --series-uid."""
from __future__ import annotations

import shutil

import nibabel as nib
import numpy as np
import pytest

from fl_common.crypto.signing import MANIFEST_SIGNATURES as SIG
from imaging_core.errors import ImagingError

from .test_bundle import CONTRACT, MODEL, PROVENANCE, _lps_affine, _net, _phantom_nifti


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    from imaging_core.bundle.export import export_bundle
    from imaging_core.task import float_state
    out = tmp_path_factory.mktemp("b") / "bundle"
    contract = {**CONTRACT, "postprocess": {"chain": ["largest_component"]}}
    return export_bundle(float_state(_net()), MODEL, contract, PROVENANCE, out)


def _infer(bundle, img, out, **kw):
    from imaging_core.bundle.infer import infer_file
    return infer_file(bundle, img, out, progress=False, allow_unsigned=True, scheme=SIG, **kw)


def test_ct_not_in_hounsfield_units_is_refused_unless_forced(bundle, tmp_path):
    src = _phantom_nifti(tmp_path / "hu.nii.gz", _lps_affine())
    raw = np.asarray(nib.load(src).dataobj).astype(np.int16) + 1024  # rescale intercept lost
    nib.save(nib.Nifti1Image(raw, _lps_affine()), tmp_path / "raw.nii.gz")
    with pytest.raises(ImagingError, match=r"raw\.nii\.gz: .*Hounsfield.*--force intensity"):
        _infer(bundle, tmp_path / "raw.nii.gz", tmp_path / "o.nii.gz")
    assert not (tmp_path / "o.nii.gz").exists()
    assert _infer(bundle, tmp_path / "raw.nii.gz", tmp_path / "o.nii.gz", force=("intensity",)).is_file()
    assert _infer(bundle, src, tmp_path / "ok.nii.gz").is_file()  # the HU original passes


def test_spacing_far_from_the_bundles_is_refused_unless_forced(bundle, tmp_path):
    fine = _phantom_nifti(tmp_path / "fine.nii.gz", np.diag([0.5, 0.5, 0.5, 1.0]))  # bundle: 4 mm
    with pytest.raises(ImagingError, match=r"fine\.nii\.gz: voxel spacing 0\.5 x 0\.5 x 0\.5 mm .*4 x 4 x 4"):
        _infer(bundle, fine, tmp_path / "o.nii.gz")
    assert _infer(bundle, fine, tmp_path / "o.nii.gz", force=("all",)).is_file()


def test_dicom_modality_must_match_the_bundles(bundle, tmp_path):
    from imaging_core.io import load_volume
    from imaging_core.io.dicom_write import write_dicom_series
    vol = load_volume(_phantom_nifti(tmp_path / "x.nii.gz", _lps_affine((2.5, 2.5, 5.0))))
    write_dicom_series(vol, tmp_path / "mr", modality="MR")
    # the bundle knows MR: the header's modality picks its preprocessing
    assert _infer(bundle, tmp_path / "mr", tmp_path / "mr.nii.gz").is_file()
    with pytest.raises(ImagingError, match=r"mr: DICOM Modality \(0008,0060\) is 'MR' but .* as 'CT'"):
        _infer(bundle, tmp_path / "mr", tmp_path / "o.nii.gz", modality="CT")
    assert _infer(bundle, tmp_path / "mr", tmp_path / "o.nii.gz", modality="CT", force=("modality",)).is_file()


def test_folder_in_folder_out_and_series_uid(bundle, tmp_path):
    from imaging_core.bundle.infer import infer_folder
    from imaging_core.io import load_volume
    from imaging_core.io.dicom_write import write_dicom_series
    d = tmp_path / "in"
    for i in range(2):
        _phantom_nifti(d / f"case{i}.nii.gz", _lps_affine(), seed=i)
        (d / f"case{i}_label.nii.gz").unlink()
    vol = load_volume(d / "case0.nii.gz")
    write_dicom_series(vol, d / "study", series_uid="1.2.826.0.1.3680043.10.1.1")
    outs = infer_folder(bundle, d, tmp_path / "out", progress=False, allow_unsigned=True, scheme=SIG)
    assert [p.name for p in outs] == ["case0_seg.nii.gz", "case1_seg.nii.gz", "study_seg.nii.gz"]
    for p in outs:
        assert nib.load(p).shape == vol.spatial_shape
    # two series in one folder: one clear error listing them, --series-uid picks one
    two = tmp_path / "two"
    write_dicom_series(vol, two, series_uid="1.2.826.0.1.3680043.10.1.2")
    write_dicom_series(vol, two, series_uid="1.2.826.0.1.3680043.10.1.3", modality="MR")
    with pytest.raises(ImagingError, match="2 DICOM series found"):
        _infer(bundle, two, tmp_path / "x.nii.gz")
    got = _infer(bundle, two, tmp_path / "x.nii.gz", series_uid="1.2.826.0.1.3680043.10.1.2")
    assert nib.load(got).shape == vol.spatial_shape
    # a bad input in a folder stops the run before anything is written
    shutil.copy(tmp_path / "x.nii.gz", d / "notanimage.nii.gz")
    (d / "notanimage.nii.gz").write_bytes(b"junk")
    with pytest.raises(ImagingError, match="notanimage"):
        infer_folder(bundle, d, tmp_path / "out2", progress=False, allow_unsigned=True, scheme=SIG)
    assert not (tmp_path / "out2").exists()


def test_unexportable_steps_are_refused_with_the_reason(tmp_path):
    from imaging_core.bundle.configs import UnexportableStep
    from imaging_core.bundle.export import export_bundle
    from imaging_core.task import float_state
    for step, why in (("crf", "compiled extension"), ({"name": "remove_small", "min_voxels": 5}, "label value")):
        with pytest.raises(UnexportableStep, match=why):
            export_bundle(float_state(_net()), MODEL, {**CONTRACT, "postprocess": {"chain": [step]}}, PROVENANCE,
                          tmp_path / "b")
    assert not (tmp_path / "b").exists()


def test_largest_component_chain_in_inference_json(bundle):
    import json
    inf = json.loads((bundle / "configs" / "inference.json").read_text())
    step = inf["postprocessing"]["transforms"][1]
    assert step == {"_target_": "KeepLargestConnectedComponentd", "keys": "pred", "applied_labels": [1, 2],
                    "is_onehot": False, "independent": True, "connectivity": None}
    meta = json.loads((bundle / "configs" / "metadata.json").read_text())
    assert "scikit-image" in meta["required_packages_version"]  # MONAI's components need it
    assert "largest_component" in (bundle / "docs" / "README.md").read_text()
