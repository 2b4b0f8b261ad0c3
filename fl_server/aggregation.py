"""How a round's deltas reach the server: in the clear, or masked.

Both modes have the same face, so the round loop does not care which runs:
  setup(stage, nodes)             once per run (secure aggregation: advertise + share)
  train_extra / eval_extra        records to add to each site's T / E message (train_extra also
                                  gets the digest of the model + round config it rides with)
  collect_train(r, replies)       keep what T replies carried (called as they arrive)
  aggregate(r, survivors, eval_replies, n) -> (weighted mean delta, summed weight)
  round_summary()                 what the aggregated round adds to its row (summed values)
  model_spent(r)                  True when round r must not be re-run from the same model
A mode gets everything it needs as arguments (the Stage: grid + node -> site
map); it never reaches into the round loop.
"""
from __future__ import annotations

from typing import Protocol

import numpy as np

from fl_common.secagg import RoundFailed  # one failure type for both modes
from fl_common import keys as K

from .strategy import weighted_mean


class Aggregation(Protocol):
    """The face the round loop sees (PlainAggregation, secure.SecureAggregation)."""

    signs_received: bool  # whether train_extra needs the digest (it costs a hash of the model)

    def describe(self) -> dict: ...
    def setup(self, stage, nodes: list[int]) -> None: ...
    def train_extra(self, r: int, nodes: list[int], received: bytes) -> dict: ...
    def eval_extra(self, r: int, survivors: list[int]) -> dict: ...
    def collect_train(self, r: int, replies: dict) -> None: ...
    def aggregate(self, r: int, survivors: list[int], eval_replies: dict, n: int) -> tuple[np.ndarray, float]: ...
    def round_summary(self) -> dict: ...
    def model_spent(self, r: int) -> bool: ...
    def state(self) -> dict: ...
    def load_state(self, st: dict) -> None: ...


class PlainAggregation:
    """Deltas in the clear (TLS still protects the wire). For development and
    for measuring what masking costs; `fedvox server` masks by default."""

    signs_received = False

    def __init__(self):
        self._train: dict = {}

    def describe(self) -> dict:
        return {"mode": "off"}

    def setup(self, stage, nodes) -> None:
        pass

    def train_extra(self, r, nodes, received: bytes = b"") -> dict:
        self._train = {}  # a new round
        return {}

    def round_summary(self) -> dict:
        return {}  # per-site values are in the site rows already

    def model_spent(self, r) -> bool:
        return False  # the server sees every update anyway: a retry reveals nothing new

    def eval_extra(self, r, nodes) -> dict:
        return {}

    def collect_train(self, r, replies: dict) -> None:
        self._train.update(replies)

    def aggregate(self, r, survivors, eval_replies, n: int):
        deltas, weights = [], []
        for node in survivors:
            m = self._train[node]
            d = m.content.array_records[K.REC_DELTA][K.FLAT].numpy()
            if d.shape != (n,):
                raise RoundFailed(f"node {node} sent {d.shape[0]} values, the model has {n}")
            deltas.append(d)
            weights.append(float(m.content.metric_records[K.REC_METRICS][K.NUM_EXAMPLES]))
        return weighted_mean(deltas, weights), float(sum(weights))

    def state(self) -> dict:
        return {}

    def load_state(self, st: dict) -> None:
        pass
