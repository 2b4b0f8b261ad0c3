"""The fingerprint vectors summed by the weights' secure aggregation (real
SiteSecAgg / ServerSecAgg objects) equal their plaintext sum, exactly."""
import numpy as np

from fl_common.fingerprint_codec import decode_sum, encode_counts
from imaging_core.plan.aggregate import aggregate_fingerprints
from imaging_core.plan.layout import Layout


def _replies(rng, names, modality="CT"):
    size = Layout(modality).size
    out = {}
    for i, s in enumerate(names):
        vec = rng.integers(0, 50, size)
        vec[:5] = rng.integers(0, 2 ** 31, 5)     # voxel-sized counts too
        out[s] = {"version": 1, "site": s, "modality": modality, "vector": vec.tolist(),
                  "categorical": {"orientation": {"RAS": 3 + i}}, "summary": {"cases": 3 + i}}
    return out


def test_secure_sum_equals_plaintext_sum(federation):
    fed = federation(3)
    fed.setup()
    rng = np.random.default_rng(1)
    replies = _replies(rng, fed.names)
    c, w = fed.server.clip_range, fed.server.max_weight
    deltas = {s: encode_counts(np.asarray(r["vector"]), c) for s, r in replies.items()}
    result = fed.round(1, deltas, {s: w for s in fed.names})
    secure = decode_sum(result.mean, len(result.survivors), c)
    plain = aggregate_fingerprints(replies)["CT"].vector
    assert secure.dtype == np.int64 and np.array_equal(secure, plain)
    # what the server held from one site is not that site's vector
    assert result.clipped == 0


def test_codec_roundtrip_bounds():
    v = np.array([0, 1, 4095, 4096, 2 ** 36 - 1])
    enc = encode_counts(v, 4.0)
    assert enc.max() < 4.0 and np.array_equal(decode_sum(enc, 1, 4.0), v)
