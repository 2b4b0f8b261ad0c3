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


def test_chunked_weighted_mean_equals_the_whole_vector_float64_sum():
    from fl_server import strategy
    rng = np.random.default_rng(1)
    deltas = [rng.normal(size=2 * strategy._CHUNK + 99).astype(np.float32) for _ in range(3)]
    w = [10.0, 20.0, 7.0]
    acc = sum(np.float64(wi) * d.astype(np.float64) for d, wi in zip(deltas, w))
    np.testing.assert_array_equal(weighted_mean(deltas, w), (acc / sum(w)).astype(np.float32))


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


def test_fedavgm_accumulates_momentum_and_resumes():
    opt = ServerOptimizer("fedavgm", server_lr=1.0, momentum=0.5)
    w, d = np.zeros(2, np.float32), np.array([1.0, -2.0], np.float32)
    w1 = opt.step(w, d)
    np.testing.assert_allclose(w1, d)
    again = ServerOptimizer("fedavgm", server_lr=1.0, momentum=0.5)
    again.load_state({k: None if v is None else v.copy() for k, v in opt.state().items()})
    w2 = opt.step(w1, d)
    np.testing.assert_allclose(w2, w1 + 1.5 * d)  # m = 0.5 * d + d
    np.testing.assert_array_equal(again.step(w1, d), w2)


def test_settings_name_the_knobs_that_act():
    assert ServerOptimizer("fedavg", server_lr=2.0).settings() == {"name": "fedavg", "server_lr": 2.0}
    assert ServerOptimizer("fedadam", eta=0.03).settings()["eta"] == 0.03


def test_unknown_strategy_is_refused():
    with pytest.raises(ValueError, match="unknown strategy"):
        ServerOptimizer("fedsgd")


def test_site_lr_follows_the_train_schedule_over_the_whole_federation():
    from fl_server.strategy import site_lr
    from imaging_core.config import TrainTable
    from imaging_core.train.trainer import lr_factor
    rounds, e = 5, 2
    poly_t, const_t = TrainTable(lr=0.01, schedule="poly"), TrainTable(lr=0.01, schedule="constant")
    poly = [site_lr(poly_t, rounds, e, r) for r in range(1, rounds + 1)]
    cfg = poly_t.with_(epochs=rounds * e)
    # round r is read at the middle of its epochs, as a pooled run of rounds*e epochs would be
    assert poly == pytest.approx([0.01 * lr_factor(cfg, (r - 0.5) * e) for r in range(1, rounds + 1)])
    assert all(a > b > 0 for a, b in zip(poly, poly[1:]))
    assert site_lr(const_t, rounds, e, 4) == pytest.approx(0.01)
    # the final evaluation asks for round R + 1: no rate beyond the last round's
    assert site_lr(poly_t, rounds, e, rounds + 1) == pytest.approx(poly[-1])
