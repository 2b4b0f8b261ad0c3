"""Secure-aggregation errors. Every message names the peer (site) involved so an
operator can tell a flaky link from a misbehaving party."""
from __future__ import annotations


class SecAggError(Exception):
    """Base class for every secure-aggregation failure."""


class ProtocolError(SecAggError):
    """A payload is well formed but does not fit the protocol state (wrong run,
    round, unknown site, inconsistent sets...)."""


class WireFormatError(ProtocolError):
    """A payload cannot be decoded, or has another wire version or stage type."""


class BadSignature(SecAggError):
    """A signature by a site's enrollment key does not verify."""


class TamperedShare(SecAggError):
    """An encrypted share failed AES-GCM authentication (modified, replayed
    under another context, or encrypted under another key)."""


class RevealRefused(SecAggError):
    """The site will not reveal what the server asked for: revealing it could
    expose a site's update (e.g. both shares for one peer in one round)."""


class RoundFailed(SecAggError):
    """The round cannot be aggregated (too few survivors, missing reveals); the
    global model must stay unchanged."""


class ReconstructionFailed(RoundFailed):
    """Shares were combined but the secret does not match its public
    commitment: some revealed share was wrong."""


class StateError(SecAggError):
    """The site's persisted state is missing, unreadable or for another run."""


class QuantizationError(SecAggError):
    """The update cannot be quantised (non-finite values, bad parameters)."""


class ReplayRefused(SecAggError):
    """The site already contributed a masked update for this (run, round) or
    for this model: a second one, summed over other survivors, would give the
    server the difference of two sums (one site's update)."""
