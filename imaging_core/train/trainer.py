"""The local trainer: patches from the site cache, AMP, gradient accumulation,
LR schedule, periodic validation, atomic resumable checkpoints, FedProx.

It knows nothing of federation: a federated round is ``fit`` for a few epochs
from the global weights, with ``prox_mu > 0`` for FedProx.
"""
from __future__ import annotations

import math
import random
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

from ..config import TrainTable as TrainConfig  # the [train] schema is the trainer's config
from .amp import autocast, grad_scaler, resolve_amp
from .checkpoint import load_checkpoint, save_checkpoint


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def lr_factor(cfg: TrainConfig, epoch_float: float) -> float:
    if cfg.warmup_epochs and epoch_float < cfg.warmup_epochs:
        return (epoch_float + 1e-3) / cfg.warmup_epochs
    t = min(epoch_float / max(cfg.epochs, 1), 1.0)
    if cfg.schedule == "poly":
        return (1 - t) ** 0.9
    if cfg.schedule == "cosine":
        return 0.5 * (1 + math.cos(math.pi * t))
    return 1.0


@dataclass
class History:
    epochs: list[dict] = field(default_factory=list)
    best: float = -math.inf
    best_epoch: int = -1


class Trainer:
    def __init__(self, net: torch.nn.Module, loss_fn, loader, sampler, cfg: TrainConfig,
                 val_cases: Sequence = (), evaluate: Callable | None = None, run_dir: str | Path | None = None,
                 device: str | torch.device = "cpu", global_weights: dict | None = None):
        """``evaluate(net, cases) -> Evaluation``: the task's one evaluation path
        (imaging_core.task.Task.evaluate), needed when there are ``val_cases``."""
        if val_cases and evaluate is None:
            raise ValueError("validation cases need an evaluate function (Task.evaluate)")
        self.device = torch.device(device)
        self.cfg = cfg
        self.net = net.to(self.device)
        self.loss_fn = loss_fn
        self.loader, self.sampler = loader, sampler
        self.val_cases, self.evaluate = list(val_cases), evaluate
        self.amp = resolve_amp(cfg.amp, self.device)
        self.scaler = grad_scaler(self.device, self.amp)
        self.run_dir = Path(run_dir) if run_dir else None
        params = [p for p in self.net.parameters() if p.requires_grad]
        if cfg.optimizer == "adamw":
            self.opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay, foreach=True)
        elif cfg.optimizer == "sgd":
            self.opt = torch.optim.SGD(params, lr=cfg.lr, momentum=0.99, nesterov=True,
                                       weight_decay=cfg.weight_decay)
        else:
            raise ValueError(f"unknown optimizer {cfg.optimizer!r}")
        self.global_weights = None
        if global_weights is not None:  # FedProx anchor, detached copy on the device
            self.global_weights = {k: v.detach().to(self.device).clone() for k, v in global_weights.items()}
        self.history = History()
        self.start_epoch = 0

    # ----- checkpoints -------------------------------------------------------
    def state(self, epoch: int) -> dict:
        return {"net": self.net.state_dict(), "opt": self.opt.state_dict(),
                "scaler": self.scaler.state_dict(), "epoch": epoch, "history": asdict(self.history),
                "cfg": self.cfg.model_dump(), "torch_rng": torch.get_rng_state()}

    def resume(self) -> bool:
        """Continue from run_dir/last.pt if present; returns True if resumed."""
        if not self.run_dir or not (self.run_dir / "last.pt").exists():
            return False
        st = load_checkpoint(self.run_dir / "last.pt", map_location=self.device)
        self.net.load_state_dict(st["net"])
        self.opt.load_state_dict(st["opt"])
        self.scaler.load_state_dict(st["scaler"])
        h = st["history"]
        self.history = History(h["epochs"], h["best"], h["best_epoch"])
        torch.set_rng_state(st["torch_rng"])
        self.start_epoch = st["epoch"] + 1
        return True

    def _write_metrics(self) -> None:
        if not self.run_dir:
            return
        from ..io.tables import write_csv, write_json
        rows = self.history.epochs
        write_json(self.run_dir / "metrics.json",
                   {"epochs": rows, "best": self.history.best, "best_epoch": self.history.best_epoch})
        write_csv(self.run_dir / "metrics.csv", rows, sorted(
            {k for r in rows for k, v in r.items() if not isinstance(v, (dict, list))}))

    # ----- training ----------------------------------------------------------
    def _prox(self) -> torch.Tensor:
        total = torch.zeros((), device=self.device)
        for name, p in self.net.named_parameters():
            total = total + ((p - self.global_weights[name]) ** 2).sum()
        return 0.5 * self.cfg.prox_mu * total

    def train_epoch(self, epoch: int, progress: Progress | None = None) -> dict:
        self.net.train()
        self.sampler.set_epoch(epoch)
        n_batches = len(self.loader)
        task = progress.add_task(f"epoch {epoch}", total=n_batches, loss=float("nan")) if progress else None
        losses, n_patches, t0 = [], 0, time.perf_counter()
        self.opt.zero_grad(set_to_none=True)
        for i, batch in enumerate(self.loader):
            x_all = batch["image"].to(self.device, non_blocking=True)
            y_all = batch["label"].to(self.device, non_blocking=True)
            # Smaller steps over the same patches: more optimizer steps for the
            # same compute (what a site short of rounds needs; see bench_fl_algorithms)
            k = int(self.cfg.patches_per_step) or x_all.shape[0]
            chunks = range(0, x_all.shape[0], k)
            for j, s in enumerate(chunks):
                for g in self.opt.param_groups:
                    g["lr"] = self.cfg.lr * lr_factor(self.cfg, epoch + (i + j / len(chunks)) / n_batches)
                x, y = x_all[s:s + k], y_all[s:s + k]
                # a chunk always steps; a whole batch steps at the end of its accumulation group
                update = j + 1 < len(chunks) or (i + 1) % self.cfg.grad_accum == 0 or i + 1 == n_batches
                losses.append(self._step(x, y, epoch, i, update))
                n_patches += x.shape[0]
            if progress:
                progress.update(task, advance=1, loss=float(np.mean(losses)))
        dt = time.perf_counter() - t0
        if progress:
            progress.remove_task(task)
        return {"epoch": epoch, "loss": float(np.mean(losses)), "lr": self.opt.param_groups[0]["lr"],
                "patches": n_patches, "seconds": round(dt, 3), "patches_per_s": round(n_patches / dt, 2)}

    def _step(self, x: torch.Tensor, y: torch.Tensor, epoch: int, i: int, update: bool) -> float:
        """Forward and backward of one (micro-)batch; the optimizer steps when ``update``
        (the end of a gradient-accumulation group or of a patches_per_step chunk)."""
        with autocast(self.device, self.amp):
            logits = self.net(x)
        loss = self.loss_fn(logits.float(), y)
        if self.global_weights is not None and self.cfg.prox_mu > 0:
            loss = loss + self._prox()
        if not torch.isfinite(loss):
            raise FloatingPointError(f"non-finite loss at epoch {epoch}, batch {i}")
        self.scaler.scale(loss / self.cfg.grad_accum).backward()
        if update:
            if self.cfg.clip_grad:
                self.scaler.unscale_(self.opt)
                torch.nn.utils.clip_grad_norm_(self.net.parameters(), self.cfg.clip_grad)
            self.scaler.step(self.opt)
            self.scaler.update()
            self.opt.zero_grad(set_to_none=True)
        return float(loss.detach())

    def validate(self) -> dict:
        return self.evaluate(self.net, self.val_cases).row()

    def fit(self, show_progress: bool = True) -> History:
        cols = (TextColumn("{task.description}"), BarColumn(), TextColumn("loss {task.fields[loss]:.4f}"),
                TimeElapsedColumn())
        with Progress(*cols, transient=True, disable=not show_progress) as prog:
            for epoch in range(self.start_epoch, self.cfg.epochs):
                row = self.train_epoch(epoch, prog)
                is_val = self.val_cases and ((epoch + 1) % self.cfg.val_every == 0 or epoch + 1 == self.cfg.epochs)
                if is_val:
                    row.update(self.validate())
                    score = row.get(self.cfg.best_metric, float("nan"))
                    if np.isfinite(score) and score > self.history.best:
                        self.history.best, self.history.best_epoch = float(score), epoch
                        if self.run_dir:
                            save_checkpoint({"net": self.net.state_dict(), "epoch": epoch, "score": score},
                                            self.run_dir / "best.pt")
                self.history.epochs.append(row)
                if self.run_dir:
                    save_checkpoint(self.state(epoch), self.run_dir / "last.pt")
                    self._write_metrics()
        return self.history

