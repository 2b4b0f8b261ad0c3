"""The site worker: a long-lived process that holds a site's preprocessed cache,
its model and its device across rounds, and does each round's work.

The Flower ClientApp process (started anew for every message) only forwards
requests here over a Unix-domain socket (see worker_server.py); nothing that
leaves the site is produced anywhere else: weight deltas and scalar metrics.

Per-round determinism: the patches and the torch seed of round r depend only
on (federation seed, site, r), and the local-only baseline of round r is
trained from the round r-1 state saved on disk, so a replayed round (server
restart) gives the same result.

The local-only baseline of round r trains in a background thread after the
train reply (the federated update) has gone: only its metrics are ever asked
for, by the evaluate request of round r, which evaluates the global model first
and then waits (bounded) for the baseline. Nothing else runs beside it: every
other request waits for it first, so it alone uses the process's RNGs while it
trains (the global model's evaluation draws no random numbers) and its result is
the same as trained inline. Torch threads: it runs at the worker's thread count;
only during the global-model evaluation do both share the cores.
"""
from __future__ import annotations

import hashlib
import json
import logging
import threading
import time
from pathlib import Path

import numpy as np
import torch

from fl_common import keys as K
from fl_common.config import Federation, SiteConfig
from imaging_core.config import PreprocessTable
from imaging_core.metrics.summary import per_case_values
from imaging_core.task import Task, float_state
from imaging_core.train.checkpoint import load_checkpoint, save_checkpoint
from imaging_core.train.trainer import Trainer, seed_everything

log = logging.getLogger("fedvox.worker")


def round_seed(seed: int, site: str, server_round: int) -> int:
    h = hashlib.sha256(f"{seed}/{site}/{server_round}".encode()).digest()
    return int.from_bytes(h[:4], "little")


def _scalars(prefix: str, d: dict) -> dict[str, float]:
    return {f"{prefix}{k}": float(v) for k, v in d.items() if isinstance(v, (int, float, np.floating, np.integer))}


class _LocalOnly:
    """One round's local-only training in a daemon thread."""

    def __init__(self, r: int, fn, *args):
        self.round, self.metrics, self.error = r, None, None
        self._thread = threading.Thread(target=self._run, args=(fn, *args), daemon=True,
                                        name=f"fedvox-local-only-round-{r}")
        self._thread.start()

    def _run(self, fn, *args) -> None:
        try:
            self.metrics = fn(*args)
        except Exception as e:  # noqa: BLE001 - kept for the evaluate request; the worker stays up
            log.exception("local-only baseline of round %d failed", self.round)
            self.error = e

    def wait(self, timeout: float) -> bool:
        self._thread.join(timeout)
        return not self._thread.is_alive()


class SiteWorker:
    def __init__(self, fed: Federation, site: SiteConfig, work_dir: str | Path, device: str | None = None,
                 local_wait: float = 1800.0):
        self.fed, self.site = fed, site
        self.name = site.name
        self.work_dir = Path(work_dir)
        self.work_dir.mkdir(parents=True, exist_ok=True)
        self.device = torch.device(device or site.device)
        self.seed = fed.federation.seed
        self.task = Task(fed, self.device)
        self.num_classes = self.task.num_classes
        self.local_wait = local_wait  # the longest a request waits for the local-only baseline
        self._local: _LocalOnly | None = None
        self._local_failed = 0  # the last round whose local-only training failed (its file is an older one)
        # the site's own [preprocess] decides what it accepts (fl_client.policy.admit_preprocess):
        # "auto" builds the cache with the round config's table, once the run sends it
        own = None if fed.preprocess_auto else fed.preprocess.model_dump()
        from .site_preprocess import write_own_preprocess
        write_own_preprocess(self.work_dir, own)
        self.data, self.report, self.preprocess = None, None, None
        if own is not None:
            self._use_preprocess(own)
        # the plan's fingerprint query is answered from this file (fl_client.fingerprint)
        from fl_client.fingerprint import fingerprint_in_background
        from fl_common.keys import FINGERPRINT_FILE
        fingerprint_in_background(site.datalist_path, site.modality, site.name, self.work_dir / FINGERPRINT_FILE)
        self.net = self.task.build_net(seed=self.seed)
        self.loss_fn = self.task.loss()
        self.task.eval_amp  # noqa: B018 - resolved now ("auto" forks the RNG): never beside a training

    def _use_preprocess(self, table: dict) -> None:
        """The cache built (or reused: it is keyed by the preprocessing) with ``table``."""
        if self.data is not None and K.preprocess_wire(table) == K.preprocess_wire(self.preprocess):
            return
        self.local_only(strict=False)  # nothing trains on the old cache while it is replaced
        data = Task(self.fed.with_preprocess(table), self.device).site_data(self.site, self.work_dir / "cache",
                                                                            self.seed)
        t0 = time.perf_counter()
        report = data.prepare()
        log.info("%s: cache ready in %.1f s (%d cases, %d skipped; pixdim %s)", self.name,
                 time.perf_counter() - t0, len(report.cases), len(report.failed), table["pixdim"])
        if data.num_classes != self.task.num_classes:
            raise ValueError(f"{self.name}: the datalist has {data.num_classes} labels, the federation's "
                             f"[labels] {self.task.num_classes}")
        self.data, self.report, self.preprocess = data, report, table

    def _data_for(self, cfg: dict) -> None:
        """The round's [preprocess] (the shim admitted it: fl_client.policy) in use; the
        site's explicit table wins, so the server's must equal it."""
        wire = cfg.get(K.PREPROCESS)
        if self.fed.preprocess_auto:
            if wire is None:
                raise ValueError(f"{self.name}: [preprocess] is \"auto\" and the round config has no table")
            self._use_preprocess(PreprocessTable.model_validate(json.loads(wire)).model_dump())
        elif wire is not None and K.preprocess_wire(PreprocessTable.model_validate(json.loads(wire)).model_dump()) \
                != K.preprocess_wire(self.preprocess):
            raise ValueError(f"{self.name}: the round's [preprocess] differs from the site's explicit table")

    # ----- introspection ----------------------------------------------------
    def status(self) -> dict:
        if self.data is None:  # "auto" before the run's plan arrived: counts from the datalist
            from imaging_core.data.datalist import load_datalist
            cases = load_datalist(self.site.datalist_path).cases
            n = {s: sum(c.split == s for c in cases) for s in ("training", "validation")}
            return {"site": self.name, "device": str(self.device), "num_train": n["training"],
                    "num_val": n["validation"], "skipped": {}, "cache": "waiting for the run's [preprocess]",
                    "model": self.fed.model.model_dump(), "amp": self.task.amp_record()}
        return {"site": self.name, "device": str(self.device), "num_train": len(self.data.cases("training")),
                "num_val": len(self.data.cases("validation")),
                "skipped": {cid: str(err) for cid, err in self.report.failed.items()},
                "model": self.fed.model.model_dump(), "amp": self.task.amp_record(), "preprocess": self.preprocess}

    def _load(self, net: torch.nn.Module, weights: dict[str, np.ndarray]) -> None:
        ref = net.state_dict()
        missing = [k for k in ref if ref[k].is_floating_point() and k not in weights]
        if missing or any(k not in ref for k in weights):
            raise ValueError(f"weights do not match the site's model (missing {missing[:3]}, "
                             f"unexpected {[k for k in weights if k not in ref][:3]})")
        sd = {k: torch.from_numpy(np.array(v)).to(ref[k].dtype) for k, v in weights.items()}
        net.load_state_dict(sd, strict=False)

    def _trainer(self, net, server_round: int, cfg: dict, anchor: dict | None) -> Trainer:
        seed = round_seed(self.seed, self.name, server_round)
        seed_everything(seed)
        self.data.seed = seed  # fresh, reproducible patches every round
        train = self.fed.train
        loader, sampler = self.data.train_loader(int(cfg.get("cases_per_batch", train.cases_per_batch)),
                                                 self.site.num_workers)
        # ``cfg`` is the server's round config (the wire), bounded by the site's own [train]
        tc = train.with_(epochs=int(cfg.get("local_epochs", 1)), schedule="constant", warmup_epochs=0, seed=seed,
                         prox_mu=float(cfg.get("prox_mu", 0.0)), lr=float(cfg.get(K.LR, train.lr)))
        return Trainer(net, self.loss_fn, loader, sampler, tc, device=self.device, global_weights=anchor)

    def _opt_path(self, server_round: int) -> Path:
        return self.work_dir / "optimizer" / f"round-{server_round:04d}.pt"

    # ----- one round --------------------------------------------------------
    def train(self, server_round: int, weights: dict[str, np.ndarray], cfg: dict) -> tuple[dict, float, dict]:
        """Local epochs from the global weights -> (delta, weight, scalar metrics); the
        local-only baseline of the round then trains in the background (``local_only``)."""
        if cfg.get(K.LOCAL_MODEL):  # the Train RPC's tensor reply carries it: no new worker API
            return self.local_model(server_round, cfg.get(K.RUN_ID)), 0.0, {}
        self.local_only()  # a replayed or next round: the previous baseline is on disk first
        self._data_for(cfg)
        if not self.data.cases("training"):
            raise RuntimeError(f"{self.name}: no usable training cases")
        self._load(self.net, weights)
        start = float_state(self.net)
        anchor = {k: v.to(self.device) for k, v in start.items()} if float(cfg.get("prox_mu", 0)) > 0 else None
        t0 = time.perf_counter()
        trainer = self._trainer(self.net, server_round, cfg, anchor)
        keep_opt = bool(cfg.get("keep_site_optimizer", False))
        if keep_opt:
            self._restore_optimizer(trainer, server_round)
        hist = trainer.fit(show_progress=False)
        if keep_opt:
            save_checkpoint({"opt": trainer.opt.state_dict(), "round": server_round}, self._opt_path(server_round))
            for old in sorted(self._opt_path(0).parent.glob("round-*.pt"))[:-2]:
                old.unlink()
        end = float_state(self.net)
        delta = {k: (end[k] - start[k]).numpy() for k in start}
        metrics = {"train_loss": hist.epochs[-1]["loss"], "train_seconds": time.perf_counter() - t0,
                   "patches": sum(e["patches"] for e in hist.epochs)}
        if cfg.get("local_baseline", True):
            init = {k: np.array(v, copy=True) for k, v in weights.items()}
            self._local = _LocalOnly(server_round, self._train_local_only, server_round, init, dict(cfg))
        return delta, float(len(self.data.cases("training"))), metrics

    def close(self, timeout: float = 60.0) -> None:
        """Let a running local-only training finish (bounded) before the process exits."""
        job = self._local
        if job is not None and not job.wait(timeout):
            log.warning("%s: leaving the local-only baseline of round %d unfinished", self.name, job.round)

    def local_only(self, server_round: int | None = None, strict: bool = True) -> dict | None:
        """Wait (at most ``local_wait`` s) for the background local-only training.
        Its metrics when it was round ``server_round``'s, {} when there was none or it
        was another round's; None when it failed, or (``strict=False``) still trains:
        the latest local-only model on disk is then not the one this round made."""
        job = self._local
        if job is None:
            return {}
        if not job.wait(self.local_wait):
            if strict:
                raise RuntimeError(f"{self.name}: the local-only baseline of round {job.round} is still "
                                   f"training after {self.local_wait:.0f} s")
            log.warning("%s: the local-only baseline of round %d still trains after %.0f s: no local-only "
                        "metrics this time", self.name, job.round, self.local_wait)
            return None
        self._local = None
        if job.error is not None:
            self._local_failed = job.round
            return None
        if job.round >= self._local_failed:  # e.g. a replay of the failed round: its file is current
            self._local_failed = 0
        return job.metrics if job.round == server_round else {}

    def _restore_optimizer(self, trainer: Trainer, server_round: int) -> None:
        """Keep the site's optimizer moments across rounds (a fresh AdamW takes
        sign-like, full-rate first steps every round). They are read from the
        file of round r-1, not from memory, so a replayed round starts from the
        same state (the trainer sets each step's learning rate itself)."""
        prev = self._opt_path(server_round - 1)
        if server_round > 1 and prev.exists():
            trainer.opt.load_state_dict(load_checkpoint(prev)["opt"])

    def _local_path(self, server_round: int) -> Path:
        return self.work_dir / "local_only" / f"round-{server_round:04d}.pt"

    def _latest_local(self, server_round: int) -> Path | None:
        """The local-only model after the last round <= server_round (the final
        evaluation asks for round R+1, which trains nothing)."""
        for r in range(server_round, 0, -1):
            if r == self._local_failed:  # its training failed: an older file is not the latest model
                return None
            if self._local_path(r).exists():
                return self._local_path(r)
        return None

    def _train_local_only(self, server_round: int, init_weights: dict, cfg: dict) -> dict:
        """The site's local-only baseline gets the same epochs per round as the global
        model, from its own previous state; only its metrics ever leave the site."""
        net = self.task.build_net()
        prev = self._local_path(server_round - 1)
        if server_round > 1 and prev.exists():
            net.load_state_dict(load_checkpoint(prev)["net"])
        else:  # round 1 starts from the same initial model as the federation
            self._load(net, init_weights)
        hist = self._trainer(net, server_round, {**cfg, "prox_mu": 0.0}, None).fit(show_progress=False)
        # the run is recorded: a later run overwrites the file, and only this run's may leave
        save_checkpoint({"net": net.state_dict(), "round": server_round, "run": cfg.get(K.RUN_ID)},
                        self._local_path(server_round))
        return {"local_train_loss": hist.epochs[-1]["loss"]}

    def local_model(self, server_round: int, run_id: str | None) -> dict[str, np.ndarray]:
        """The local-only model this site trained in round ``server_round`` of run
        ``run_id`` (float tensors, as the global weights): that exact file, or an
        error. The ClientApp asks only for the run's last trained round, with the
        site's consent (fl_client.policy)."""
        self.local_only()  # a baseline still training in the background is waited for
        path = self._local_path(server_round)
        if not path.exists():
            raise RuntimeError(f"{self.name}: no local-only model of round {server_round} "
                               "(is [federation] local_baseline on?)")
        ckpt = load_checkpoint(path)
        if not run_id or ckpt.get("run") != run_id or ckpt.get("round") != server_round:
            raise RuntimeError(f"{path}: the local-only model of round {server_round} is another run's "
                               "(a later run trained over it)")
        net = self.task.build_net()
        net.load_state_dict(ckpt["net"])
        return {k: v.numpy() for k, v in float_state(net).items()}

    def evaluate(self, server_round: int, weights: dict[str, np.ndarray], cfg: dict) -> tuple[dict, float]:
        """Validation metrics of the global model (and of the local-only baseline);
        a cross-site request (``cross-model`` set) evaluates only the given model, and
        adds its per-case values (``cases``: metric -> list in case order)."""
        self._data_for(cfg)
        val = self.data.cases("validation")
        if not val:
            self.local_only()
            return {"num_val": 0.0}, 0.0
        if cfg.get(K.CROSS_MODEL):
            self.local_only()
            net = self.task.build_net()
            self._load(net, weights)
            ev = self.task.evaluate(net, val)
            cases = per_case_values(ev.per_case, self.num_classes)
            return {"num_val": float(len(val)), **_scalars("", ev.scores), "cases": cases}, float(len(val))
        self._load(self.net, weights)
        out: dict[str, float] = {"num_val": float(len(val))}
        # the same evaluation path (and precision) as the coordinator's; the global model
        # first, while this round's local-only baseline may still be training
        out.update(_scalars(K.GLOBAL, self.task.evaluate(self.net, val).scores))
        late = self.local_only(server_round, strict=False)
        out.update(late or {})  # the baseline's training loss (fl_server.round_loop LATE_TRAIN_METRICS)
        local = self._latest_local(server_round)
        if cfg.get("local_baseline", True) and local is not None and late is not None:
            net = self.task.build_net()
            net.load_state_dict(load_checkpoint(local)["net"])
            out.update(_scalars(K.LOCAL, self.task.evaluate(net, val).scores))
        return out, float(len(val))
