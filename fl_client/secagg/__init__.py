"""Secure aggregation shared by fl_client (site side) and fl_server (server
side): double-masked SecAgg whose per-round work rides on the train and
evaluate stages. No torch import anywhere in this package.

Stages and calls: see protocol.py's module docstring.
"""
from .errors import (BadSignature, ProtocolError, QuantizationError, ReconstructionFailed,
                     RevealRefused, RoundFailed, SecAggError, StateError, TamperedShare,
                     WireFormatError)
from .protocol import (AggregateResult, MaskedUpdate, ServerSecAgg, SiteSecAgg,
                       min_threshold)
from .quantize import NUM_EXTRA, Quantizer

__all__ = [
    "AggregateResult", "BadSignature", "MaskedUpdate", "NUM_EXTRA", "ProtocolError",
    "QuantizationError", "Quantizer", "ReconstructionFailed", "RevealRefused", "RoundFailed",
    "SecAggError", "ServerSecAgg", "SiteSecAgg", "StateError", "TamperedShare",
    "WireFormatError", "min_threshold",
]
