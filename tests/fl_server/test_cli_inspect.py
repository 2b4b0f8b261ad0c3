import json

import numpy as np


def test_inspect_nifti_label(cli, write_nifti):
    lab = np.zeros((6, 5, 4), np.uint8)
    lab[1:3, 1:3, 1:3] = 1
    lab[0, 0, 0] = 2
    p = write_nifti("lab.nii.gz", lab)
    r = cli("inspect", p)
    assert r.returncode == 0, r.stderr
    info = json.loads(r.stdout)
    assert info["shape"] == [6, 5, 4] and info["orientation"] == "LPS"
    assert info["spacing"] == [0.8, 0.8, 2.5] and info["dtype"] == "uint8"
    assert info["label_classes"] == {"0": 111, "1": 8, "2": 1}
    assert len(info["affine"]) == 4 and info["intensity"] == {"min": 0.0, "max": 2.0}


def test_inspect_datalist_and_dicom(cli, example_sites):
    r = cli("inspect", example_sites / "hospital_b" / "dataset.json")
    assert r.returncode == 0, r.stderr
    info = json.loads(r.stdout)
    assert info["kind"] == "datalist" and info["errors"] == 0
    assert all(c["status"] == "ok" for c in info["cases"])
    series = example_sites / "hospital_b" / info["cases"][0]["image"]
    r = cli("inspect", series)
    assert r.returncode == 0, r.stderr
    info = json.loads(r.stdout)
    assert info["format"] == "dicom" and info["modality"] == "CT" and info["n_slices"] == info["shape"][2]


def test_inspect_bad_inputs_one_line(cli, tmp_path, write_nifti, example_sites):
    junk = tmp_path / "junk.nii.gz"
    junk.write_bytes(b"not gzip at all")
    r = cli("inspect", junk)
    assert r.returncode != 0 and r.stdout == ""
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and str(junk) in lines[0] and "gzip" in lines[0]
    assert "Traceback" not in r.stderr
    r = cli("inspect", tmp_path / "missing.nii")
    assert r.returncode != 0 and "file not found" in r.stderr and len(r.stderr.strip().splitlines()) == 1
    # a datalist with one broken case: reported per case, not fatal
    import shutil
    site = tmp_path / "site"
    shutil.copytree(example_sites / "hospital_a", site)
    dl = json.loads((site / "dataset.json").read_text())
    (site / dl["training"][0]["label"]).write_bytes(b"\x1f\x8b broken")
    r = cli("inspect", site / "dataset.json")
    info = json.loads(r.stdout)
    assert r.returncode == 0 and info["errors"] == 1
    bad = [c for c in info["cases"] if c["status"] == "error"][0]
    assert dl["training"][0]["label"] in bad["error"]


def test_server_and_site_with_a_wrong_kit_give_one_line(cli, tmp_path):
    for args in (("site", "--kit", tmp_path / "nokit", "--keys", tmp_path / "keys", "--data", tmp_path),
                 ("server", "--provision", tmp_path / "noprov", "--federation", tmp_path / "f.toml",
                  "--run-dir", tmp_path / "run")):
        r = cli(*args)
        assert r.returncode != 0
        lines = r.stderr.strip().splitlines()
        assert len(lines) == 1 and str(tmp_path) in lines[0] and "Traceback" not in r.stderr


def test_demo_and_worker_with_missing_site_data_give_one_line(cli, tmp_path):
    """A wrong --data-base is found before anything is provisioned or started."""
    import sys
    from fl_common.config import example_federation_path
    fed, work = example_federation_path(), tmp_path / "demo"
    r = cli("demo", "--work", work, "--federation", fed, "--data-base", tmp_path / "nodata")
    lines = r.stderr.strip().splitlines()
    assert r.returncode != 0 and len(lines) == 1 and "Traceback" not in r.stderr
    assert "hospital_a/dataset.json" in lines[0] and "datalist not found" in lines[0]
    assert not work.exists()
    # the site worker on its own (what `fedvox site` starts) says the same in one line
    import subprocess
    r = subprocess.run([sys.executable, "-m", "fl_client.worker_server", "--federation", fed,
                        "--site", fed.parent / "sites" / "hospital_a.toml", "--data-base", tmp_path / "nodata",
                        "--work", tmp_path / "w", "--socket", tmp_path / "w.sock"],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert r.stderr.strip().startswith("fedvox site worker hospital_a:") and "datalist not found" in r.stderr
