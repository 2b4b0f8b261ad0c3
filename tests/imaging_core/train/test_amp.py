"""amp = "auto" on a CPU: decided by a timed probe, cached per machine and torch
version. Timings are injected, so nothing here depends on this machine's speed."""
from __future__ import annotations

import json

import pytest
import torch

from imaging_core.train import amp as A


def test_decide_keeps_bf16_only_when_clearly_faster():
    assert A.decide(fp32_s=1.0, bf16_s=0.5) == "bf16"
    assert A.decide(fp32_s=1.0, bf16_s=1.5) is None      # avx512_bf16 without AMX: slower
    assert A.decide(fp32_s=1.0, bf16_s=0.95) is None     # a near tie is not worth the rounding


def test_probe_result_is_cached_per_machine_and_torch_version(tmp_path):
    calls = []

    def slow_bf16(device):
        calls.append(device)
        return 0.010, 0.030

    first = A.amp_choice("cpu", cache=tmp_path, timer=slow_bf16)
    assert first["amp"] is None and first["source"] == "probe" and first["probe_s"] >= 0
    again = A.amp_choice("cpu", cache=tmp_path, timer=slow_bf16)
    assert again["amp"] is None and again["source"] == "cache" and len(calls) == 1
    doc = json.loads((tmp_path / "amp.json").read_text())
    key = A.machine_key(torch.device("cpu"))
    assert list(doc) == [key] and torch.__version__ in key and doc[key]["bf16_s"] == 0.03
    # another torch (or CPU) is another key: it probes again, and keeps the first entry
    doc = {key.replace(torch.__version__, "0.0"): {"amp": "bf16", "probe_s": 0.1}}
    (tmp_path / "amp.json").write_text(json.dumps(doc))
    fast = A.amp_choice("cpu", cache=tmp_path, timer=lambda d: (0.030, 0.010))
    assert fast["amp"] == "bf16" and fast["source"] == "probe"
    assert len(json.loads((tmp_path / "amp.json").read_text())) == 2


def test_a_corrupt_cache_is_probed_again(tmp_path):
    (tmp_path / "amp.json").write_text("{not json")
    got = A.amp_choice("cpu", cache=tmp_path, timer=lambda d: (0.03, 0.01))
    assert got["amp"] == "bf16" and got["source"] == "probe"


def test_auto_resolves_through_the_choice(tmp_path, monkeypatch):
    monkeypatch.setenv("FEDVOX_CACHE", str(tmp_path))
    key = A.machine_key(torch.device("cpu"))
    (tmp_path / "amp.json").write_text(json.dumps({key: {"amp": None, "probe_s": 0.2}}))
    assert A.resolve_amp("auto", torch.device("cpu")) is None
    (tmp_path / "amp.json").write_text(json.dumps({key: {"amp": "bf16", "probe_s": 0.2}}))
    assert A.resolve_amp("auto", torch.device("cpu")) == "bf16"
    assert A.resolve_amp("none", torch.device("cpu")) is None
    with pytest.raises(ValueError, match="fp16 autocast is for CUDA"):
        A.resolve_amp("fp16", torch.device("cpu"))


def test_the_real_probe_is_short_and_returns_two_timings():
    fp32_s, bf16_s = A.probe(torch.device("cpu"), steps=1)
    assert fp32_s > 0 and bf16_s > 0
