"""Fixed-point encoding: exact sums, the no-wrap bound, clip accounting."""
from __future__ import annotations

import numpy as np
import pytest

from fl_common.secagg import NUM_EXTRA, QuantizationError, Quantizer


def _sum(vectors):
    acc = np.zeros_like(vectors[0])
    for v in vectors:
        acc += v  # uint32, wraps mod 2^32 like the masked sum
    return acc


@pytest.mark.parametrize("seed", range(5))
def test_sum_dequantises_to_weighted_mean_within_bound(seed):
    rng = np.random.default_rng(seed)
    n_sites, size = int(rng.integers(2, 11)), int(rng.integers(1, 3000))
    q = Quantizer(clip_range=2.0, max_weight=500.0, num_sites=n_sites)
    xs = [rng.uniform(-2, 2, size).astype(np.float32) for _ in range(n_sites)]
    ws = rng.uniform(0.5, 500.0, n_sites)
    encs = [q.quantize(x, w) for x, w in zip(xs, ws)]
    assert all(e.vector.dtype == np.uint32 and e.vector.size == size + NUM_EXTRA for e in encs)
    mean, weight, clipped = q.dequantize(_sum([e.vector for e in encs]))
    ref = sum(w * x.astype(np.float64) for x, w in zip(xs, ws)) / ws.sum()
    assert mean.dtype == np.float32 and clipped == 0
    assert abs(weight - ws.sum()) <= n_sites / q.weight_scale
    assert np.abs(mean - ref).max() <= q.mean_tolerance(weight)


@pytest.mark.parametrize("sign", [1.0, -1.0])
def test_extreme_values_at_max_weight_do_not_wrap(sign):
    n = 10
    q = Quantizer(clip_range=8.0, max_weight=1000.0, num_sites=n)
    encs = [q.quantize(np.full(7, sign * 8.0, np.float32), 1000.0) for _ in range(n)]
    mean, weight, _ = q.dequantize(_sum([e.vector for e in encs]))
    assert np.allclose(mean, sign * 8.0, atol=q.mean_tolerance(weight))
    assert abs(weight - n * 1000.0) <= n / q.weight_scale


def test_clip_events_counted_and_values_clipped():
    q = Quantizer(clip_range=1.0, max_weight=10.0, num_sites=2)
    a = q.quantize(np.array([0.5, 3.0, -7.0, 1.0], np.float32), 1.0)
    b = q.quantize(np.array([2.0, 0.0, 0.0, -1.5], np.float32), 1.0)
    assert (a.clipped, b.clipped) == (2, 2)
    mean, _, clipped = q.dequantize(_sum([a.vector, b.vector]))
    assert clipped == 4
    assert np.allclose(mean, [0.75, 0.5, -0.5, 0.0], atol=q.mean_tolerance(2.0))


def test_weight_above_max_is_clipped_and_flagged():
    q = Quantizer(clip_range=1.0, max_weight=10.0, num_sites=2)
    e = q.quantize(np.zeros(3, np.float32), 25.0)
    assert e.weight_clipped and e.weight == pytest.approx(10.0)


def test_bad_inputs_fail_clearly():
    q = Quantizer(clip_range=1.0, max_weight=10.0, num_sites=2)
    with pytest.raises(QuantizationError, match="non-finite"):
        q.quantize(np.array([0.0, np.nan], np.float32), 1.0)
    with pytest.raises(QuantizationError, match="weight"):
        q.quantize(np.zeros(2, np.float32), -1.0)
    with pytest.raises(QuantizationError, match="clip_range"):
        Quantizer(clip_range=0.0, max_weight=1.0, num_sites=2)
    with pytest.raises(QuantizationError, match="uint32 level"):
        Quantizer(clip_range=1e6, max_weight=1e6, num_sites=50)
    with pytest.raises(QuantizationError, match="zero"):
        q.dequantize(np.zeros(5, np.uint32))


def test_chunked_encoding_equals_whole_array_float64_reference():
    # more than two chunks, with clipped values and a NaN only in the last one
    from fl_common.secagg import quantize as qm
    rng = np.random.default_rng(7)
    x = rng.normal(0, 0.7, 2 * qm._CHUNK + 1234).astype(np.float32)
    q = Quantizer(clip_range=1.0, max_weight=100.0, num_sites=3)
    e = q.quantize(x, 42.0)
    x64 = np.clip(x.astype(np.float64), -1.0, 1.0) * (e.weight * q.value_scale)
    assert np.array_equal(e.vector[:x.size].view(np.int32), np.rint(x64).astype(np.int32))
    assert e.clipped == int(np.count_nonzero(np.abs(x) > 1.0)) > 0
    mean, _, _ = q.dequantize(e.vector)
    ref = (e.vector[:x.size].view(np.int32).astype(np.float64) / (q.value_scale * e.weight))
    assert np.array_equal(mean, ref.astype(np.float32))
    x[-1] = np.nan
    with pytest.raises(QuantizationError, match="1 non-finite"):
        q.quantize(x, 42.0)


def test_encoding_added_onto_masks_equals_encoding_plus_masks():
    # what mask() relies on: adding in place onto the summed masks gives the
    # same uint32 vector as encoding then adding, across chunks and with wrap
    from fl_common.secagg import quantize as qm
    rng = np.random.default_rng(11)
    x = rng.normal(0, 0.5, qm._CHUNK + 77).astype(np.float32)
    masks = rng.integers(0, 2 ** 32, x.size + qm.NUM_EXTRA, dtype=np.uint32)
    q = Quantizer(clip_range=1.0, max_weight=100.0, num_sites=4)
    ref = q.quantize(x, 7.0).vector + masks
    got = q.quantize(x, 7.0, add_to=masks.copy())
    assert np.array_equal(got.vector, ref) and got.weight == q.quantize(x, 7.0).weight
    with pytest.raises(QuantizationError, match="add_to must be uint32"):
        q.quantize(x, 7.0, add_to=np.zeros(x.size, np.uint32))
