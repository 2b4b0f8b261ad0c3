"""Double-masked secure aggregation (Bonawitz et al. 2017): what both sides
share. The site side is fl_client.secagg (SiteSecAgg), the server side
fl_server.secagg (ServerSecAgg). Stage layout of
shared/notes/secure-aggregation.md: two setup stages per run (S1 advertise,
S2 share) and, per round, nothing beyond the two stages a round already has
(T: train + mask; E: evaluate + reveal).

Message flow (payloads are bytes of protos/secagg.proto, see wire.py; the
masked vector is a uint32 numpy array next to its manifest):

  S1  site.advertise()                         -> server.collect_adverts()
  S2  site.receive_roster_and_share(roster)    -> server.collect_share_bundles()
  T   site.mask(r, delta, weight, train_req)   -> server.collect_masked()
  E   site.reveal(r, reveal_req)               -> server.unmask()

Why a lying server learns nothing (beyond what an honest run shows):
- Keys are signed with the sites' enrollment keys and checked against the
  provisioning roster, so the server cannot put its own keys in.
- Every mask key is used for exactly one round (a new signed key and its
  shares ride on each T reply), so revealing a dropped site's key unmasks
  nothing else.
- A site reveals, per peer and round, either the self-mask share (peer alive)
  or the mask-key share (peer dropped), never both, and remembers on disk.
- The threshold satisfies 2t > n + n_C for n enrolled sites of which n_C may
  collude with the server (threshold.min_threshold), and each site checks it
  against its OWN declared n_C: the server cannot get t shares of b_j and t of
  s_j even with the colluders' help.
- Each site signs the round's participant view (sites, key epochs, keys) and
  the digest of the model and round config it received (checks.received) at
  T; at E it reveals only when every claimed survivor signed the SAME view
  and digest. This stands in for Bonawitz's consistency-check stage without a
  third stage: it stops a server from showing sites different participant
  sets, models or configs (Pasquini et al., CCS 2022) to isolate one update.
- A site-wide ledger (fl_client.secagg.ledger) refuses a second masked update
  for one (run, round) or one received model, in any session: no two sums
  over different survivors of the same updates.
- The weight, the clip count and the counts that would reveal the weight are
  masked coordinates (quantize.COUNTS); nothing per site travels beside them.

No torch import anywhere in this package.
"""
# Nothing imported here may import fl_common.crypto: crypto imports .errors,
# which runs this file first (checks.py and wire.py are imported by name).
from .errors import (BadSignature, ProtocolError, QuantizationError, ReconstructionFailed, ReplayRefused,
                     RevealRefused, RoundFailed, SecAggError, StateError, TamperedShare,
                     WireFormatError)
from .quantize import NUM_EXTRA, Quantizer
from .threshold import DEFAULT_COLLUDING_SITES, min_threshold, two_site_warning

__all__ = [
    "BadSignature", "NUM_EXTRA", "ProtocolError", "QuantizationError", "Quantizer",
    "ReconstructionFailed", "ReplayRefused", "RevealRefused", "RoundFailed", "SecAggError", "StateError",
    "TamperedShare", "WireFormatError", "DEFAULT_COLLUDING_SITES", "min_threshold", "two_site_warning",
]
