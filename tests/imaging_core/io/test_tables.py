"""The one JSON reader / JSON and CSV writers, and the file modes the atomic writer leaves."""
from __future__ import annotations

import csv
import math
import os
import stat

import numpy as np
import pytest

from imaging_core.errors import ImagingError
from imaging_core.io.atomic import write_bytes_atomic
from imaging_core.io.tables import read_json, write_csv, write_json


def test_json_round_trip_keeps_nan_and_numpy(tmp_path):
    p = tmp_path / "a" / "x.json"
    write_json(p, {"v": np.float32(0.5), "n": np.int64(3), "arr": np.arange(3), "nan": math.nan})
    got = read_json(p)
    assert got["v"] == 0.5 and got["n"] == 3 and got["arr"] == [0, 1, 2] and math.isnan(got["nan"])


def test_read_json_names_the_file(tmp_path):
    with pytest.raises(ImagingError, match="missing"):
        read_json(tmp_path / "none.json")
    assert read_json(tmp_path / "none.json", []) == []
    (tmp_path / "bad.json").write_text("{oops")
    with pytest.raises(ImagingError, match="bad.json.*not valid JSON"):
        read_json(tmp_path / "bad.json", {})


def test_csv_columns_are_scalar_keys_in_first_seen_order(tmp_path):
    rows = [{"a": 1, "b": [1, 2], "c": 0.5}, {"a": 2, "d": "x"}]
    write_csv(tmp_path / "t.csv", rows)
    with open(tmp_path / "t.csv") as f:
        got = list(csv.DictReader(f))
    assert list(got[0]) == ["a", "c", "d"]
    assert got[1] == {"a": "2", "c": "", "d": "x"}
    write_csv(tmp_path / "u.csv", rows, fieldnames=["d", "a"])
    assert (tmp_path / "u.csv").read_text().splitlines()[0] == "d,a"


@pytest.fixture
def umask():
    def set_(m):
        old.append(os.umask(m))
    old: list[int] = []
    yield set_
    if old:
        os.umask(old[0])


@pytest.mark.parametrize("mask", [0o022, 0o077, 0o002])
def test_atomic_writes_honour_the_umask(tmp_path, umask, mask):
    umask(mask)
    write_bytes_atomic(tmp_path / "f.bin", b"x")
    write_csv(tmp_path / "f.csv", [{"a": 1}])
    with open(tmp_path / "plain", "w"):
        pass  # what any tool would have made
    want = stat.S_IMODE((tmp_path / "plain").stat().st_mode)
    assert want == 0o666 & ~mask
    for name in ("f.bin", "f.csv"):
        assert stat.S_IMODE((tmp_path / name).stat().st_mode) == want, name


def test_an_explicit_mode_wins_over_the_umask(tmp_path, umask):
    umask(0o022)
    write_json(tmp_path / "secret.json", {"k": 1}, mode=0o600)
    assert stat.S_IMODE((tmp_path / "secret.json").stat().st_mode) == 0o600
    write_bytes_atomic(tmp_path / "secret.json", b"{}")  # rewritten without a mode: the umask's
    assert stat.S_IMODE((tmp_path / "secret.json").stat().st_mode) == 0o644


def test_nifti_output_is_readable_by_the_group_like_any_tool_writes_it(tmp_path, umask):
    from imaging_core.io import save_volume
    from imaging_core.io.volume import Volume
    umask(0o022)
    save_volume(Volume(np.zeros((1, 4, 4, 4), np.uint8), np.eye(4)), tmp_path / "seg.nii.gz")
    assert stat.S_IMODE((tmp_path / "seg.nii.gz").stat().st_mode) == 0o644
