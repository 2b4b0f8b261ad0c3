"""A model on Flower's wire: one packed Array (fl_common.tensors.pack/unpack,
to_record/from_record): exact round trip, one clear error for every malformed
buffer a deviating peer could send, and few Flower objects per message."""
from __future__ import annotations

import json
import struct

import numpy as np
import pytest

from fl_common.tensors import PACKED, from_record, pack, to_record, unpack


def _model() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    return {"enc.0.weight": rng.standard_normal((8, 1, 3, 3, 3)).astype(np.float32),
            "enc.0.bias": rng.standard_normal(8).astype(np.float32),
            "norm.num_batches_tracked": np.array(7, np.int64),
            "half": rng.standard_normal((2, 3)).astype(np.float16),
            "empty": np.zeros((0, 4), np.float32)}


def test_the_round_trip_is_exact_in_order_dtype_and_shape():
    w = _model()
    got = unpack(pack(w))
    assert list(got) == list(w)
    for k in w:
        assert got[k].dtype == w[k].dtype and got[k].shape == w[k].shape
        np.testing.assert_array_equal(got[k], w[k])
    np.testing.assert_array_equal(from_record(to_record(w))["enc.0.weight"], w["enc.0.weight"])


def _raw(layout, data: bytes = b"") -> np.ndarray:
    h = json.dumps(layout).encode()
    return np.frombuffer(struct.pack("<Q", len(h)) + h + data, np.uint8)


@pytest.mark.parametrize("buf, says", [
    (np.zeros(3, np.uint8), "shorter than its header"),
    (np.frombuffer(struct.pack("<Q", 1 << 40), np.uint8), "header length"),
    (_raw({"a": 1}), "not a list"),
    (np.frombuffer(struct.pack("<Q", 3) + b"{{{", np.uint8), "not JSON"),
    (_raw([["a", "|O", [1]]], b"\0" * 8), "bad layout entry"),
    (_raw([["a", "<f4", [-1]]]), "bad layout entry"),
    (_raw([["a", "<f4", [True]]], b"\0" * 4), "bad layout entry"),
    (_raw([["a", "<f4", [2]], ["a", "<f4", [0]]], b"\0" * 8), "twice"),
    (_raw([["a", "<f4", [4]]], b"\0" * 8), "runs past the data"),
    (_raw([["a", "<f4", [1]]], b"\0" * 8), "bytes after the last tensor"),
])
def test_a_malformed_buffer_is_refused_naming_the_problem(buf, says):
    with pytest.raises(ValueError, match=says):
        unpack(buf)


def test_a_record_that_is_not_one_packed_model_is_refused():
    from flwr.app import Array, ArrayRecord
    w = _model()
    with pytest.raises(ValueError, match="exactly one packed array"):
        from_record(ArrayRecord({k: Array(v) for k, v in w.items()}))
    with pytest.raises(ValueError, match="exactly one packed array"):
        from_record(ArrayRecord({PACKED: Array(pack(w)), "extra": Array(np.zeros(1, np.float32))}))
    with pytest.raises(ValueError, match="cannot be packed"):
        pack({"s": np.array(["x"])})


def test_a_packed_model_is_a_handful_of_flower_objects():
    # each object is one request per hop (server -> SuperLink -> SuperNode -> runner)
    from flwr.app import Array, ArrayRecord, RecordDict
    from flwr.supercore.inflatable.inflatable_object import get_all_nested_objects
    rng = np.random.default_rng(1)
    w = {f"layer{i}.weight": rng.standard_normal((16, 8, 3, 3, 3)).astype(np.float32) for i in range(40)}
    per_tensor = len(get_all_nested_objects(RecordDict({"a": ArrayRecord({k: Array(v) for k, v in w.items()})})))
    packed = len(get_all_nested_objects(RecordDict({"a": to_record(w)})))
    assert per_tensor > 40 and packed <= 4, (per_tensor, packed)
