"""Build machinery: the CPU build is exercised by every other test here (the
module-scoped `ops` fixture); these check the CUDA compile-only path and the
error messages."""
import os
import subprocess
import sys
import time

import pytest
import torch

from imaging_core.postprocess import build


def test_cuda_sources_compile_to_objects(tmp_path):
    if build.find_nvcc() is None:
        pytest.skip("nvcc not found (no CUDA toolkit on this machine): CUDA sources not compiled")
    t0 = time.perf_counter()
    res = subprocess.run([sys.executable, "-m", "imaging_core.postprocess.build",
                          "--cuda-objects", str(tmp_path)], capture_output=True, text=True,
                         timeout=240)
    assert res.returncode == 0, res.stderr
    objs = list(tmp_path.glob("*.o"))
    assert [o.name for o in objs] == ["ops_cuda.o"] and objs[0].stat().st_size > 0
    assert time.perf_counter() - t0 < 240


def test_missing_compiler_is_a_clear_error(monkeypatch):
    monkeypatch.setenv("CXX", "no-such-compiler-xyz")
    with pytest.raises(build.OpsBuildError, match="no C\\+\\+ compiler found"):
        build._check_toolchain(with_cuda=False)


def test_missing_sources_is_a_clear_error(monkeypatch, tmp_path):
    monkeypatch.setattr(build, "CSRC", tmp_path)
    with pytest.raises(build.OpsBuildError, match="sources not found"):
        build._check_toolchain(with_cuda=False)


def test_cache_dir_is_per_torch_version(monkeypatch, tmp_path):
    monkeypatch.setenv("FEDVOX_OPS_CACHE", str(tmp_path))
    d = build.cache_dir(with_cuda=False)
    assert d.parent == tmp_path
    assert d.name.startswith(f"ops-{torch.__version__.replace('+', '_')}-")
    assert build.cache_dir(with_cuda=True).name.endswith("-cuda")


def test_loaded_ops_report_their_build(ops):
    info = build.load_info()
    assert os.path.isdir(info["dir"]) and info["cuda"] == torch.cuda.is_available()
    assert bool(ops.has_cuda()) == info["cuda"]


def test_wheel_carries_every_csrc_file(tmp_path):
    """csrc/ lies outside the packages: the wheel must carry it as data
    (share/fedvox/csrc), or an installed site could not build its ops."""
    import shutil
    import zipfile
    from pathlib import Path
    pytest.importorskip("setuptools")
    repo = Path(__file__).resolve().parents[3]
    src = tmp_path / "src"  # build from a copy: an in-tree build would leave build/ behind
    shutil.copytree(repo, src, ignore=shutil.ignore_patterns(".git", ".venv", "work", "tests", "bench",
                                                             "*.egg-info", "build", "__pycache__"))
    res = subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
                          "-w", str(tmp_path / "dist"), str(src)], capture_output=True, text=True, timeout=240)
    assert res.returncode == 0, res.stderr
    (whl,) = (tmp_path / "dist").glob("fedvox-*.whl")
    shipped = {Path(n).name for n in zipfile.ZipFile(whl).namelist() if "/share/fedvox/csrc/" in n}
    assert shipped == {p.name for p in (repo / "csrc").iterdir() if p.is_file()}
