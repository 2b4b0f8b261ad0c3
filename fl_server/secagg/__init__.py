"""The server's side of secure aggregation (the protocol: fl_common.secagg)."""
from .protocol import AggregateResult, ServerSecAgg

__all__ = ["AggregateResult", "ServerSecAgg"]
