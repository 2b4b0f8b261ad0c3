"""Checkpoints are data, never code: torch.load(weights_only=True) for every
file fedvox writes, so a crafted file (with a matching .sha256 sidecar, which
an attacker writes too) cannot run anything when it is loaded."""
from __future__ import annotations

import hashlib
import io
from pathlib import Path

import numpy as np
import pytest
import torch

from imaging_core.errors import ImagingError
from imaging_core.train.checkpoint import load_checkpoint, save_checkpoint


class _Payload:
    """Unpickling this calls Path.touch(marker): the stand-in for arbitrary code."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def write_malicious_checkpoint(path: Path, marker: Path) -> Path:
    """A torch-format file whose pickle runs code, with a correct .sha256 sidecar."""
    buf = io.BytesIO()
    torch.save({"net": {"w": torch.zeros(2)}, "x": _Payload(marker)}, buf)
    data = buf.getvalue()
    path.write_bytes(data)
    path.with_name(path.name + ".sha256").write_text(hashlib.sha256(data).hexdigest())
    return path


def test_malicious_pickle_is_refused_and_never_runs(tmp_path):
    marker = tmp_path / "pwned"
    ck = write_malicious_checkpoint(tmp_path / "global_best.pt", marker)
    with pytest.raises(ImagingError, match="global_best.pt.*refus"):
        load_checkpoint(ck)
    assert not marker.exists()


def test_trainer_state_round_trips_weights_only(tmp_path):
    """The trainer's last.pt: weights, AdamW/SGD state, grad scaler, history, config, RNG."""
    from imaging_core.train.trainer import Trainer  # noqa: F401  (the writer under test below)
    net = torch.nn.Sequential(torch.nn.Conv3d(1, 2, 3), torch.nn.BatchNorm3d(2))
    for opt in (torch.optim.AdamW(net.parameters(), lr=1e-3, foreach=True),
                torch.optim.SGD(net.parameters(), lr=1e-2, momentum=0.99, nesterov=True)):
        net(torch.randn(1, 1, 5, 5, 5)).sum().backward()
        opt.step()
        state = {"net": net.state_dict(), "opt": opt.state_dict(),
                 "scaler": torch.amp.GradScaler("cpu", enabled=False).state_dict(), "epoch": 3,
                 "history": {"epochs": [{"loss": 0.5, "dice": float("nan")}], "best": 0.4, "best_epoch": 2},
                 "cfg": {"optimizer": "adamw", "patch": (16, 16, 16), "amp": None},
                 "torch_rng": torch.get_rng_state()}
        save_checkpoint(state, tmp_path / "last.pt")
        st = load_checkpoint(tmp_path / "last.pt")
        opt.load_state_dict(st["opt"])
        assert torch.equal(st["torch_rng"], state["torch_rng"]) and st["cfg"]["patch"] == (16, 16, 16)


def test_numpy_state_round_trips_as_numpy(tmp_path):
    """The round checkpoint: flat numpy weights and a server optimiser's numpy moments."""
    flat = np.arange(7, dtype=np.float32)
    st = {"flat": flat, "opt": {"m": flat * 2, "v": None}, "round": 3, "aggregation": {"clipped_total": 1},
          "score": np.float64(0.5)}
    save_checkpoint(st, tmp_path / "round-0003.pt")
    back = load_checkpoint(tmp_path / "round-0003.pt")
    assert isinstance(back["flat"], np.ndarray) and back["flat"].dtype == np.float32
    np.testing.assert_array_equal(back["opt"]["m"], flat * 2)
    assert back["opt"]["v"] is None and back["round"] == 3 and back["score"] == 0.5


def test_unsafe_content_is_refused_when_saving(tmp_path):
    with pytest.raises(TypeError, match="cannot store"):
        save_checkpoint({"x": object()}, tmp_path / "x.pt")
    assert not (tmp_path / "x.pt").exists()
