"""Trainer: optimizer steps of patches_per_step patches over the loader's batches."""
import numpy as np
import pytest
import torch

from imaging_core.task import build_loss
from imaging_core.train.trainer import TrainConfig, Trainer


class _Sampler:
    def set_epoch(self, epoch: int) -> None:
        pass


def _batches(n: int, size: int, seed: int = 0) -> list[dict]:
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        y = torch.randint(0, 3, (size, 1, 6, 6, 6), generator=g)
        x = y.float() + 0.3 * torch.randn(size, 1, 6, 6, 6, generator=g)
        out.append({"image": x, "label": y})
    return out


def _fit(batches: list[dict], **cfg) -> tuple[Trainer, dict]:
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv3d(1, 4, 3, padding=1), torch.nn.ReLU(), torch.nn.Conv3d(4, 3, 1))
    tc = TrainConfig.from_dict({"epochs": 1, "lr": 1e-2, "amp": "none", "schedule": "constant", **cfg})
    tr = Trainer(net, build_loss(TrainConfig(loss="dicece")), batches, _Sampler(), tc)
    return tr, tr.train_epoch(0)


def _steps(tr: Trainer) -> int:
    return int(next(iter(tr.opt.state.values()))["step"])


def test_patches_per_step_splits_each_batch_into_steps():
    tr, ep = _fit(_batches(3, 4), patches_per_step=2)
    assert _steps(tr) == 6 and ep["patches"] == 12
    tr, ep = _fit(_batches(3, 4), patches_per_step=3)  # 3 + 1 patches per batch
    assert _steps(tr) == 6 and ep["patches"] == 12
    tr, ep = _fit(_batches(3, 4))
    assert _steps(tr) == 3 and ep["patches"] == 12


def test_split_batches_equal_a_loader_of_the_halves():
    whole = _batches(3, 4)
    halves = [{k: b[k][s:s + 2] for k in b} for b in whole for s in (0, 2)]
    a, _ = _fit(whole, patches_per_step=2)
    b, _ = _fit(halves)
    for (ka, va), (kb, vb) in zip(a.net.state_dict().items(), b.net.state_dict().items()):
        assert ka == kb and torch.equal(va, vb)


def test_patches_per_step_of_the_batch_size_is_the_default():
    a, ea = _fit(_batches(2, 4), patches_per_step=4)
    b, eb = _fit(_batches(2, 4))
    assert all(torch.equal(x, y) for x, y in zip(a.net.parameters(), b.net.parameters()))
    assert np.isclose(ea["loss"], eb["loss"])


@pytest.mark.parametrize("bad", [{"patches_per_step": -1}, {"patches_per_step": 2, "grad_accum": 2}])
def test_bad_patches_per_step_is_refused(bad):
    with pytest.raises(ValueError, match="patches_per_step"):
        TrainConfig.from_dict(bad)
