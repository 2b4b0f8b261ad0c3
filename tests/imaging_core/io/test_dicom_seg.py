"""DICOM SEG and .seg.nrrd: written from a label map on a real DICOM series' grid,
read back with highdicom / pydicom / pynrrd, geometry and voxels equal to the NIfTI."""
from __future__ import annotations

import numpy as np
import pytest

LABELS = {"0": "background", "1": "organ", "2": "lesion"}


def _series(tmp_path):
    """A small CT series (LPS, 1.5 x 1.25 x 3 mm, files in random order) and a label map
    on its grid, as the loader reads it back."""
    from imaging_core.io import Volume, load_volume
    from imaging_core.io.dicom_write import write_dicom_series
    shape = (24, 20, 9)
    aff = np.array([[-1.5, 0, 0, 40.0], [0, -1.25, 0, 30.0], [0, 0, 3.0, -12.0], [0, 0, 0, 1]])
    img = np.random.default_rng(0).integers(-100, 200, size=shape).astype(np.float32)
    write_dicom_series(Volume(img[None], aff, {}), tmp_path / "dcm", modality="CT")
    vol = load_volume(tmp_path / "dcm")
    lab = np.zeros(vol.spatial_shape, np.uint8)
    lab[3:15, 4:12, 1:7] = 1
    lab[6:9, 6:9, 2:4] = 2
    lab[20, 2, 8] = 1  # a lone voxel near a corner: the row/column order must be right
    return vol, Volume(lab[None], vol.affine, {"source": "pred"})


def _in_hd_order(ours: np.ndarray, ras_affine: np.ndarray, hd_lps_affine: np.ndarray, hd_shape):
    """``ours`` (X, Y, Z on ras_affine) resampled by index onto highdicom's volume grid."""
    m = np.linalg.inv(hd_lps_affine) @ np.diag([-1.0, -1.0, 1.0, 1.0]) @ ras_affine
    assert np.allclose(np.abs(m[:3, :3]).sum(0), 1, atol=1e-4)  # the same grid, axes permuted/flipped
    idx = np.indices(ours.shape).reshape(3, -1)
    hd_idx = np.rint(m[:3, :3] @ idx + m[:3, 3:4]).astype(int)
    inside = np.all((hd_idx >= 0) & (hd_idx < np.asarray(hd_shape)[:, None]), axis=0)
    assert not ours.reshape(-1)[~inside].any()  # highdicom's volume spans the non-empty frames only
    out = np.zeros(hd_shape, ours.dtype)
    out[tuple(hd_idx[:, inside])] = ours.reshape(-1)[inside]
    return out


def test_dicom_seg_round_trip(tmp_path):
    import highdicom as hd
    import nibabel as nib
    import pydicom
    from imaging_core.io import save_volume
    from imaging_core.io.dicom_seg import write_dicom_seg
    vol, lab = _series(tmp_path)
    nii = save_volume(lab, tmp_path / "seg.nii.gz", dtype=np.uint8)
    out = write_dicom_seg(lab, tmp_path / "dcm", tmp_path / "seg.dcm", LABELS, algorithm=("liver-net", "1.2.0"),
                          series_uid=vol.meta["series_uid"])
    ds = pydicom.dcmread(out)
    assert ds.Modality == "SEG" and ds.SegmentationType == "BINARY"
    assert ds.ReferencedSeriesSequence[0].SeriesInstanceUID == vol.meta["series_uid"]
    src_uids = {pydicom.dcmread(f).SOPInstanceUID for f in (tmp_path / "dcm").iterdir()}
    assert {r.ReferencedSOPInstanceUID for r in ds.ReferencedSeriesSequence[0].ReferencedInstanceSequence} == src_uids
    seg_items = {int(s.SegmentNumber): s for s in ds.SegmentSequence}
    assert [seg_items[k].SegmentLabel for k in (1, 2)] == ["organ", "lesion"]
    organ, lesion = seg_items[1], seg_items[2]
    assert organ.SegmentedPropertyTypeCodeSequence[0].CodeValue == "91772007"  # SCT Organ
    assert organ.SegmentedPropertyCategoryCodeSequence[0].CodeValue == "91723000"  # anatomical structure
    assert lesion.SegmentedPropertyTypeCodeSequence[0].CodeValue == "52988006"  # SCT Lesion
    assert lesion.SegmentedPropertyCategoryCodeSequence[0].CodeValue == "49755003"  # abnormal structure
    assert organ.SegmentAlgorithmType == "AUTOMATIC" and organ.SegmentAlgorithmName == "liver-net"
    assert "1.2.0" in list(ds.SoftwareVersions)

    seg = hd.seg.segread(out)
    got = seg.get_volume(combine_segments=True)
    ref = nib.load(nii)
    expected = _in_hd_order(np.asarray(ref.dataobj), ref.affine, got.affine, got.array.shape)
    np.testing.assert_array_equal(np.asarray(got.array), expected)
    assert int((np.asarray(got.array) == 1).sum()) == int((np.asarray(ref.dataobj) == 1).sum())


def test_seg_nrrd_for_slicer(tmp_path):
    import nrrd
    from imaging_core.io import load_volume
    from imaging_core.io.seg_nrrd import write_seg_nrrd
    _, lab = _series(tmp_path)
    out = write_seg_nrrd(lab, tmp_path / "pred.seg.nrrd", LABELS)
    _, hdr = nrrd.read(str(out))
    assert hdr["Segment0_Name"] == "organ" and hdr["Segment1_Name"] == "lesion"
    assert hdr["Segment1_LabelValue"] == "2" and hdr["Segmentation_MasterRepresentation"] == "Binary labelmap"
    assert hdr["Segment1_Extent"] == "6 8 6 8 2 3"
    back = load_volume(out)
    np.testing.assert_allclose(back.affine, lab.affine, atol=1e-6)
    np.testing.assert_array_equal(back.array[0], lab.array[0])


def test_refuses_label_map_off_the_series_grid(tmp_path):
    from imaging_core.errors import ImagingError
    from imaging_core.io import Volume
    from imaging_core.io.dicom_seg import write_dicom_seg
    _, lab = _series(tmp_path)
    moved = lab.affine.copy()
    moved[:3, 3] += 0.7
    with pytest.raises(ImagingError, match="not on the label map's grid"):
        write_dicom_seg(Volume(lab.array, moved, {}), tmp_path / "dcm", tmp_path / "bad.dcm", LABELS)
    assert not (tmp_path / "bad.dcm").exists()


def test_empty_label_map_still_writes_a_seg(tmp_path):
    import pydicom
    from imaging_core.io import Volume
    from imaging_core.io.dicom_seg import write_dicom_seg
    vol, lab = _series(tmp_path)
    out = write_dicom_seg(Volume(np.zeros_like(lab.array), lab.affine, {}), tmp_path / "dcm", tmp_path / "e.dcm",
                          LABELS)
    ds = pydicom.dcmread(out)
    assert ds.Modality == "SEG" and len(ds.SegmentSequence) == 2


def test_fedvox_infer_writes_seg_and_nrrd_beside_the_nifti(tmp_path):
    """`fedvox infer BUNDLE DICOM --dicom-seg --seg-nrrd`: the three outputs say the same."""
    import highdicom as hd
    import nibabel as nib
    import torch
    from fl_server.cli import main
    from imaging_core.bundle.export import export_bundle
    from imaging_core.io import load_volume
    from imaging_core.nets.unet3d import unet_from_config
    from imaging_core.task import float_state
    model = {"name": "unet3d", "channels": [4, 8], "strides": [2], "num_res_units": 1}
    contract = {"orientation": "RAS", "pixdim": [3.0, 3.0, 3.0], "intensity": {"CT": {"kind": "window",
                "a_min": -100.0, "a_max": 200.0}}, "modality": "CT", "crop_foreground": False,
                "labels": LABELS, "roi_size": [16, 16, 16], "overlap": 0.25, "sw_batch_size": 2}
    torch.manual_seed(0)
    net = unet_from_config({**model, "in_channels": 1, "out_channels": 3})
    bundle = export_bundle(float_state(net), model, contract, {"run_id": "t", "sites": []}, tmp_path / "organ_bundle")
    vol, _ = _series(tmp_path)
    rc = main(["infer", str(bundle), str(tmp_path / "dcm"), "--out", str(tmp_path / "p.nii.gz"), "--quiet",
               "--allow-unsigned", "--dicom-seg", str(tmp_path / "p.dcm"), "--seg-nrrd", str(tmp_path / "p.seg.nrrd")])
    assert rc == 0
    ref = nib.load(tmp_path / "p.nii.gz")
    labels = np.asarray(ref.dataobj)
    seg = hd.seg.segread(tmp_path / "p.dcm")
    assert seg.SegmentSequence[0].SegmentAlgorithmName == "organ_bundle"
    assert seg.ReferencedSeriesSequence[0].SeriesInstanceUID == vol.meta["series_uid"]
    assert labels.any() and labels.min() == 0  # a random net's map: something to compare
    got = seg.get_volume(combine_segments=True)
    expected = _in_hd_order(labels, ref.affine, got.affine, got.array.shape)
    np.testing.assert_array_equal(np.asarray(got.array), expected)
    back = load_volume(tmp_path / "p.seg.nrrd")
    np.testing.assert_array_equal(back.array[0], labels)
    np.testing.assert_allclose(back.affine, ref.affine, atol=1e-4)
