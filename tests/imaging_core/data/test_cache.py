import json
import subprocess
import sys

import numpy as np

from imaging_core.data.cache import SiteCache, class_index
from imaging_core.data.datalist import load_datalist, write_datalist
from imaging_core.transforms.base import Compose, Transform

from pathlib import Path

REPO = Path(__file__).resolve().parents[3]


class Scale(Transform):
    """A deterministic stand-in preprocessing step with a config that shows in repr."""

    def __init__(self, factor):
        self.factor = factor

    def __call__(self, data, rng=None):
        out = dict(data)
        out["image"] = data["image"].replace(np.asarray(data["image"].array, np.float32) * self.factor)
        return out


def _site(tmp_path, write_nifti, n=3, bad=()):
    rng = np.random.default_rng(0)
    entries = []
    for i in range(n):
        img = rng.normal(size=(12, 10, 8)).astype(np.float32)
        lab = np.zeros((12, 10, 8), np.uint8)
        lab[3:6, 3:6, 2:5] = 1
        lab[4, 4, 3] = 2
        write_nifti(f"site/imagesTr/c{i}.nii.gz", img)
        write_nifti(f"site/labelsTr/c{i}.nii.gz", lab if i not in bad else lab * 0)
        entries.append({"image": f"imagesTr/c{i}.nii.gz", "label": f"labelsTr/c{i}.nii.gz"})
    entries.append({"image": "imagesTr/missing.nii.gz", "label": "labelsTr/missing.nii.gz"})
    write_datalist(tmp_path / "site/dataset.json", "s", {0: "bg", 1: "a", 2: "b"}, {"0": "CT"},
                   {"training": entries})
    return load_datalist(tmp_path / "site/dataset.json")


def test_build_reuse_memmap_and_bad_cases(tmp_path, write_nifti):
    dl = _site(tmp_path, write_nifti, bad=(1,))
    cache = SiteCache(tmp_path / "cache", Compose([Scale(2.0)]), dl.num_classes)
    rep = cache.build(dl.cases)
    assert sorted(rep.built) == ["c0", "c2"]
    assert set(rep.failed) == {"c1", "missing"}
    assert "label is empty" in rep.failed["c1"] and "labelsTr/c1.nii.gz" in rep.failed["c1"]
    assert "file not found" in rep.failed["missing"]
    item = rep.cases[0].load()
    assert isinstance(item["image"].array, np.memmap) and item["image"].array.dtype == np.float32
    assert item["label"].array.dtype == np.uint8
    assert item["label_index"][2].size == 1
    flat = np.flatnonzero(np.asarray(item["label"].array).reshape(-1) == 1)
    np.testing.assert_array_equal(np.sort(item["label_index"][1]), flat)


def test_entries_built_by_another_process_are_reused(tmp_path, write_nifti):
    dl = _site(tmp_path, write_nifti, n=2)
    script = ("import json, sys\n"
              "from imaging_core.data.cache import SiteCache\n"
              "from imaging_core.data.datalist import load_datalist\n"
              "from imaging_core.transforms.base import Compose\n"
              f"dl = load_datalist({str(dl.path)!r})\n"
              f"rep = SiteCache({str(tmp_path / 'cache')!r}, Compose([]), dl.num_classes).build(dl.cases)\n"
              "print(json.dumps(rep.built))\n")
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                         timeout=120, cwd=REPO)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout.strip().splitlines()[-1]) == ["c0", "c1"]
    rep = SiteCache(tmp_path / "cache", Compose([]), dl.num_classes).build(dl.cases)
    assert rep.built == [] and rep.reused == ["c0", "c1"]


def test_invalidated_by_content_and_config(tmp_path, write_nifti):
    dl = _site(tmp_path, write_nifti, n=2)
    cases = dl.cases[:2]
    c1 = SiteCache(tmp_path / "cache", Compose([Scale(2.0)]), dl.num_classes)
    first = c1.build(cases)
    assert first.built == ["c0", "c1"]
    # same mtime-independent content -> reused; changed content -> rebuilt
    write_nifti("site/imagesTr/c0.nii.gz", np.ones((12, 10, 8), np.float32))
    again = SiteCache(tmp_path / "cache", Compose([Scale(2.0)]), dl.num_classes).build(cases)
    assert again.built == ["c0"] and again.reused == ["c1"]
    np.testing.assert_allclose(again.cases[0].load()["image"].array, 2.0)
    # changed preprocessing config -> every entry rebuilt
    c3 = SiteCache(tmp_path / "cache", Compose([Scale(3.0)]), dl.num_classes)
    rep = c3.build(cases)
    assert rep.built == ["c0", "c1"]
    removed = c3.prune(rep.cases)
    assert len(removed) == 3  # the stale entries of both earlier configs
    assert sorted(p.name for p in (tmp_path / "cache").iterdir() if p.is_dir()) == \
        sorted(c.path.name for c in rep.cases)


def test_crash_mid_write_leaves_nothing(tmp_path, write_nifti, monkeypatch):
    dl = _site(tmp_path, write_nifti, n=1)
    cache = SiteCache(tmp_path / "cache", Compose([]), dl.num_classes)
    real_save, calls = np.save, []

    def flaky_save(path, arr, *a, **k):
        calls.append(path)
        if len(calls) == 2:
            raise OSError("disk full")
        return real_save(path, arr, *a, **k)
    monkeypatch.setattr(np, "save", flaky_save)
    rep = cache.build(dl.cases[:1])
    assert "disk full" in rep.failed["c0"]
    assert [p for p in (tmp_path / "cache").iterdir() if p.is_dir()] == []
    monkeypatch.setattr(np, "save", real_save)
    assert cache.build(dl.cases[:1]).built == ["c0"]


def test_class_index_matches_flatnonzero():
    lab = np.random.default_rng(3).integers(0, 4, (7, 9, 5)).astype(np.uint8)
    idx = class_index(lab, 5)
    for c in range(5):
        np.testing.assert_array_equal(np.sort(idx[c]), np.flatnonzero(lab.reshape(-1) == c))
    assert idx[4].size == 0


def test_another_plans_preprocess_table_rebuilds_the_entries_on_its_grid(tmp_path, write_nifti):
    """[preprocess] = "auto": a new plan's table is a new cache key, so its entries are rebuilt
    (on the new spacing); the same table again reuses them."""
    from imaging_core.config import PreprocessTable
    from imaging_core.transforms.presets import build_preprocess
    dl = _site(tmp_path, write_nifti, n=2)
    cases = dl.cases[:2]

    def build(pixdim):
        pre = build_preprocess(PreprocessTable(pixdim=pixdim, crop_foreground=False), "CT")
        return SiteCache(tmp_path / "cache", pre, dl.num_classes).build(cases)

    assert build([2.0, 2.0, 2.0]).built == ["c0", "c1"]
    assert build([2.0, 2.0, 2.0]).reused == ["c0", "c1"]
    rep = build([3.0, 3.0, 3.0])
    assert rep.built == ["c0", "c1"]
    aff = np.asarray(rep.cases[0].meta()["affine"])
    np.testing.assert_allclose(np.linalg.norm(aff[:3, :3], axis=0), [3.0, 3.0, 3.0])
