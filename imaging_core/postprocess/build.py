"""Build and load fedvox's compiled post-processing ops (csrc/).

The ops are compiled on first use with torch's extension machinery and cached
per torch version (and CPU, since the build uses -march=native) under
``$FEDVOX_OPS_CACHE`` or ``~/.cache/fedvox/ops-<torch version>-<tag>``. Three
translation units at most (ops_cpu.cpp, binding.cpp, ops_cuda.cu when CUDA is
available); the binding uses torch/library.h, not torch/extension.h, which
keeps a cold CPU build to a few seconds.

    python -m imaging_core.postprocess.build            # build/load now, print timing
    python -m imaging_core.postprocess.build --cuda-objects OUTDIR
        # compile csrc/*.cu to objects with nvcc (CI check; no GPU needed)
"""
from __future__ import annotations

import argparse
import hashlib
import os
import platform
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import torch



def _find_csrc() -> Path:
    """FEDVOX_CSRC, else the source checkout's csrc/, else the copy a wheel
    installs under <prefix>/share/fedvox/csrc (pyproject data-files)."""
    if os.environ.get("FEDVOX_CSRC"):
        return Path(os.environ["FEDVOX_CSRC"])
    checkout = Path(__file__).resolve().parents[2] / "csrc"
    installed = Path(sys.prefix) / "share" / "fedvox" / "csrc"
    return checkout if checkout.is_dir() or not installed.is_dir() else installed


CSRC = _find_csrc()
CPU_SOURCES = ("ops_cpu.cpp", "binding.cpp")
CUDA_SOURCES = ("ops_cuda.cu",)
HEADERS = ("ops.h",)
CFLAGS = ["-O3", "-march=native", "-fopenmp", "-DNDEBUG"]

_lock = threading.Lock()
_loaded: dict | None = None


class OpsBuildError(RuntimeError):
    """The compiled ops could not be built or loaded (the message says why)."""


def _cpu_tag() -> str:
    # -march=native code must not be reused on another CPU model.
    model = platform.machine()
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith(("model name", "flags", "Features")):
                    model += line
    except OSError:
        pass
    return hashlib.sha1(model.encode()).hexdigest()[:8]


def _source_hash(with_cuda: bool) -> str:
    h = hashlib.sha1()
    for name in CPU_SOURCES + HEADERS + (CUDA_SOURCES if with_cuda else ()):
        h.update((CSRC / name).read_bytes())
    h.update(" ".join(CFLAGS).encode())
    return h.hexdigest()[:10]


def cache_dir(with_cuda: bool | None = None) -> Path:
    with_cuda = torch.cuda.is_available() if with_cuda is None else with_cuda
    root = os.environ.get("FEDVOX_OPS_CACHE")
    base = Path(root) if root else Path.home() / ".cache" / "fedvox"
    tag = _cpu_tag() + ("-cuda" if with_cuda else "")
    return base / f"ops-{torch.__version__.replace('+', '_')}-{tag}"


def _check_toolchain(with_cuda: bool) -> None:
    missing = [n for n in CPU_SOURCES + HEADERS if not (CSRC / n).is_file()]
    if missing:
        raise OpsBuildError(
            f"fedvox ops sources not found in {CSRC} (missing {', '.join(missing)}); "
            "reinstall fedvox, run from a source checkout, or set FEDVOX_CSRC to the csrc/ directory")
    cxx = os.environ.get("CXX", "c++")
    if shutil.which(cxx) is None:
        raise OpsBuildError(
            f"no C++ compiler found (looked for {cxx!r} on PATH): install g++ "
            "(e.g. `apt-get install g++`) or set CXX; fedvox compiles its "
            "post-processing ops on first use")
    if shutil.which("ninja") is None:
        # A pip-installed ninja lives next to the interpreter of an inactive venv.
        venv_bin = Path(sys.executable).parent
        if (venv_bin / "ninja").exists():
            os.environ["PATH"] = f"{venv_bin}{os.pathsep}{os.environ.get('PATH', '')}"
        else:
            raise OpsBuildError("ninja is needed to build fedvox's ops: `pip install ninja` "
                                "or install it with your package manager")
    if with_cuda and shutil.which("nvcc") is None and not os.environ.get("CUDA_HOME"):
        raise OpsBuildError("CUDA is available but nvcc was not found: install the CUDA "
                            "toolkit or set CUDA_HOME (or hide the GPU to use the CPU ops)")


def load_ops(verbose: bool = False):
    """Build (first call) and load the ops; returns torch.ops.fedvox."""
    global _loaded
    with _lock:
        if _loaded is not None:
            return _loaded["ops"]
        with_cuda = torch.cuda.is_available() and os.environ.get("FEDVOX_OPS_NO_CUDA") != "1"
        _check_toolchain(with_cuda)
        from torch.utils import cpp_extension

        build_dir = cache_dir(with_cuda)
        build_dir.mkdir(parents=True, exist_ok=True)
        sources = [str(CSRC / n) for n in CPU_SOURCES + (CUDA_SOURCES if with_cuda else ())]
        cflags = CFLAGS + (["-DFEDVOX_WITH_CUDA"] if with_cuda else [])
        # The library name carries the source hash: torch rebuilds on change
        # anyway, but a process must not load two builds under one name.
        name = f"fedvox_ops_{_source_hash(with_cuda)}"
        t0 = time.perf_counter()
        try:
            cpp_extension.load(
                name=name, sources=sources, extra_cflags=cflags,
                extra_cuda_cflags=["-O3"],
                extra_ldflags=["-fopenmp"], extra_include_paths=[str(CSRC)],
                build_directory=str(build_dir), with_cuda=with_cuda,
                is_python_module=False, verbose=verbose)
        except (subprocess.CalledProcessError, RuntimeError, OSError) as err:
            raise OpsBuildError(
                f"building fedvox ops in {build_dir} failed: {err}. Re-run with "
                "`python -m imaging_core.postprocess.build --verbose` to see the compiler "
                "output") from err
        ops = torch.ops.fedvox
        _loaded = {"ops": ops, "seconds": time.perf_counter() - t0, "cuda": with_cuda,
                   "dir": build_dir}
        return ops


def load_info() -> dict:
    """Where and how the ops were loaded (after load_ops())."""
    load_ops()
    return dict(_loaded)


def has_cuda_ops() -> bool:
    return bool(load_ops().has_cuda())


def find_nvcc() -> str | None:
    found = shutil.which("nvcc")
    if found is None and os.environ.get("CUDA_HOME"):
        cand = Path(os.environ["CUDA_HOME"]) / "bin" / "nvcc"
        found = str(cand) if cand.exists() else None
    return found


def compile_cuda_objects(outdir: str | os.PathLike, nvcc: str | None = None,
                         arch: str | None = None) -> list[Path]:
    """nvcc -c every csrc/*.cu into outdir (a compile check; needs no GPU)."""
    nvcc = nvcc or find_nvcc()
    if nvcc is None:
        raise OpsBuildError("nvcc not found: install the CUDA toolkit or set CUDA_HOME")
    out = Path(outdir)
    out.mkdir(parents=True, exist_ok=True)
    objs = []
    for name in CUDA_SOURCES:
        obj = out / (Path(name).stem + ".o")
        cmd = [nvcc, "-c", "-O3", "-std=c++17", "-Xcompiler", "-fPIC", f"-I{CSRC}",
               str(CSRC / name), "-o", str(obj)]
        if arch:
            cmd[1:1] = [f"-arch={arch}"]
        res = subprocess.run(cmd, capture_output=True, text=True)
        if res.returncode != 0:
            raise OpsBuildError(f"nvcc failed on {name}:\n{res.stderr.strip()}")
        objs.append(obj)
    return objs


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m imaging_core.postprocess.build",
                                 description=__doc__.split("\n")[0])
    ap.add_argument("--cuda-objects", metavar="OUTDIR",
                    help="only compile the CUDA sources to objects with nvcc")
    ap.add_argument("--arch", help="nvcc -arch value (default: nvcc's default)")
    ap.add_argument("--verbose", action="store_true")
    args = ap.parse_args(argv)
    try:
        if args.cuda_objects:
            t0 = time.perf_counter()
            objs = compile_cuda_objects(args.cuda_objects, arch=args.arch)
            print(f"compiled {', '.join(map(str, objs))} in {time.perf_counter() - t0:.1f} s")
            return 0
        load_ops(verbose=args.verbose)
        info = load_info()
        print(f"fedvox ops loaded from {info['dir']} in {info['seconds']:.1f} s "
              f"(cuda={'yes' if info['cuda'] else 'no'})")
        return 0
    except OpsBuildError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    raise SystemExit(main())
