"""Shared fixtures: small real files written to tmp_path."""
from __future__ import annotations

import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"


def lps_affine(spacing=(0.8, 0.8, 2.5), origin=(100.0, 80.0, -40.0)) -> np.ndarray:
    aff = np.diag([-spacing[0], -spacing[1], spacing[2], 1.0])
    aff[:3, 3] = origin
    return aff


@pytest.fixture
def write_nifti(tmp_path):
    """write_nifti(name, array, affine=None) -> Path, a real .nii/.nii.gz file."""
    def _write(name, array, affine=None):
        p = tmp_path / name
        p.parent.mkdir(parents=True, exist_ok=True)
        nib.save(nib.Nifti1Image(np.asarray(array), lps_affine() if affine is None else affine), p)
        return p
    return _write


@pytest.fixture
def example_sites(tmp_path_factory):
    """The example federation at zoom 1 (generated once per test session)."""
    from sites_example.generate import generate
    out = tmp_path_factory.getbasetemp() / "sites"
    if not (out / "federation_manifest.json").exists():
        generate(out)
    return out


@pytest.fixture
def cli():
    """Run `fedvox ...` as a real process; returns CompletedProcess."""
    import subprocess

    def _run(*args, timeout=120):
        return subprocess.run([sys.executable, "-m", "fl_server.cli", *map(str, args)],
                              capture_output=True, text=True, timeout=timeout, cwd=REPO)
    return _run
