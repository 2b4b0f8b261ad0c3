"""The versioned wire format (protos/secagg.proto)."""
from __future__ import annotations

import pytest

from fl_common.secagg import WireFormatError, wire
from protos import secagg_pb2


def _advert():
    return {"site_id": "site-a", "epoch": 3, "channel_public_key": b"c" * 32,
            "mask_public_key": b"m" * 32, "signature": b"sig"}


def test_roundtrip_nested_and_repeated_fields():
    share = {"sender": "site-a", "receiver": "site-b", "kind": wire.MASK_KEY, "tag": 3,
             "nonce": b"n" * 12, "ciphertext": b"x" * 50}
    data = {"run_id": "run", "threshold": 2, "quant": {"clip_range": 4.0, "max_weight": 100.0},
            "adverts": [_advert(), dict(_advert(), site_id="site-b")]}
    out = wire.decode(wire.ROSTER, wire.encode(wire.ROSTER, data))
    assert out["version"] == wire.VERSION and out["adverts"][1]["site_id"] == "site-b"
    assert out["quant"] == {"clip_range": 4.0, "max_weight": 100.0}
    b = wire.decode(wire.SHARE_BUNDLE, wire.encode(wire.SHARE_BUNDLE, {
        "run_id": "run", "sender": "site-a", "shares": [share]}))
    assert b["shares"] == [share]


def test_payload_is_plain_protobuf():
    raw = wire.encode(wire.ADVERTISEMENT, {"run_id": "run", "advert": _advert()})
    msg = secagg_pb2.Advertisement.FromString(raw)
    assert msg.version == 1 and msg.advert.epoch == 3


def test_other_version_or_stage_is_refused():
    msg = secagg_pb2.Advertisement(version=2, type=secagg_pb2.ADVERTISEMENT, run_id="r")
    with pytest.raises(WireFormatError, match="version 2"):
        wire.decode(wire.ADVERTISEMENT, msg.SerializeToString(), "site-a")
    # parses as a TrainRequest field by field; only the type field tells
    raw = wire.encode(wire.REVEAL_REPLY, {"run_id": "r", "round": 1})
    with pytest.raises(WireFormatError, match="REVEAL_REPLY, expected TRAIN_REQUEST"):
        wire.decode(wire.TRAIN_REQUEST, raw, "server")
    with pytest.raises(WireFormatError, match="site-x"):
        wire.decode(wire.ROSTER, b"\xff\xff\xff garbage", "site-x")
    with pytest.raises(WireFormatError, match="no field"):
        wire.encode(wire.ROSTER, {"run_id": "r", "bogus": 1})
