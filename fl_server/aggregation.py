"""How a round's deltas reach the server: in the clear, or masked.

Both modes have the same face, so the round loop does not care which runs:
  setup(server, nodes)            once per run (secure aggregation: advertise + share)
  train_extra / eval_extra        records to add to each site's T / E message
  collect_train(r, replies)       keep what T replies carried (called as they arrive)
  aggregate(r, survivors, eval_replies, n) -> (weighted mean delta, summed weight)
"""
from __future__ import annotations

from fl_common.secagg import RoundFailed  # one failure type for both modes

from .strategy import weighted_mean


class PlainAggregation:
    """Deltas in the clear (TLS still protects the wire). For development and
    for measuring what masking costs; `fedvox server` masks by default."""

    def __init__(self):
        self._train: dict = {}

    def describe(self) -> dict:
        return {"mode": "off"}

    def setup(self, server, nodes) -> None:
        pass

    def train_extra(self, r, nodes) -> dict:
        self._train = {}  # a new round
        return {}

    def eval_extra(self, r, nodes) -> dict:
        return {}

    def collect_train(self, r, replies: dict) -> None:
        self._train.update(replies)

    def aggregate(self, r, survivors, eval_replies, n: int):
        deltas, weights = [], []
        for node in survivors:
            m = self._train[node]
            d = m.content.array_records["delta"]["flat"].numpy()
            if d.shape != (n,):
                raise RoundFailed(f"node {node} sent {d.shape[0]} values, the model has {n}")
            deltas.append(d)
            weights.append(float(m.content.metric_records["metrics"]["num-examples"]))
        return weighted_mean(deltas, weights), float(sum(weights))

    def state(self) -> dict:
        return {}

    def load_state(self, st: dict) -> None:
        pass


def make_aggregation(spec: dict, fed: dict):
    mode = spec.get("secure_aggregation", "off")
    if mode in ("off", False, None):
        return PlainAggregation()
    from .secure import SecureAggregation
    return SecureAggregation(spec, fed)
