"""The site's side of secure aggregation (SiteSecAgg): its keys, its shares,
its masked update and what it agrees to reveal. The protocol and why it is
safe: fl_common.secagg's docstring.
"""
from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from fl_common.crypto import pki
from fl_common.crypto import secagg as crypto
from fl_common.secagg import wire
from fl_common.secagg.checks import (Received, advert_signed_bytes, check_advert,
                                     check_view_signature, load_roster, vector_digest, view_digest,
                                     view_signed_bytes)
from fl_common.secagg.errors import ProtocolError, RevealRefused, RoundFailed, TamperedShare
from fl_common.secagg.quantize import NUM_EXTRA, Quantizer
from fl_common.secagg.threshold import DEFAULT_COLLUDING_SITES, min_threshold, two_site_warning

from .ledger import SiteLedger
from .shares import SHARE_PLAIN, MaskedUpdate, PreparedMask, encrypt_shares
from .state import KEEP_ROUNDS, SiteState

log = logging.getLogger("fedvox.site.secagg")

REVEAL_SELF, REVEAL_KEY = "b", "s"       # what a site revealed for a peer


class SiteSecAgg:
    """One site's side of the protocol, with its state persisted in
    `state_dir` (0700 directory, 0600 file, replaced atomically), so a
    restarted ClientApp process carries on where the last one stopped.

    enrollment_key: the site's EC private key (object, OpenSSH/PEM text, bytes
    or a path); roster: {site_id: enrollment public key (OpenSSH line, path or
    key)} for every enrolled site, from provisioning; roster_fingerprint: the
    fingerprint the site pinned (a roster that does not match is refused).
    colluding_sites: the number of sites this site assumes may collude with the
    server (its own policy, not the server's word): it refuses a threshold below
    min_threshold(roster size, colluding_sites). ledger_dir: where the
    site-wide ledger of masked updates lives (default: the parent of
    state_dir, which holds every session's state directory)."""

    def __init__(self, site_id: str, run_id: str, enrollment_key: Any,
                 roster: Mapping[str, Any], state_dir: str | os.PathLike,
                 colluding_sites: int = DEFAULT_COLLUDING_SITES,
                 ledger_dir: str | os.PathLike | None = None,
                 roster_fingerprint: str | None = None):
        self.site_id = str(site_id)
        self.run_id = str(run_id)
        if not isinstance(enrollment_key, pki.ec.EllipticCurvePrivateKey):
            enrollment_key = pki.load_enrollment_private_key(enrollment_key)
        self._key = enrollment_key
        self.roster = load_roster(roster, roster_fingerprint, f"site {self.site_id!r} roster")
        if self.site_id not in self.roster:
            raise ProtocolError(f"site {self.site_id!r} is not in its own roster")
        if (pki.enrollment_public_openssh(self._key)
                != pki.enrollment_public_openssh(self.roster[self.site_id])):
            raise ProtocolError(f"site {self.site_id!r}: the enrollment key does not match "
                                "the roster's public key for this site")
        self.colluding_sites = int(colluding_sites)
        self.min_threshold = min_threshold(len(self.roster), self.colluding_sites)
        self._store = SiteState(state_dir, self.run_id, self.site_id)
        self.state = self._store.data
        self.ledger = SiteLedger(Path(state_dir).parent if ledger_dir is None else ledger_dir,
                                 self.site_id)

    # --------------------------------------------------------------- helpers
    @property
    def _channel_sk(self) -> bytes:
        return bytes.fromhex(self.state["channel_sk"])

    def _advert(self, epoch: int, mask_pk: bytes) -> dict:
        channel_pk = crypto.x25519_public(self._channel_sk)
        sig = pki.sign(self._key, advert_signed_bytes(
            self.run_id, self.site_id, epoch, channel_pk, mask_pk))
        return {"site_id": self.site_id, "epoch": epoch, "channel_public_key": channel_pk,
                "mask_public_key": mask_pk, "signature": sig}

    def _setup(self) -> dict:
        if not self.state["setup"]:
            raise ProtocolError(f"site {self.site_id!r}: no roster yet (run setup S1/S2 first)")
        return self.state["setup"]

    def setup_bounds(self) -> tuple[float, float]:
        """(clip_range, max_weight) of this session's setup: what an encoding must fit."""
        setup = self._setup()
        return float(setup["clip_range"]), float(setup["max_weight"])

    def _check_run(self, msg: Mapping[str, Any], what: str) -> None:
        if msg["run_id"] != self.run_id:
            raise ProtocolError(f"{what} is for run {msg['run_id']!r}, this site is in "
                                f"run {self.run_id!r}")

    def _request(self, kind, payload: bytes, round_: int, what: str) -> dict:
        """A server request for this run and this round, decoded."""
        msg = wire.decode(kind, payload, "server")
        self._check_run(msg, what)
        if msg["round"] != round_:
            raise ProtocolError(f"{what} is for round {msg['round']}, not {round_}")
        return msg

    # ----------------------------------------------------------------- S1
    def advertise(self) -> bytes:
        """S1: a fresh mask key (next epoch) and the channel key, signed.
        Called once per run and again whenever the server re-keys."""
        sk, pk = crypto.x25519_keypair()
        self.state["epoch"] += 1
        self.state["mask_sk"] = sk.hex()
        self._store.save()
        return wire.encode(wire.ADVERTISEMENT, {
            "run_id": self.run_id, "advert": self._advert(self.state["epoch"], pk)})

    # ----------------------------------------------------------------- S2
    def receive_roster_and_share(self, roster_payload: bytes) -> bytes:
        """S2: verify every advertised key against the enrollment roster, then
        Shamir-share this site's mask key with every listed site."""
        msg = wire.decode(wire.ROSTER, roster_payload, "server")
        self._check_run(msg, "roster")
        t = int(msg["threshold"])
        need = self.min_threshold
        if t < need:
            raise ProtocolError(
                f"roster threshold {t} is below {need}, this site's minimum for "
                f"{len(self.roster)} enrolled sites with {self.colluding_sites} colluding "
                f"(2t > n + n_C): refusing to share")
        adverts = msg["adverts"]
        seen: dict[str, dict] = {}
        for adv in adverts:
            if adv["site_id"] in seen:
                raise ProtocolError(f"roster lists site {adv['site_id']!r} twice")
            check_advert(self.run_id, adv, self.roster, "roster")
            seen[adv["site_id"]] = adv
        if len(seen) < t:
            raise ProtocolError(f"roster has {len(seen)} sites, fewer than threshold {t}")
        mine = seen.get(self.site_id)
        if self.state["mask_sk"] is None:
            raise ProtocolError(f"site {self.site_id!r} has no unused mask key: advertise first")
        my_pk = crypto.x25519_public(bytes.fromhex(self.state["mask_sk"]))
        if (mine is None or mine["epoch"] != self.state["epoch"]
                or mine["mask_public_key"] != my_pk
                or mine["channel_public_key"] != crypto.x25519_public(self._channel_sk)):
            raise ProtocolError(f"roster does not carry site {self.site_id!r}'s current keys "
                                f"(epoch {self.state['epoch']})")
        quant = msg["quant"] or {}
        Quantizer(quant.get("clip_range", 0.0), quant.get("max_weight", 0.0), 1)  # validates
        holders = sorted(seen)
        warn = two_site_warning(len(self.roster))
        if warn:
            log.warning("site %s: %s", self.site_id, warn)
        channel_pks = {s: seen[s]["channel_public_key"] for s in holders}
        self.state["setup"] = {
            "threshold": t, "clip_range": quant["clip_range"], "max_weight": quant["max_weight"],
            "holders": holders, "channel_pks": {s: pk.hex() for s, pk in channel_pks.items()}}
        shares = encrypt_shares(self.run_id, self.site_id, self._channel_sk, holders,
                                 channel_pks, bytes.fromhex(self.state["mask_sk"]), t,
                                 wire.MASK_KEY, self.state["epoch"])
        self._store.save()
        return wire.encode(wire.SHARE_BUNDLE, {"run_id": self.run_id, "sender": self.site_id,
                                               "shares": shares})

    # ------------------------------------------------------------------ T
    def prepare_mask(self, round_: int, train_request: bytes, num_values: int) -> "PreparedMask":
        """The part of T that does not depend on the update: check the request and
        the round's view, draw the self-mask seed and sum the self mask and the
        pairwise masks over ``num_values`` + NUM_EXTRA coordinates. Nothing is
        persisted, so a site can run this while it trains and hand the result to
        mask(); a prepared mask that no longer fits is simply dropped."""
        setup = self._setup()
        round_ = int(round_)
        msg = self._request(wire.TRAIN_REQUEST, train_request, round_, "train request")
        if round_ <= self.state["last_round"]:
            raise ProtocolError(f"site {self.site_id!r} already masked round "
                                f"{self.state['last_round']}; a round is masked once")
        t = setup["threshold"]
        view = self._verify_view(msg["participants"], setup, round_)
        if len(view) < t:
            raise RoundFailed(f"round {round_} has {len(view)} participants, fewer than "
                              f"the threshold {t}")
        my_epoch = self.state["epoch"]
        my_sk = bytes.fromhex(self.state["mask_sk"])
        total = np.zeros(int(num_values) + NUM_EXTRA, dtype=np.uint32)
        ks = crypto.Keystream(total.size)
        seed = crypto.random_secret()
        ks.add_into(total, crypto.self_mask_key(seed, self.run_id, round_, self.site_id))
        for site, (epoch, pk) in view.items():
            if site == self.site_id:
                continue
            k = crypto.pairwise_mask_key(my_sk, pk, self.run_id, round_, self.site_id,
                                         my_epoch, site, epoch)
            # +mask towards larger ids, -mask towards smaller: cancels in the sum
            (ks.add_into if site > self.site_id else ks.sub_into)(total, k)
        return PreparedMask((self.site_id, self.run_id), round_, bytes(train_request), my_epoch, view,
                            seed, total)

    def mask(self, round_: int, delta: np.ndarray, weight: float,
             train_request: bytes, prepared: "PreparedMask | None" = None, *,
             received: Received, counts: Mapping[str, int] | None = None) -> MaskedUpdate:
        """T: quantise the weighted, clipped update (and ``counts``, see
        quantize.COUNTS), add the self mask and the pairwise masks of the
        round's view, and prepare the next round's key. ``received``: what this
        site computed from the model and round config it got
        (checks.received); it signs it with the view, and the site-wide ledger
        refuses a second masked update for its (run, round) or its model.
        A site masks at most once per round (its mask key is then spent).
        ``prepared``: from prepare_mask() with the same request (used when it
        still fits this site's state and the update's size; recomputed if not)."""
        setup = self._setup()
        round_ = int(round_)
        if not isinstance(received, Received) or received.round != round_:
            raise ProtocolError(f"site {self.site_id!r}: round {round_} masked without what it "
                                "received for that round (checks.received)")
        n = int(np.asarray(delta).size)
        if not (prepared is not None and prepared.masks is not None
                and prepared.owner == (self.site_id, self.run_id) and prepared.round == round_
                and prepared.request == bytes(train_request) and prepared.epoch == self.state["epoch"]
                and prepared.masks.size == n + NUM_EXTRA and round_ > self.state["last_round"]):
            prepared = self.prepare_mask(round_, train_request, n)
        t, holders = setup["threshold"], setup["holders"]
        view, seed, my_epoch = prepared.view, prepared.seed, prepared.epoch

        # the encoding is added onto the summed masks (uint32 wraps mod 2^32);
        # they are spent even if encoding fails half-way
        masks, prepared.masks = prepared.masks, None
        q = Quantizer(setup["clip_range"], setup["max_weight"], len(view)).quantize(
            delta, weight, add_to=masks, counts=counts)
        y = q.vector

        channel_pks = {s: bytes.fromhex(h) for s, h in setup["channel_pks"].items()}
        b_shares = encrypt_shares(self.run_id, self.site_id, self._channel_sk, holders,
                                   channel_pks, seed, t, wire.SELF_MASK, round_)
        next_sk, next_pk = crypto.x25519_keypair()
        next_epoch = my_epoch + 1
        s_shares = encrypt_shares(self.run_id, self.site_id, self._channel_sk, holders,
                                   channel_pks, next_sk, t, wire.MASK_KEY, next_epoch)
        digest = view_digest(self.run_id, round_, t, [(s, e, pk) for s, (e, pk) in view.items()],
                             clip_range=setup["clip_range"], max_weight=setup["max_weight"])
        manifest = {
            "run_id": self.run_id, "round": round_, "site_id": self.site_id,
            "num_values": y.size - NUM_EXTRA, "num_extra": NUM_EXTRA,
            "vector_sha256": vector_digest(y),
            "self_mask_commitment": crypto.self_mask_commitment(seed, self.run_id, round_,
                                                                self.site_id),
            "view_signature": pki.sign(self._key, view_signed_bytes(
                self.run_id, round_, digest, received.digest)),
            "self_mask_shares": b_shares,
            "next_key": self._advert(next_epoch, next_pk),
            "next_key_shares": s_shares,
        }
        # the ledger first: if this site ever masked this (run, round) or
        # model, nothing leaves (the prepared masks are spent either way)
        self.ledger.claim(received, self.run_id)
        # persist before anything leaves: the spent key is gone, the next one
        # and the round's view are on disk (the self-mask seed never is)
        self.state.update(epoch=next_epoch, mask_sk=next_sk.hex(), last_round=round_)
        rounds = self.state["rounds"]
        # threshold and share index too: a later re-key must not change how
        # this round is revealed
        rounds[str(round_)] = {"view": [[s, e, pk.hex()] for s, (e, pk) in sorted(view.items())],
                               "digest": digest.hex(), "received": received.digest.hex(),
                               "threshold": t,
                               "index": holders.index(self.site_id) + 1, "revealed": {}}
        for old in sorted(rounds, key=int)[:-KEEP_ROUNDS]:
            del rounds[old]
        self._store.save()
        return MaskedUpdate(round_, y, wire.encode(wire.MASKED_MANIFEST, manifest),
                            q.clipped, q.weight, q.weight_clipped)

    def _verify_view(self, participants: Sequence[Mapping[str, Any]], setup: Mapping[str, Any],
                     round_: int) -> dict[str, tuple[int, bytes]]:
        holders = set(setup["holders"])
        view: dict[str, tuple[int, bytes]] = {}
        for adv in participants:
            site = adv["site_id"]
            if site in view:
                raise ProtocolError(f"round {round_} view lists site {site!r} twice")
            if site not in holders:
                raise ProtocolError(f"round {round_} view lists site {site!r}, which holds "
                                    "no shares (not in the roster of this setup)")
            check_advert(self.run_id, adv, self.roster, f"round {round_} view")
            if adv["channel_public_key"].hex() != setup["channel_pks"][site]:
                raise ProtocolError(f"round {round_} view: site {site!r}'s channel key differs "
                                    "from the one in the roster")
            view[site] = (int(adv["epoch"]), adv["mask_public_key"])
        mine = view.get(self.site_id)
        if mine is None:
            raise ProtocolError(f"round {round_} view does not include site {self.site_id!r}")
        sk = self.state["mask_sk"]
        if (sk is None or mine[0] != self.state["epoch"]
                or mine[1] != crypto.x25519_public(bytes.fromhex(sk))):
            raise ProtocolError(f"round {round_} view lists site {self.site_id!r} with key "
                                f"epoch {mine[0]}, but its unused key is epoch "
                                f"{self.state['epoch']} (spent or replaced: re-key needed)")
        return view

    # ------------------------------------------------------------------ E
    def reveal(self, round_: int, reveal_request: bytes) -> bytes:
        """E: reveal the self-mask shares of survivors and the mask-key shares
        of dropped sites, after checking the survivors all signed this site's
        view; never both kinds for one peer in one round."""
        setup = self._setup()
        round_ = int(round_)
        msg = self._request(wire.REVEAL_REQUEST, reveal_request, round_, "reveal request")
        rec = self.state["rounds"].get(str(round_))
        if rec is None:
            raise RevealRefused(f"site {self.site_id!r} has no masked update for round "
                                f"{round_} (never masked it, or older than {KEEP_ROUNDS} rounds)")
        t = rec["threshold"]
        view = {s: (e, bytes.fromhex(pk)) for s, e, pk in rec["view"]}
        survivors = list(msg["survivors"])
        U = set(survivors)
        if len(U) != len(survivors):
            raise ProtocolError(f"round {round_}: survivor list has duplicates")
        if not U <= set(view):
            raise RevealRefused(f"round {round_}: survivors {sorted(U - set(view))} were not in "
                                "this site's view of the round")
        if self.site_id not in U:
            raise RevealRefused(f"round {round_}: site {self.site_id!r} is alive but the server "
                                "lists it as dropped")
        if len(U) < t:
            raise RevealRefused(f"round {round_}: {len(U)} survivors, fewer than the threshold "
                                f"{t}: revealing would expose a small sum")
        sigs: dict[str, bytes] = {}
        for vs in msg["view_signatures"]:
            sigs.setdefault(vs["site_id"], vs["signature"])
        digest, got = bytes.fromhex(rec["digest"]), bytes.fromhex(rec["received"])
        for site in sorted(U):
            if site not in sigs:
                raise RevealRefused(f"round {round_}: no view signature from survivor {site!r}")
            # a survivor that trained from another model or round config (or
            # saw other participants) signed other bytes: reveal nothing
            check_view_signature(self.roster, site, sigs[site], self.run_id, round_, digest, got,
                                 f"round {round_} view signature of survivor {site!r} (it "
                                 "was shown another set of participants, or another model or "
                                 "round config than this site)")

        decide = {s: (REVEAL_SELF if s in U else REVEAL_KEY) for s in view}
        revealed = rec["revealed"]
        for site, kind in decide.items():
            if revealed.get(site, kind) != kind:
                raise RevealRefused(
                    f"round {round_}: already revealed the "
                    f"{'self-mask' if revealed[site] == REVEAL_SELF else 'mask-key'} share of "
                    f"site {site!r}; revealing the other one too would expose its update")

        my_index = rec["index"]
        out, done = [], set()
        for sh in msg["shares"]:
            owner = sh["sender"]
            if sh["receiver"] != self.site_id:
                raise ProtocolError(f"round {round_}: relayed share from {owner!r} is addressed "
                                    f"to {sh['receiver']!r}, not {self.site_id!r}")
            if owner not in view:
                raise RevealRefused(f"round {round_}: share of {owner!r}, which is not in this "
                                    "round's view")
            if owner in done:
                raise ProtocolError(f"round {round_}: two shares relayed from {owner!r}")
            want = decide[owner]
            if want == REVEAL_SELF:
                if sh["kind"] != wire.SELF_MASK or sh["tag"] != round_:
                    raise RevealRefused(
                        f"round {round_}: server asks for a mask-key share of site {owner!r}, "
                        "which it lists as a survivor: refusing")
            else:
                if sh["kind"] != wire.MASK_KEY or sh["tag"] != view[owner][0]:
                    raise RevealRefused(
                        f"round {round_}: server asks for a self-mask share of site {owner!r}, "
                        "which it lists as dropped: refusing")
            key = crypto.channel_key(self._channel_sk, bytes.fromhex(setup["channel_pks"][owner]),
                                     self.run_id, self.site_id, owner)
            plain = crypto.decrypt(
                key, sh["nonce"], sh["ciphertext"],
                crypto.share_ad(self.run_id, sh["kind"], sh["tag"], owner, self.site_id),
                f"share from site {owner!r} to site {self.site_id!r} "
                f"({'self-mask' if want == REVEAL_SELF else 'mask-key'}, round {round_})")
            if len(plain) != SHARE_PLAIN or int.from_bytes(plain[:2], "big") != my_index:
                raise TamperedShare(f"share from site {owner!r}: wrong index or length")
            done.add(owner)
            out.append({"owner": owner, "kind": sh["kind"], "tag": sh["tag"],
                        "index": my_index, "value": plain[2:]})
        # record every decision (not only relayed shares) before replying
        for site, kind in decide.items():
            revealed[site] = kind
        self._store.save()
        return wire.encode(wire.REVEAL_REPLY, {"run_id": self.run_id, "round": round_,
                                               "site_id": self.site_id, "shares": out})


