import json

import numpy as np

from imaging_core.plan.fingerprint import fingerprint_site
from imaging_core.plan.layout import Layout, hist_percentile


def test_fingerprint_counts_and_geometry(site_writer):
    dl = site_writer("a", modality="CT", n=2, shape=(20, 18, 12), spacing=(0.8, 0.8, 2.5), axcodes="LPS",
                     labels=(1, 2))
    fp = fingerprint_site(dl, "CT")
    parts = Layout("CT").unpack(fp.vector)
    assert parts["cases"][0] == 2 and parts["skipped"][0] == 0
    # every voxel lands in exactly one whole-image bin; foreground = label > 0
    assert parts["hist_all"].sum() == 2 * 20 * 18 * 12
    assert parts["hist_fg"].sum() == parts["label_voxels"][1:].sum()
    assert parts["label_cases"][1] == 2 and parts["label_cases"][2] == 2
    assert parts["label_components"][1] == 2        # one blob per case
    c = fp.cases[0]
    assert c.spacing == [0.8, 0.8, 2.5] and c.orientation == "LPS" and c.shape == [20, 18, 12]
    # air at -1000 and tissue at +40 read back from the fixed-edge histogram
    assert hist_percentile(parts["hist_all"], "CT", 10) < -900
    assert 0 < hist_percentile(parts["hist_fg"], "CT", 50) < 80
    assert fp.summary["label_values"] == [0, 1, 2] and fp.summary["background"] == "noisy"
    # what leaves: no per-case records
    reply = fp.to_reply()
    assert set(reply) == {"version", "site", "modality", "vector", "categorical", "summary"}
    assert len(reply["vector"]) == Layout("CT").size


def test_zero_background_and_small_counts(site_writer):
    fp = fingerprint_site(site_writer("z", modality="MR", n=2, background="zero"), "MR")
    assert fp.summary["background"] == "zero-filled"
    assert Layout("MR").unpack(fp.vector)["zero_min"][0] == 2
    # 2 cases in one orientation: below SMALL_COUNT, so is their "other": neither leaves, nor the name
    assert fp.categorical["orientation"] == {}
    assert fp.summary["orientations"] == [] and fp.summary["orientation"] is None


def test_bad_case_is_skipped_and_named(site_writer):
    dl = site_writer("b", n=3)
    (dl.parent / "img" / "c1.nii.gz").write_bytes(b"not a nifti")
    fp = fingerprint_site(dl, "MR")
    assert list(fp.skipped) == ["c1"] and fp.summary["skipped"] == 1 and fp.summary["cases"] == 2
    assert "c1.nii.gz" in fp.skipped["c1"]
    assert Layout("MR").unpack(fp.vector)["skipped"][0] == 1


def test_dicom_series_scanner_and_hu(tmp_path):
    from imaging_core.io import Volume, save_volume
    from imaging_core.io.dicom_write import write_dicom_series
    rng = np.random.default_rng(0)
    x = (-1000 + rng.normal(0, 5, (1, 16, 16, 8))).astype(np.float32)
    x[0, 4:12, 4:12, 2:6] = 40.0
    lab = np.zeros_like(x, dtype=np.uint8)
    lab[0, 5:9, 5:9, 3:5] = 1
    aff = np.diag([0.8, 0.8, 2.5, 1.0])
    write_dicom_series(Volume(x, aff), tmp_path / "img" / "c0", modality="CT", rescale_intercept=-1024.0)
    save_volume(Volume(lab, aff), tmp_path / "c0_seg.nii.gz")
    (tmp_path / "dataset.json").write_text(json.dumps({"training": [{"image": "img/c0", "label": "c0_seg.nii.gz"}]}))
    fp = fingerprint_site(tmp_path / "dataset.json", "CT")
    assert fp.cases[0].scanner.startswith("fedvox|") and fp.summary["whole"]["0.5"] < -900
    assert fp.categorical["scanner"] == {}   # one case: below the small-count bound, not even as "other"
