"""Secure aggregation end to end, in process: the unmasked mean is exact, the
masked vectors look uniform, dropouts before or after T are survived, a round
below the threshold fails cleanly, masks prepared while a site trains change
nothing."""
from __future__ import annotations

import numpy as np
import pytest

from fl_common.secagg import ProtocolError, Quantizer, RoundFailed


# ------------------------------------------------------------------ exactness
@pytest.mark.parametrize("n", [2, 3, 4, 6, 8, 10])
def test_unmasked_mean_equals_plaintext_weighted_mean(federation, n):
    rng = np.random.default_rng(n)
    fed = federation(n)
    fed.setup()
    for r in (1, 2):  # two rounds: the second runs on keys sent in the first
        size = int(rng.integers(1, 5000))
        deltas, weights = fed.deltas(rng, fed.names, size), fed.weights(rng, fed.names)
        res = fed.round(r, deltas, weights)
        ref = fed.plain_mean(deltas, weights, fed.names)
        assert res.mean.dtype == np.float32 and res.mean.shape == (size,)
        assert np.abs(res.mean - ref).max() <= res.tolerance
        assert res.total_weight == pytest.approx(sum(weights.values()), rel=1e-6)
        assert res.survivors == fed.names and res.dropped == []


def test_clip_events_are_counted(federation):
    fed = federation(3, clip_range=1.0)
    fed.setup()
    deltas = {s: np.zeros(100, np.float32) for s in fed.names}
    deltas["site-00"][:5] = 3.0
    deltas["site-02"][10:12] = -1.5
    weights = dict.fromkeys(fed.names, 1.0)
    ups = fed.train(1, deltas, weights)
    assert (ups["site-00"].clipped, ups["site-01"].clipped, ups["site-02"].clipped) == (5, 0, 2)
    res = fed.evaluate(1)
    assert res.clipped == 7
    clipped = {s: np.clip(d, -1, 1) for s, d in deltas.items()}
    assert np.abs(res.mean - fed.plain_mean(clipped, weights, fed.names)).max() <= res.tolerance


# -------------------------------------------------------------------- privacy
def _bit_z(vec: np.ndarray) -> float:
    bits = np.unpackbits(vec.view(np.uint8)).reshape(-1, 32)
    ones = bits.sum(axis=0)
    n = bits.shape[0]
    return float(np.abs((ones - n / 2) / np.sqrt(n / 4)).max())


def test_masked_vectors_look_uniform(federation):
    fed = federation(3)
    fed.setup()
    size = 60_000
    deltas = {s: np.zeros(size, np.float32) for s in fed.names}  # maximally structured input
    deltas["site-01"][:] = 0.25
    ups = fed.train(1, deltas, dict.fromkeys(fed.names, 10.0))
    plain = Quantizer(4.0, 1000.0, 3).quantize(deltas["site-01"], 10.0).vector
    assert fed.chi2_bytes_p(plain) < 1e-6 and _bit_z(plain) > 10  # the test has power
    for s, u in ups.items():
        assert fed.chi2_bytes_p(u.vector) > 1e-6, s
        assert _bit_z(u.vector) < 5.5, s
    res = fed.evaluate(1)
    assert np.abs(res.mean - 0.25 / 3).max() <= res.tolerance


def test_corrupted_vector_is_not_summed(federation):
    fed = federation(4)
    fed.setup()
    rng = np.random.default_rng(2)
    deltas, weights = fed.deltas(rng, fed.names, 300), fed.weights(rng, fed.names)
    reqs = fed.train_request(1)
    ups = {s: fed.sites[s].mask(1, deltas[s], weights[s], reqs[s], received=fed.received(1)) for s in fed.names}
    bad = ups["site-03"].vector.copy()
    bad[7] += 1
    fed.server.collect_masked(1, {**{s: (u.vector, u.payload) for s, u in ups.items()},
                                  "site-03": (bad, ups["site-03"].payload)})
    res = fed.evaluate(1)
    assert res.dropped == ["site-03"] and "hash" in res.rejected["site-03"]
    ref = fed.plain_mean(deltas, weights, ["site-00", "site-01", "site-02"])
    assert np.abs(res.mean - ref).max() <= res.tolerance


# -------------------------------------------------------------------- dropout
def test_dropout_during_training_with_enough_survivors(federation):
    fed = federation(6)  # threshold 4
    fed.setup()
    rng = np.random.default_rng(3)
    deltas, weights = fed.deltas(rng, fed.names, 777), fed.weights(rng, fed.names)
    res = fed.round(1, deltas, weights, drop_before_train=("site-01", "site-04"))
    alive = [s for s in fed.names if s not in ("site-01", "site-04")]
    assert res.survivors == alive and res.dropped == ["site-01", "site-04"]
    assert np.abs(res.mean - fed.plain_mean(deltas, weights, alive)).max() <= res.tolerance
    # the dropped sites have no key for the next round; the others go on
    assert fed.server.eligible_sites() == alive
    deltas = fed.deltas(rng, alive, 777)
    res = fed.round(2, deltas, weights)
    assert np.abs(res.mean - fed.plain_mean(deltas, weights, alive)).max() <= res.tolerance


def test_site_lost_after_its_train_reply_still_counts(federation):
    fed = federation(5)  # threshold 3
    fed.setup()
    rng = np.random.default_rng(4)
    deltas, weights = fed.deltas(rng, fed.names, 321), fed.weights(rng, fed.names)
    res = fed.round(1, deltas, weights, drop_before_train=("site-00",),
                    drop_after_train=("site-03",))
    alive = ["site-01", "site-02", "site-03", "site-04"]
    assert res.survivors == alive and res.dropped == ["site-00"]
    assert np.abs(res.mean - fed.plain_mean(deltas, weights, alive)).max() <= res.tolerance


def test_below_threshold_the_round_fails_then_rekeys(federation):
    fed = federation(5)  # threshold 3
    fed.setup()
    rng = np.random.default_rng(5)
    deltas, weights = fed.deltas(rng, fed.names, 64), fed.weights(rng, fed.names)
    fed.train(1, deltas, weights, skip=("site-00", "site-01", "site-02"))
    with pytest.raises(RoundFailed, match="fewer than the threshold 3"):
        fed.server.reveal_requests(1)
    # too few keys left for round 2: the server must re-key first
    with pytest.raises(RoundFailed, match="re-key"):
        fed.train_request(2)
    assert fed.setup() == fed.names
    res = fed.round(2, deltas, weights)
    assert np.abs(res.mean - fed.plain_mean(deltas, weights, fed.names)).max() <= res.tolerance


def test_too_few_reveals_fail_the_round(federation):
    fed = federation(5)
    fed.setup()
    rng = np.random.default_rng(6)
    fed.train(1, fed.deltas(rng, fed.names, 64), fed.weights(rng, fed.names))
    with pytest.raises(RoundFailed, match="2 sites revealed"):
        fed.evaluate(1, skip=("site-00", "site-01", "site-02"))


def test_zero_total_weight_fails_the_round_cleanly(federation):
    fed = federation(2)
    fed.setup()
    fed.train(1, {s: np.ones(4, np.float32) for s in fed.names}, dict.fromkeys(fed.names, 0.0))
    with pytest.raises(RoundFailed, match="summed weight is zero"):
        fed.evaluate(1)


# ------------------------------------------- masks prepared while the site trains
def test_prepared_masks_give_the_same_exact_mean_and_persist_nothing(federation):
    rng = np.random.default_rng(11)
    fed = federation(3)
    fed.setup()
    size = 3000
    deltas, weights = fed.deltas(rng, fed.names, size), fed.weights(rng, fed.names)
    reqs = fed.train_request(1, fed.names)
    states = {s: (fed.root / s / "secagg_state.json").read_bytes() for s in fed.names}
    prepared = {s: fed.sites[s].prepare_mask(1, reqs[s], size) for s in fed.names}
    assert all((fed.root / s / "secagg_state.json").read_bytes() == states[s] for s in fed.names)
    ups = {s: fed.sites[s].mask(1, deltas[s], weights[s], reqs[s], prepared=prepared[s], received=fed.received(1)) for s in fed.names}
    assert all(p.masks is None for p in prepared.values())  # each prepared mask is used once
    fed.server.collect_masked(1, {s: (u.vector, u.payload) for s, u in ups.items()})
    res = fed.evaluate(1)
    assert np.abs(res.mean - fed.plain_mean(deltas, weights, fed.names)).max() <= res.tolerance
    # the spent round cannot be prepared again
    with pytest.raises(ProtocolError, match="masked once"):
        fed.sites["site-00"].prepare_mask(1, reqs["site-00"], size)


def test_a_prepared_mask_that_does_not_fit_is_recomputed(federation):
    rng = np.random.default_rng(12)
    fed = federation(2)
    fed.setup()
    deltas, weights = fed.deltas(rng, fed.names, 500), fed.weights(rng, fed.names)
    reqs = fed.train_request(1, fed.names)
    wrong_size = fed.sites["site-00"].prepare_mask(1, reqs["site-00"], 499)
    ups = {"site-00": fed.sites["site-00"].mask(1, deltas["site-00"], weights["site-00"], reqs["site-00"], received=fed.received(1),
                                                prepared=wrong_size),
           "site-01": fed.sites["site-01"].mask(1, deltas["site-01"], weights["site-01"], reqs["site-01"], received=fed.received(1))}
    assert wrong_size.masks is not None  # never used
    fed.server.collect_masked(1, {s: (u.vector, u.payload) for s, u in ups.items()})
    res = fed.evaluate(1)
    assert np.abs(res.mean - fed.plain_mean(deltas, weights, fed.names)).max() <= res.tolerance
