"""Server optimisers on flat weight vectors (numpy, float64 state).

A round gives the weighted mean of the sites' deltas (plain or unmasked from
secure aggregation); the strategy turns it into the next global model. FedAvg
and FedProx apply it as is (FedProx differs at the sites: a proximal term);
FedAvgM adds server momentum (Hsu et al., 2019); FedAdam and FedYogi treat it
as a pseudo-gradient (Reddi et al., "Adaptive Federated Optimization", 2021).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from fl_common.config import STRATEGIES  # the names the [federation] schema accepts


@dataclass
class ServerOptimizer:
    name: str = "fedavg"
    server_lr: float = 1.0          # FedAvg/FedProx/FedAvgM: scale of the mean delta
    momentum: float = 0.9           # FedAvgM
    eta: float = 1e-2               # FedAdam/FedYogi step
    beta1: float = 0.9
    beta2: float = 0.99
    tau: float = 1e-3               # adaptivity floor
    m: np.ndarray | None = field(default=None, repr=False)
    v: np.ndarray | None = field(default=None, repr=False)

    def __post_init__(self):
        if self.name not in STRATEGIES:
            raise ValueError(f"unknown strategy {self.name!r} (one of {', '.join(STRATEGIES)})")

    def step(self, weights: np.ndarray, mean_delta: np.ndarray) -> np.ndarray:
        d = mean_delta.astype(np.float64)
        if self.name in ("fedavg", "fedprox"):
            return (weights + self.server_lr * d).astype(np.float32)
        if self.name == "fedavgm":
            self.m = d if self.m is None else self.momentum * self.m + d
            return (weights + self.server_lr * self.m).astype(np.float32)
        if self.m is None:
            self.m = np.zeros_like(d)
            self.v = np.full_like(d, self.tau ** 2)
        self.m = self.beta1 * self.m + (1 - self.beta1) * d
        d2 = d * d
        if self.name == "fedadam":
            self.v = self.beta2 * self.v + (1 - self.beta2) * d2
        else:  # Yogi: additive, sign-controlled update of v
            self.v = self.v - (1 - self.beta2) * d2 * np.sign(self.v - d2)
        return (weights + self.eta * self.m / (np.sqrt(self.v) + self.tau)).astype(np.float32)

    @classmethod
    def from_federation(cls, fl) -> "ServerOptimizer":
        """The [federation] table's strategy and its knobs (fl_common.config.FederationTable)."""
        return cls(name=fl.strategy, **fl.optimizer_knobs())

    def settings(self) -> dict:
        """What the run record states: the knobs that act for this strategy."""
        if self.name in ("fedavg", "fedprox"):
            return {"name": self.name, "server_lr": self.server_lr}
        if self.name == "fedavgm":
            return {"name": self.name, "server_lr": self.server_lr, "momentum": self.momentum}
        return {"name": self.name, "eta": self.eta, "beta1": self.beta1, "beta2": self.beta2, "tau": self.tau}

    def state(self) -> dict:
        return {"m": self.m, "v": self.v}

    def load_state(self, st: dict) -> None:
        self.m, self.v = st.get("m"), st.get("v")


_CHUNK = 1 << 16  # values per chunk of the float64 accumulator (512 kB: stays in cache)


def weighted_mean(deltas: list[np.ndarray], weights: list[float]) -> np.ndarray:
    """sum_i w_i d_i / sum_i w_i in float64, returned as float32. Accumulated in
    cache-sized chunks: whole-vector float64 temporaries cost about 1 s of page
    faults per round at 20M values in a fresh server round, the sums here 0.1 s."""
    w = np.asarray(weights, np.float64)
    if not deltas or w.sum() <= 0:
        raise ValueError("no results to aggregate")
    shape = np.shape(deltas[0])
    flat = [np.asarray(d).reshape(-1) for d in deltas]
    out = np.empty(flat[0].size, np.float32)
    acc = np.empty(min(out.size, _CHUNK), np.float64)
    tmp = np.empty_like(acc)
    total = w.sum()
    for s in range(0, out.size, _CHUNK):
        m = min(_CHUNK, out.size - s)
        a, t = acc[:m], tmp[:m]
        a[...] = 0.0
        for d, wi in zip(flat, w):
            np.multiply(d[s:s + a.size], wi, out=t)
            a += t
        a /= total
        out[s:s + a.size] = a
    return out.reshape(shape)


def site_round_config(fl) -> dict:
    """What every site's train/evaluate message carries from the [federation]
    table (the round's learning rate is added per round: site_lr)."""
    return {"local_epochs": fl.local_epochs,
            "prox_mu": fl.prox_mu if fl.strategy == "fedprox" else 0.0,
            "local_baseline": fl.local_baseline,
            "keep_site_optimizer": fl.keep_site_optimizer}


def site_lr(train, rounds: int, local_epochs: int, r: int) -> float:
    """The sites' learning rate in round ``r``: the federation's [train] schedule
    (poly, cosine, constant, warm-up) laid over all ``rounds * local_epochs``
    epochs and read at the middle of round r's epochs, so a federation decays
    like a pooled run of the same length (a constant rate each round would leave
    the last rounds at the starting rate, and compare badly at equal compute)."""
    from imaging_core.train.trainer import lr_factor
    e = max(int(local_epochs), 1)
    cfg = train.with_(epochs=max(int(rounds), 1) * e)
    return float(cfg.lr * lr_factor(cfg, (min(max(r, 1), rounds) - 0.5) * e))
