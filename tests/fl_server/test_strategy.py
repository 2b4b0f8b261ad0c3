"""Server optimisers and weighted means on flat vectors."""
from __future__ import annotations

import numpy as np
import pytest

from fl_server.strategy import ServerOptimizer, weighted_mean


def test_weighted_mean_matches_numpy():
    rng = np.random.default_rng(0)
    deltas = [rng.normal(size=50).astype(np.float32) for _ in range(4)]
    w = [1.0, 3.0, 2.0, 5.0]
    np.testing.assert_allclose(weighted_mean(deltas, w), np.average(np.stack(deltas), axis=0, weights=w),
                               rtol=1e-6, atol=1e-7)
    with pytest.raises(ValueError):
        weighted_mean([], [])


def test_fedavg_applies_the_mean_delta():
    opt = ServerOptimizer("fedavg")
    w = np.ones(5, np.float32)
    np.testing.assert_allclose(opt.step(w, np.full(5, 0.5, np.float32)), 1.5)


@pytest.mark.parametrize("name", ["fedadam", "fedyogi"])
def test_adaptive_optimisers_follow_the_pseudo_gradient_and_keep_state(name):
    opt = ServerOptimizer(name, eta=0.1, tau=1e-3)
    w = np.zeros(3, np.float32)
    d = np.array([1.0, -1.0, 0.0], np.float32)
    w1 = opt.step(w, d)
    assert w1[0] > 0 > w1[1] and w1[2] == 0
    st = opt.state()
    again = ServerOptimizer(name, eta=0.1, tau=1e-3)
    again.load_state({k: v.copy() for k, v in st.items()})
    np.testing.assert_array_equal(again.step(w1, d), opt.step(w1, d))  # resumable


def test_unknown_strategy_is_refused():
    with pytest.raises(ValueError, match="unknown strategy"):
        ServerOptimizer("fedsgd")
