"""Double-masked secure aggregation (Bonawitz et al. 2017) in the stage layout
of shared/notes/secure-aggregation.md: two setup stages per run (S1 advertise,
S2 share) and, per round, nothing beyond the two stages a round already has
(T: train + mask; E: evaluate + reveal).

Message flow (payloads are bytes of protos/secagg.proto; the masked vector is a
uint32 numpy array next to its manifest):

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
- The threshold must exceed half the federation (the provisioning roster), so
  two disjoint groups of t sites cannot exist: the server cannot get b_j from
  one group and s_j from another.
- Each site signs the round's participant view (sites, key epochs, keys) at T;
  at E it reveals only when every claimed survivor signed the SAME view. This
  stands in for Bonawitz's consistency-check stage without a third stage:
  together with t > n/2 it stops a server from showing sites different
  participant sets to isolate one site's update.
"""
from __future__ import annotations

import json
import logging
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from . import crypto, wire
from .errors import (ProtocolError, QuantizationError, ReconstructionFailed, RevealRefused,
                     RoundFailed, SecAggError, StateError, TamperedShare)
from .quantize import NUM_EXTRA, Quantizer

log = logging.getLogger(__name__)

STATE_FILE = "secagg_state.json"
STATE_FORMAT = 1
KEEP_ROUNDS = 16        # rounds of reveal records kept on disk (older: refused)
DEFAULT_CLIP_RANGE = 4.0
DEFAULT_MAX_WEIGHT = 1000.0
_KEY_BYTES = 32
_SHARE_PLAIN = 2 + crypto.SECRET_BYTES   # uint16 index + share
REVEAL_SELF, REVEAL_KEY = "b", "s"       # what a site revealed for a peer


def min_threshold(num_enrolled: int) -> int:
    """Smallest allowed threshold: more than half the enrolled sites, and 2."""
    return max(2, num_enrolled // 2 + 1)


def _load_roster(roster: Mapping[str, Any]) -> dict[str, Any]:
    if not roster:
        raise ProtocolError("the roster of enrolled sites is empty")
    return {str(site): crypto.load_enrollment_public_key(key) for site, key in roster.items()}


def _check_advert(run_id: str, adv: Mapping[str, Any], roster: Mapping[str, Any],
                  where: str) -> None:
    site = adv["site_id"]
    if site not in roster:
        raise ProtocolError(f"{where}: site {site!r} is not in the federation roster")
    if len(adv["channel_public_key"]) != _KEY_BYTES or len(adv["mask_public_key"]) != _KEY_BYTES:
        raise ProtocolError(f"{where}: site {site!r} advertised keys of the wrong length")
    crypto.verify(roster[site], adv["signature"],
                  crypto.advert_signed_bytes(run_id, site, adv["epoch"],
                                             adv["channel_public_key"], adv["mask_public_key"]),
                  f"key advert of site {site!r} (epoch {adv['epoch']})")


def _vector_digest(vec: np.ndarray) -> bytes:
    # hash the little-endian buffer in place (no 20 MB copy on x86)
    return crypto.sha256(memoryview(np.ascontiguousarray(vec, dtype="<u4")).cast("B"))


def _encrypt_shares(run_id: str, me: str, channel_sk: bytes, holders: Sequence[str],
                    channel_pks: Mapping[str, bytes], secret: bytes, threshold: int,
                    kind: int, tag: int) -> list[dict]:
    out = []
    for (idx, share), holder in zip(crypto.shamir_split(secret, threshold, len(holders)),
                                    holders):
        key = crypto.channel_key(channel_sk, channel_pks[holder], run_id, me, holder)
        nonce, ct = crypto.encrypt(key, idx.to_bytes(2, "big") + share,
                                   crypto.share_ad(run_id, kind, tag, me, holder))
        out.append({"sender": me, "receiver": holder, "kind": kind, "tag": tag,
                    "nonce": nonce, "ciphertext": ct})
    return out


# =================================================================== site side
@dataclass
class MaskedUpdate:
    """What a site sends at T: `vector` (uint32[n + 2], put it in an Array) and
    `payload` (the MaskedManifest bytes). `clipped`/`weight_clipped` stay at
    the site for its own report; the server only learns the sum of clips."""
    round: int
    vector: np.ndarray
    payload: bytes
    clipped: int
    weight: float
    weight_clipped: bool

    def vector_bytes(self) -> bytes:
        return self.vector.astype("<u4", copy=False).tobytes()


@dataclass
class PreparedMask:
    """A site's summed masks for one round, made before its update exists
    (SiteSecAgg.prepare_mask). Holds the self-mask seed: keep it in memory only."""
    owner: tuple[str, str]  # (site, run) that made it
    round: int
    request: bytes
    epoch: int
    view: dict
    seed: bytes = field(repr=False)
    masks: np.ndarray | None = field(repr=False)


class SiteSecAgg:
    """One site's side of the protocol, with its state persisted in
    `state_dir` (0700 directory, 0600 file, replaced atomically), so a
    restarted ClientApp process carries on where the last one stopped.

    enrollment_key: the site's EC private key (object, OpenSSH/PEM text, bytes
    or a path); roster: {site_id: enrollment public key (OpenSSH line, path or
    key)} for every enrolled site, from provisioning."""

    def __init__(self, site_id: str, run_id: str, enrollment_key: Any,
                 roster: Mapping[str, Any], state_dir: str | os.PathLike):
        self.site_id = str(site_id)
        self.run_id = str(run_id)
        if not isinstance(enrollment_key, crypto.ec.EllipticCurvePrivateKey):
            enrollment_key = crypto.load_enrollment_private_key(enrollment_key)
        self._key = enrollment_key
        self.roster = _load_roster(roster)
        if self.site_id not in self.roster:
            raise ProtocolError(f"site {self.site_id!r} is not in its own roster")
        if (crypto.enrollment_public_openssh(self._key)
                != crypto.enrollment_public_openssh(self.roster[self.site_id])):
            raise ProtocolError(f"site {self.site_id!r}: the enrollment key does not match "
                                "the roster's public key for this site")
        self.state_dir = Path(state_dir)
        self.state_path = self.state_dir / STATE_FILE
        self.state = self._load_state()

    # ----------------------------------------------------------- persistence
    def _fresh_state(self) -> dict:
        sk, _ = crypto.x25519_keypair()
        return {"format": STATE_FORMAT, "run_id": self.run_id, "site_id": self.site_id,
                "channel_sk": sk.hex(), "epoch": 0, "mask_sk": None, "setup": None,
                "last_round": 0, "rounds": {}}

    def _load_state(self) -> dict:
        if not self.state_path.exists():
            return self._fresh_state()
        try:
            state = json.loads(self.state_path.read_text())
        except (OSError, ValueError) as e:
            raise StateError(f"{self.state_path}: unreadable secure-aggregation state ({e})") from e
        if state.get("format") != STATE_FORMAT:
            raise StateError(f"{self.state_path}: state format {state.get('format')!r}, "
                             f"expected {STATE_FORMAT}")
        if state.get("run_id") != self.run_id or state.get("site_id") != self.site_id:
            raise StateError(f"{self.state_path}: state belongs to site "
                             f"{state.get('site_id')!r} run {state.get('run_id')!r}, not "
                             f"site {self.site_id!r} run {self.run_id!r}")
        return state

    def _save(self) -> None:
        """Write the state atomically: temp file (0600) in the same directory,
        fsync, os.replace, fsync the directory; a crash leaves old or new."""
        self.state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        os.chmod(self.state_dir, 0o700)
        fd, tmp = tempfile.mkstemp(prefix=".secagg-", suffix=".tmp", dir=self.state_dir)
        try:
            os.fchmod(fd, 0o600)  # mkstemp already uses 0600; be explicit
            with os.fdopen(fd, "w") as f:
                json.dump(self.state, f, separators=(",", ":"))
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self.state_path)
        except BaseException:
            try:
                os.unlink(tmp)
            except FileNotFoundError:
                pass
            raise
        dfd = os.open(self.state_dir, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)

    # --------------------------------------------------------------- helpers
    @property
    def _channel_sk(self) -> bytes:
        return bytes.fromhex(self.state["channel_sk"])

    def _advert(self, epoch: int, mask_pk: bytes) -> dict:
        channel_pk = crypto.x25519_public(self._channel_sk)
        sig = crypto.sign(self._key, crypto.advert_signed_bytes(
            self.run_id, self.site_id, epoch, channel_pk, mask_pk))
        return {"site_id": self.site_id, "epoch": epoch, "channel_public_key": channel_pk,
                "mask_public_key": mask_pk, "signature": sig}

    def _setup(self) -> dict:
        if not self.state["setup"]:
            raise ProtocolError(f"site {self.site_id!r}: no roster yet (run setup S1/S2 first)")
        return self.state["setup"]

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
        self._save()
        return wire.encode(wire.ADVERTISEMENT, {
            "run_id": self.run_id, "advert": self._advert(self.state["epoch"], pk)})

    # ----------------------------------------------------------------- S2
    def receive_roster_and_share(self, roster_payload: bytes) -> bytes:
        """S2: verify every advertised key against the enrollment roster, then
        Shamir-share this site's mask key with every listed site."""
        msg = wire.decode(wire.ROSTER, roster_payload, "server")
        self._check_run(msg, "roster")
        t = int(msg["threshold"])
        need = min_threshold(len(self.roster))
        if t < need:
            raise ProtocolError(f"roster threshold {t} is below {need} (more than half of "
                                f"the {len(self.roster)} enrolled sites): refusing to share")
        adverts = msg["adverts"]
        seen: dict[str, dict] = {}
        for adv in adverts:
            if adv["site_id"] in seen:
                raise ProtocolError(f"roster lists site {adv['site_id']!r} twice")
            _check_advert(self.run_id, adv, self.roster, "roster")
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
        channel_pks = {s: seen[s]["channel_public_key"] for s in holders}
        self.state["setup"] = {
            "threshold": t, "clip_range": quant["clip_range"], "max_weight": quant["max_weight"],
            "holders": holders, "channel_pks": {s: pk.hex() for s, pk in channel_pks.items()}}
        shares = _encrypt_shares(self.run_id, self.site_id, self._channel_sk, holders,
                                 channel_pks, bytes.fromhex(self.state["mask_sk"]), t,
                                 wire.MASK_KEY, self.state["epoch"])
        self._save()
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
             train_request: bytes, prepared: "PreparedMask | None" = None) -> MaskedUpdate:
        """T: quantise the weighted, clipped update, add the self mask and the
        pairwise masks of the round's view, and prepare the next round's key.
        A site masks at most once per round (its mask key is then spent).
        ``prepared``: from prepare_mask() with the same request (used when it
        still fits this site's state and the update's size; recomputed if not)."""
        setup = self._setup()
        round_ = int(round_)
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
            delta, weight, add_to=masks)
        y = q.vector

        channel_pks = {s: bytes.fromhex(h) for s, h in setup["channel_pks"].items()}
        b_shares = _encrypt_shares(self.run_id, self.site_id, self._channel_sk, holders,
                                   channel_pks, seed, t, wire.SELF_MASK, round_)
        next_sk, next_pk = crypto.x25519_keypair()
        next_epoch = my_epoch + 1
        s_shares = _encrypt_shares(self.run_id, self.site_id, self._channel_sk, holders,
                                   channel_pks, next_sk, t, wire.MASK_KEY, next_epoch)
        digest = crypto.view_digest(self.run_id, round_, t,
                                    [(s, e, pk) for s, (e, pk) in view.items()])
        manifest = {
            "run_id": self.run_id, "round": round_, "site_id": self.site_id,
            "num_values": y.size - NUM_EXTRA, "num_extra": NUM_EXTRA,
            "vector_sha256": _vector_digest(y),
            "self_mask_commitment": crypto.self_mask_commitment(seed, self.run_id, round_,
                                                                self.site_id),
            "view_signature": crypto.sign(self._key, crypto.view_signed_bytes(
                self.run_id, round_, digest)),
            "self_mask_shares": b_shares,
            "next_key": self._advert(next_epoch, next_pk),
            "next_key_shares": s_shares,
        }
        # persist before anything leaves: the spent key is gone, the next one
        # and the round's view are on disk (the self-mask seed never is)
        self.state.update(epoch=next_epoch, mask_sk=next_sk.hex(), last_round=round_)
        rounds = self.state["rounds"]
        # threshold and share index too: a later re-key must not change how
        # this round is revealed
        rounds[str(round_)] = {"view": [[s, e, pk.hex()] for s, (e, pk) in sorted(view.items())],
                               "digest": digest.hex(), "threshold": t,
                               "index": holders.index(self.site_id) + 1, "revealed": {}}
        for old in sorted(rounds, key=int)[:-KEEP_ROUNDS]:
            del rounds[old]
        self._save()
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
            _check_advert(self.run_id, adv, self.roster, f"round {round_} view")
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
        signed = crypto.view_signed_bytes(self.run_id, round_, bytes.fromhex(rec["digest"]))
        for site in sorted(U):
            if site not in sigs:
                raise RevealRefused(f"round {round_}: no view signature from survivor {site!r}")
            crypto.verify(self.roster[site], sigs[site], signed,
                          f"round {round_} view signature of survivor {site!r} (it was shown "
                          "another set of participants)")

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
            if len(plain) != _SHARE_PLAIN or int.from_bytes(plain[:2], "big") != my_index:
                raise TamperedShare(f"share from site {owner!r}: wrong index or length")
            done.add(owner)
            out.append({"owner": owner, "kind": sh["kind"], "tag": sh["tag"],
                        "index": my_index, "value": plain[2:]})
        # record every decision (not only relayed shares) before replying
        for site, kind in decide.items():
            revealed[site] = kind
        self._save()
        return wire.encode(wire.REVEAL_REPLY, {"run_id": self.run_id, "round": round_,
                                               "site_id": self.site_id, "shares": out})


# ================================================================= server side
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
    rejected: dict[str, str] = field(default_factory=dict)  # site -> why its reply was dropped


@dataclass
class _Round:
    number: int
    view: dict[str, dict]                 # site -> its advert used this round
    digest: bytes
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
    the smallest the sites accept: more than half the enrolled sites."""

    def __init__(self, run_id: str, roster: Mapping[str, Any], threshold: int | None = None,
                 clip_range: float = DEFAULT_CLIP_RANGE, max_weight: float = DEFAULT_MAX_WEIGHT):
        self.run_id = str(run_id)
        self.roster = _load_roster(roster)
        need = min_threshold(len(self.roster))
        self.threshold = need if threshold is None else int(threshold)
        if self.threshold < need:
            raise ProtocolError(f"threshold {self.threshold} is below {need}: sites refuse a "
                                f"threshold that is not more than half of {len(self.roster)}")
        if self.threshold > len(self.roster):
            raise ProtocolError(f"threshold {self.threshold} exceeds the {len(self.roster)} "
                                "enrolled sites")
        Quantizer(clip_range, max_weight, len(self.roster))  # validates for a full round
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
                _check_advert(self.run_id, adv, self.roster, "advertisement")
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
    def train_requests(self, round_: int, participants: Sequence[str] | None = None
                       ) -> dict[str, bytes]:
        """{site: TrainRequest payload} for round `round_` (the same bytes for
        every participant). Their keys are spent by this call."""
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
        digest = crypto.view_digest(
            self.run_id, round_, self.threshold,
            [(s, a["epoch"], a["mask_public_key"]) for s, a in view.items()])
        self._rounds[round_] = _Round(round_, view, digest,
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
        if _vector_digest(vec) != msg["vector_sha256"]:
            raise ProtocolError(f"site {site!r}: masked vector does not match its manifest hash")
        crypto.verify(self.roster[site], msg["view_signature"],
                      crypto.view_signed_bytes(self.run_id, rnd.number, rnd.digest),
                      f"round {rnd.number} view signature of site {site!r}")
        b_shares = self._check_shares(site, msg["self_mask_shares"], wire.SELF_MASK, rnd.number)
        nxt = msg["next_key"]
        if nxt is None or nxt["site_id"] != site:
            raise ProtocolError(f"site {site!r} sent no next-round key")
        _check_advert(self.run_id, nxt, self.roster, "next-round key")
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
                               rnd.quantizer.mean_tolerance(weight), dict(rnd.rejected))

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
