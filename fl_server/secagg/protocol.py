"""The server's side of secure aggregation (ServerSecAgg): relays keys and
shares, sums masked vectors, strips the masks from what survivors reveal. The
protocol and why it is safe: fl_common.secagg's docstring.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

import numpy as np

from fl_common.crypto import secagg as crypto
from fl_common.secagg import wire
from fl_common.secagg.checks import (DEFAULT_CLIP_RANGE, DEFAULT_MAX_WEIGHT, check_advert,
                                     check_view_signature, load_roster, vector_digest,
                                     view_digest)
from fl_common.secagg.errors import (ProtocolError, QuantizationError, ReconstructionFailed,
                                     RoundFailed, SecAggError)
from fl_common.secagg.quantize import NUM_EXTRA, Quantizer
from fl_common.secagg.threshold import DEFAULT_COLLUDING_SITES, min_threshold, two_site_warning

log = logging.getLogger(__name__)


@dataclass
class AggregateResult:
    """The round's aggregate: the weighted mean of the survivors' (clipped)
    updates, their summed weight, and who was in and out."""
    round: int
    mean: np.ndarray          # float32[n]
    total_weight: float
    survivors: list[str]
    dropped: list[str]
    clipped: int              # clip events summed over survivors
    tolerance: float          # bound on |mean - plaintext weighted mean|
    counts: dict = field(default_factory=dict)   # summed quantize.COUNTS (e.g. patches)
    rejected: dict[str, str] = field(default_factory=dict)  # site -> why its reply was dropped


@dataclass
class _Round:
    number: int
    view: dict[str, dict]                 # site -> its advert used this round
    digest: bytes
    received: bytes                       # digest of the model + round config sent
    quantizer: Quantizer
    acc: np.ndarray | None = None
    n: int | None = None
    survivors: dict[str, dict] = field(default_factory=dict)   # site -> manifest
    rejected: dict[str, str] = field(default_factory=dict)
    reveal_sent: bool = False


class ServerSecAgg:
    """The server's side: relays keys and shares, sums masked vectors as they
    arrive (O(n) memory), and strips the masks from the shares the survivors
    reveal. It never sees an unmasked per-site update.

    roster: {site_id: enrollment public key} of every enrolled site (used to
    check signatures early; the sites check them too). threshold defaults to
    the smallest the sites accept for ``colluding_sites`` declared colluders:
    2t > n + n_C (threshold.min_threshold)."""

    def __init__(self, run_id: str, roster: Mapping[str, Any], threshold: int | None = None,
                 clip_range: float = DEFAULT_CLIP_RANGE, max_weight: float = DEFAULT_MAX_WEIGHT,
                 colluding_sites: int = DEFAULT_COLLUDING_SITES):
        self.run_id = str(run_id)
        self.roster = load_roster(roster)
        self.colluding_sites = int(colluding_sites)
        need = min_threshold(len(self.roster), self.colluding_sites)
        self.threshold = need if threshold is None else int(threshold)
        if self.threshold < need:
            raise ProtocolError(f"threshold {self.threshold} is below {need}: with "
                                f"{self.colluding_sites} colluding sites among "
                                f"{len(self.roster)}, 2t > n + n_C requires t >= {need}")
        if self.threshold > len(self.roster):
            raise ProtocolError(f"threshold {self.threshold} exceeds the {len(self.roster)} "
                                "enrolled sites")
        Quantizer(clip_range, max_weight, len(self.roster))  # validates for a full round
        self.warning = two_site_warning(len(self.roster))
        if self.warning:
            log.warning("secagg: %s", self.warning)
        self.clip_range, self.max_weight = float(clip_range), float(max_weight)
        self._adverts: dict[str, dict] = {}
        self.setup_rejected: dict[str, str] = {}   # site -> why it was left out of setup
        self.holders: list[str] = []
        self._keys: dict[str, dict] = {}  # site -> its advert of an unused mask key
        # (site, key epoch) -> holder -> encrypted share of that mask key
        self._key_shares: dict[tuple[str, int], dict[str, dict]] = {}
        self._rounds: dict[int, _Round] = {}
        # round -> owner -> holder -> encrypted share of the owner's self-mask seed
        self._self_shares: dict[int, dict[str, dict[str, dict]]] = {}

    # ---------------------------------------------------------------- S1/S2
    def collect_adverts(self, replies: Mapping[str, bytes]) -> bytes:
        """S1 replies {site: payload} -> the S2 roster payload (same bytes for
        every site). Starts a new setup: previous unused keys are dropped."""
        self._adverts, self.setup_rejected = {}, {}
        for site, payload in replies.items():
            try:
                msg = wire.decode(wire.ADVERTISEMENT, payload, f"site {site!r}")
                adv = msg["advert"]
                if msg["run_id"] != self.run_id or adv is None or adv["site_id"] != site:
                    raise ProtocolError(f"advertisement from site {site!r} is for another "
                                        "run or site")
                check_advert(self.run_id, adv, self.roster, "advertisement")
            except SecAggError as e:  # leave the site out of this setup, say why
                self.setup_rejected[site] = str(e)
                log.warning("secagg setup: advertisement of site %r rejected: %s", site, e)
                continue
            self._adverts[site] = adv
        if len(self._adverts) < self.threshold:
            raise RoundFailed(f"{len(self._adverts)} sites advertised keys, fewer than the "
                              f"threshold {self.threshold}: cannot set up secure aggregation")
        self.holders = sorted(self._adverts)
        self._keys, self._key_shares = {}, {}
        return wire.encode(wire.ROSTER, {
            "run_id": self.run_id, "threshold": self.threshold,
            "quant": {"clip_range": self.clip_range, "max_weight": self.max_weight},
            "adverts": [self._adverts[s] for s in self.holders]})

    def collect_share_bundles(self, replies: Mapping[str, bytes]) -> list[str]:
        """S2 replies {site: payload}; returns the sites ready for a round."""
        for site, payload in replies.items():
            try:
                msg = wire.decode(wire.SHARE_BUNDLE, payload, f"site {site!r}")
                adv = self._adverts.get(site)
                if msg["run_id"] != self.run_id or msg["sender"] != site or adv is None:
                    raise ProtocolError(f"share bundle from site {site!r} does not match "
                                        "its advert")
                shares = self._check_shares(site, msg["shares"], wire.MASK_KEY, adv["epoch"])
            except SecAggError as e:  # the site just is not eligible
                self.setup_rejected[site] = str(e)
                log.warning("secagg setup: share bundle of site %r rejected: %s", site, e)
                continue
            self._keys[site] = adv
            self._key_shares[(site, adv["epoch"])] = shares
        return self.eligible_sites()

    def eligible_sites(self) -> list[str]:
        """Sites with an unused, shared mask key: candidates for the next round.
        When fewer than the threshold remain, run S1/S2 again (re-key)."""
        return sorted(self._keys)

    def _check_shares(self, site: str, shares: Sequence[Mapping], kind: int,
                      tag: int) -> dict[str, dict]:
        out: dict[str, dict] = {}
        for sh in shares:
            if (sh["sender"] != site or sh["kind"] != kind or sh["tag"] != tag
                    or sh["receiver"] not in self.holders or sh["receiver"] in out):
                raise ProtocolError(f"site {site!r} sent a malformed share for "
                                    f"{sh['receiver']!r}")
            out[sh["receiver"]] = dict(sh)
        if set(out) != set(self.holders):
            raise ProtocolError(f"site {site!r} sent shares for {len(out)} of "
                                f"{len(self.holders)} roster sites")
        return out

    # ------------------------------------------------------------------ T
    def train_requests(self, round_: int, participants: Sequence[str] | None = None, *,
                       received: bytes) -> dict[str, bytes]:
        """{site: TrainRequest payload} for round `round_` (the same bytes for
        every participant). Their keys are spent by this call. ``received``:
        checks.received(...).digest of the model and round config sent with it
        (every site signs the digest it computes itself)."""
        round_ = int(round_)
        if round_ in self._rounds:
            raise ProtocolError(f"round {round_} was already started")
        part = self.eligible_sites() if participants is None else sorted(set(participants))
        missing = [s for s in part if s not in self._keys]
        if missing:
            raise ProtocolError(f"sites {missing} have no unused mask key: re-key (S1/S2) first")
        if len(part) < self.threshold:
            raise RoundFailed(f"round {round_}: {len(part)} participants with keys, fewer than "
                              f"the threshold {self.threshold}: re-key (S1/S2) first")
        view = {s: self._keys.pop(s) for s in part}
        digest = view_digest(
            self.run_id, round_, self.threshold,
            [(s, a["epoch"], a["mask_public_key"]) for s, a in view.items()],
            clip_range=self.clip_range, max_weight=self.max_weight)
        self._rounds[round_] = _Round(round_, view, digest, bytes(received),
                                      Quantizer(self.clip_range, self.max_weight, len(part)))
        self._self_shares[round_] = {}
        payload = wire.encode(wire.TRAIN_REQUEST, {
            "run_id": self.run_id, "round": round_, "participants": list(view.values())})
        return {s: payload for s in part}

    def collect_masked(self, round_: int, replies: Mapping[str, tuple[Any, bytes]]) -> list[str]:
        """T replies {site: (masked vector, manifest payload)}; the vector may
        be a uint32 array or its little-endian bytes. May be called several
        times as replies arrive; a reply that fails a check is not summed (the
        site counts as dropped, reason in AggregateResult.rejected). Returns
        the survivors so far."""
        rnd = self._round(round_)
        if rnd.reveal_sent:
            raise ProtocolError(f"round {round_}: reveal requests already sent; late reply")
        for site, (vector, payload) in replies.items():
            try:
                self._add_masked(rnd, site, vector, payload)
            except (SecAggError, ValueError) as e:
                rnd.rejected[site] = str(e)
                log.warning("secagg round %s: reply of site %r not summed: %s", round_, site, e)
        return sorted(rnd.survivors)

    def _add_masked(self, rnd: _Round, site: str, vector: Any, payload: bytes) -> None:
        msg = wire.decode(wire.MASKED_MANIFEST, payload, f"site {site!r}")
        if msg["run_id"] != self.run_id or msg["round"] != rnd.number or msg["site_id"] != site:
            raise ProtocolError(f"manifest of site {site!r} is for another run/round/site")
        if site not in rnd.view:
            raise ProtocolError(f"site {site!r} is not a participant of round {rnd.number}")
        if site in rnd.survivors:
            raise ProtocolError(f"site {site!r} sent two masked updates for round {rnd.number}")
        if msg["num_extra"] != NUM_EXTRA:
            raise ProtocolError(f"site {site!r}: {msg['num_extra']} extra coordinates, "
                                f"expected {NUM_EXTRA}")
        n = int(msg["num_values"])
        if rnd.n is not None and n != rnd.n:
            raise ProtocolError(f"site {site!r} sent {n} values, others sent {rnd.n}")
        if isinstance(vector, (bytes, bytearray, memoryview)):
            vec = np.frombuffer(vector, dtype="<u4")
        else:
            vec = np.asarray(vector)
            if vec.dtype != np.uint32:
                raise ProtocolError(f"site {site!r}: masked vector is {vec.dtype}, not uint32")
            vec = vec.reshape(-1)
        if vec.size != n + NUM_EXTRA:
            raise ProtocolError(f"site {site!r}: vector has {vec.size} coordinates, manifest "
                                f"says {n + NUM_EXTRA}")
        if vector_digest(vec) != msg["vector_sha256"]:
            raise ProtocolError(f"site {site!r}: masked vector does not match its manifest hash")
        check_view_signature(self.roster, site, msg["view_signature"], self.run_id, rnd.number,
                             rnd.digest, rnd.received,
                             f"round {rnd.number} view signature of site {site!r} (another "
                             "view, or another model or round config than was sent)")
        b_shares = self._check_shares(site, msg["self_mask_shares"], wire.SELF_MASK, rnd.number)
        nxt = msg["next_key"]
        if nxt is None or nxt["site_id"] != site:
            raise ProtocolError(f"site {site!r} sent no next-round key")
        check_advert(self.run_id, nxt, self.roster, "next-round key")
        if (nxt["epoch"] <= rnd.view[site]["epoch"]
                or nxt["channel_public_key"] != rnd.view[site]["channel_public_key"]):
            raise ProtocolError(f"site {site!r}: next-round key has a stale epoch or a new "
                                "channel key")
        s_shares = self._check_shares(site, msg["next_key_shares"], wire.MASK_KEY, nxt["epoch"])
        # all checks passed: sum it and keep what E and the next round need
        if rnd.acc is None:
            rnd.n, rnd.acc = n, np.zeros(n + NUM_EXTRA, dtype=np.uint32)
        np.add(rnd.acc, vec, out=rnd.acc)
        rnd.survivors[site] = {"commitment": msg["self_mask_commitment"],
                               "view_signature": msg["view_signature"]}
        self._self_shares[rnd.number][site] = b_shares
        self._keys[site] = nxt
        self._key_shares[(site, nxt["epoch"])] = s_shares

    # ------------------------------------------------------------------ E
    def reveal_requests(self, round_: int) -> dict[str, bytes]:
        """{survivor: RevealRequest payload}. Raises RoundFailed when fewer
        than the threshold survived T (the round is then abandoned)."""
        rnd = self._round(round_)
        U = sorted(rnd.survivors)
        if len(U) < self.threshold:
            self._abandon(round_)
            raise RoundFailed(f"round {round_}: {len(U)} masked updates arrived, fewer than the "
                              f"threshold {self.threshold}; global model stays unchanged")
        rnd.reveal_sent = True
        dropped = [s for s in rnd.view if s not in rnd.survivors]
        sigs = [{"site_id": s, "signature": rnd.survivors[s]["view_signature"]} for s in U]
        out = {}
        for holder in U:
            shares = [self._self_shares[round_][j][holder] for j in U]
            shares += [self._key_shares[(j, rnd.view[j]["epoch"])][holder] for j in dropped
                       if holder in self._key_shares.get((j, rnd.view[j]["epoch"]), {})]
            out[holder] = wire.encode(wire.REVEAL_REQUEST, {
                "run_id": self.run_id, "round": round_, "survivors": U,
                "view_signatures": sigs, "shares": shares})
        return out

    def unmask(self, round_: int, replies: Mapping[str, bytes]) -> AggregateResult:
        """E replies {site: RevealReply payload} -> the weighted mean. Raises
        RoundFailed (global model must stay unchanged) when fewer than the
        threshold revealed, or ReconstructionFailed when a secret does not match
        its commitment. The round's state is freed either way."""
        rnd = self._round(round_)
        if not rnd.reveal_sent:
            raise ProtocolError(f"round {round_}: reveal requests were not sent yet")
        try:
            return self._unmask(rnd, replies)
        finally:
            self._abandon(round_)

    def _unmask(self, rnd: _Round, replies: Mapping[str, bytes]) -> AggregateResult:
        t, r = self.threshold, rnd.number
        U = sorted(rnd.survivors)
        dropped = sorted(s for s in rnd.view if s not in rnd.survivors)
        want = {**{s: (wire.SELF_MASK, r) for s in U},
                **{s: (wire.MASK_KEY, rnd.view[s]["epoch"]) for s in dropped}}
        shares: dict[str, dict[int, bytes]] = {s: {} for s in want}
        revealers = []
        for site, payload in replies.items():
            if site not in rnd.survivors:
                rnd.rejected[site] = "reveal from a site that is not a survivor"
                continue
            try:
                msg = wire.decode(wire.REVEAL_REPLY, payload, f"site {site!r}")
                if msg["run_id"] != self.run_id or msg["round"] != r or msg["site_id"] != site:
                    raise ProtocolError(f"reveal of site {site!r} is for another run/round/site")
                index = self.holders.index(site) + 1
                for sh in msg["shares"]:
                    if (sh["owner"] not in want or (sh["kind"], sh["tag"]) != want[sh["owner"]]
                            or sh["index"] != index or len(sh["value"]) != crypto.SECRET_BYTES):
                        raise ProtocolError(f"site {site!r} revealed an unexpected share "
                                            f"for {sh['owner']!r}")
            except SecAggError as e:
                rnd.rejected[site] = str(e)
                log.warning("secagg round %s: reveal of site %r ignored: %s", r, site, e)
                continue
            revealers.append(site)
            for sh in msg["shares"]:
                shares[sh["owner"]][index] = sh["value"]
        if len(revealers) < t:
            raise RoundFailed(f"round {r}: {len(revealers)} sites revealed, fewer than the "
                              f"threshold {t}; global model stays unchanged")
        short = sorted(s for s, got in shares.items() if len(got) < t)
        if short:
            raise RoundFailed(f"round {r}: fewer than {t} shares revealed for sites {short}")

        acc = rnd.acc
        ks = crypto.Keystream(acc.size)
        for s in U:  # strip the self masks of the survivors
            seed = crypto.shamir_combine(shares[s].items(), t)
            commitment = crypto.self_mask_commitment(seed, self.run_id, r, s)
            if commitment != rnd.survivors[s]["commitment"]:
                raise ReconstructionFailed(f"round {r}: self-mask seed of site {s!r} does not "
                                           "match its commitment (a revealed share was wrong)")
            ks.sub_into(acc, crypto.self_mask_key(seed, self.run_id, r, s))
        for d in dropped:  # strip the survivors' pairwise masks with dropped sites
            sk = crypto.shamir_combine(shares[d].items(), t)
            if crypto.x25519_public(sk) != rnd.view[d]["mask_public_key"]:
                raise ReconstructionFailed(f"round {r}: mask key of dropped site {d!r} does not "
                                           "match its advertised key (a revealed share was wrong)")
            for s in U:
                k = crypto.pairwise_mask_key(sk, rnd.view[s]["mask_public_key"], self.run_id, r,
                                             d, rnd.view[d]["epoch"], s, rnd.view[s]["epoch"])
                # survivor s added +mask if d > s, else -mask: undo it
                (ks.sub_into if d > s else ks.add_into)(acc, k)
        try:
            mean, weight, clipped = rnd.quantizer.dequantize(acc)
        except QuantizationError as e:  # e.g. every survivor sent weight 0
            raise RoundFailed(f"round {r}: {e}") from e
        return AggregateResult(r, mean, weight, U, dropped, clipped,
                               rnd.quantizer.mean_tolerance(weight), rnd.quantizer.counts(acc),
                               dict(rnd.rejected))

    # ------------------------------------------------------------- helpers
    def _round(self, round_: int) -> _Round:
        rnd = self._rounds.get(int(round_))
        if rnd is None:
            raise ProtocolError(f"round {round_} is not in progress")
        return rnd

    def _abandon(self, round_: int) -> None:
        """Free a round's state. Spent keys stay spent; keys for the next round
        that survivors sent stay usable."""
        rnd = self._rounds.pop(int(round_), None)
        self._self_shares.pop(int(round_), None)
        if rnd is not None:
            for s, adv in rnd.view.items():
                self._key_shares.pop((s, adv["epoch"]), None)

    def fail_round(self, round_: int) -> None:
        """Abandon a round in progress (e.g. the federation gave up on it)."""
        self._abandon(round_)
