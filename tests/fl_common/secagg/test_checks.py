"""The checks both sides compute: threshold rule, advert checks, view digests."""
from __future__ import annotations

import numpy as np
import pytest

from fl_common.crypto import pki
from fl_common.crypto.secagg import x25519_keypair
from fl_common.secagg import BadSignature, ProtocolError
from fl_common.secagg.checks import (advert_signed_bytes, check_advert, check_view_signature,
                                     load_roster, received, vector_digest, view_digest,
                                     view_signed_bytes)
from fl_common.secagg.threshold import min_threshold, two_site_warning


def test_threshold_is_more_than_half_and_at_least_two():
    assert [min_threshold(n, 0) for n in (1, 2, 3, 4, 5, 10)] == [2, 2, 2, 3, 3, 6]


def test_threshold_follows_the_declared_colluders():
    # 2t > n + n_C
    assert [min_threshold(n, 1) for n in (2, 3, 4, 5, 6, 10)] == [2, 3, 3, 4, 4, 6]
    assert [min_threshold(n, 2) for n in (3, 4, 5, 10)] == [3, 4, 4, 7]
    with pytest.raises(ProtocolError, match="no threshold protects 3 sites against 3"):
        min_threshold(3, 3)
    with pytest.raises(ProtocolError, match=">= 0"):
        min_threshold(4, -1)
    assert "learns the other's update" in two_site_warning(2)
    assert two_site_warning(3) is None


def test_received_digest_binds_model_config_and_run():
    model = {"b": np.zeros(3, np.float32), "a": np.ones((2, 2), np.float32)}
    cfg = {"server-round": 2, "lr": 0.1, "run-id": "r"}
    got = received(model, cfg, "r", 2)
    assert got == received(dict(reversed(model.items())), dict(reversed(cfg.items())), "r", 2)
    assert got.model != received({**model, "a": np.full((2, 2), 1.0001, np.float32)}, cfg, "r", 2).model
    assert got.model == received(model, {**cfg, "lr": 0.0}, "r", 2).model
    assert got.digest != received(model, {**cfg, "lr": 0.0}, "r", 2).digest
    assert got.digest != received(model, {**cfg, "lr": 1}, "r", 2).digest  # 1 vs 1.0 differ
    assert got.digest != received({"a": model["a"], "b": model["b"].reshape(3, 1)}, cfg, "r", 2).digest


def _advert(key, site="site-a", run="run-1"):
    ch, mk = x25519_keypair()[1], x25519_keypair()[1]
    return {"site_id": site, "epoch": 1, "channel_public_key": ch, "mask_public_key": mk,
            "signature": pki.sign(key, advert_signed_bytes(run, site, 1, ch, mk))}


def test_advert_checks_roster_length_and_signature():
    key = pki.generate_enrollment_key()
    roster = load_roster({"site-a": pki.enrollment_public_openssh(key).decode()})
    check_advert("run-1", _advert(key), roster, "here")
    with pytest.raises(ProtocolError, match="not in the federation roster"):
        check_advert("run-1", _advert(key, site="site-x"), roster, "here")
    short = {**_advert(key), "mask_public_key": b"x" * 31}
    with pytest.raises(ProtocolError, match="wrong length"):
        check_advert("run-1", short, roster, "here")
    with pytest.raises(BadSignature, match="site 'site-a'"):
        check_advert("run-2", _advert(key), roster, "here")  # signed for another run
    with pytest.raises(ProtocolError, match="empty"):
        load_roster({})


Q = {"clip_range": 8.0, "max_weight": 64.0}


def test_view_digest_ignores_order_and_binds_every_field():
    a, b = ("site-a", 1, b"k" * 32), ("site-b", 2, b"m" * 32)
    d = view_digest("run-1", 3, 2, [a, b], **Q)
    assert d != view_digest("run-1", 3, 2, [a, b], clip_range=8.0e5, max_weight=64.0)
    assert d != view_digest("run-1", 3, 2, [a, b], clip_range=8.0, max_weight=65.0)
    assert d == view_digest("run-1", 3, 2, [b, a], **Q)
    assert d != view_digest("run-1", 4, 2, [a, b], **Q) != view_digest("run-1", 3, 3, [a, b], **Q)
    assert d != view_digest("run-1", 3, 2, [a, ("site-b", 3, b"m" * 32)], **Q)


def test_view_signature_is_checked_against_the_digest():
    key = pki.generate_enrollment_key()
    roster = {"site-a": key.public_key()}
    d = view_digest("run-1", 3, 2, [("site-a", 1, b"k" * 32)], **Q)
    sig = pki.sign(key, view_signed_bytes("run-1", 3, d, b"m" * 32))
    check_view_signature(roster, "site-a", sig, "run-1", 3, d, b"m" * 32, "view")
    with pytest.raises(BadSignature, match="view of a"):
        check_view_signature(roster, "site-a", sig, "run-1", 4, d, b"m" * 32, "view of a")
    with pytest.raises(BadSignature, match="another model"):
        check_view_signature(roster, "site-a", sig, "run-1", 3, d, b"n" * 32, "another model")


def test_vector_digest_is_of_little_endian_uint32():
    v = np.arange(5, dtype=np.uint32)
    assert vector_digest(v) == vector_digest(v.astype(">u4"))
    assert vector_digest(v) != vector_digest(v + 1)
