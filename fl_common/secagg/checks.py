"""What both sides of secure aggregation compute and check the same way: the
roster of enrolled keys, signed key adverts, the signed
participant view of a round and the digest of a masked vector.

A site and the server must agree on these bytes exactly, so they are written
once, here.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import numpy as np

from fl_common.crypto import pki
from fl_common.crypto.secagg import pack, sha256

from .errors import ProtocolError

DEFAULT_CLIP_RANGE = 4.0
DEFAULT_MAX_WEIGHT = 1000.0
KEY_BYTES = 32  # raw X25519 public keys


def load_roster(roster: Mapping[str, Any], pinned: str | None = None,
                where: str = "roster") -> dict[str, Any]:
    """{site: enrollment public key (OpenSSH line, path or key)} -> loaded keys.
    ``pinned``: the roster fingerprint the site pinned itself; a roster that
    does not match it is refused (the coordinator cannot swap a key in)."""
    if not roster:
        raise ProtocolError("the roster of enrolled sites is empty")
    if pinned is not None and (actual := pki.roster_fingerprint(roster)) != pinned:
        raise ProtocolError(f"{where}: roster fingerprint {actual} does not match the pinned "
                            f"{pinned}: refusing this roster")
    return {str(site): pki.load_enrollment_public_key(key) for site, key in roster.items()}


def advert_signed_bytes(run_id: str, site: str, epoch: int, channel_pk: bytes,
                        mask_pk: bytes) -> bytes:
    return pack("key-advert", run_id, site, epoch, channel_pk, mask_pk)


def view_signed_bytes(run_id: str, round_: int, digest: bytes, received: bytes) -> bytes:
    """What a site signs at T: the participant view AND the digest of the model
    and round config it received (Received.digest), so at E every survivor can
    check that all of them trained from the same model and config (Pasquini et
    al., CCS 2022: a server handing some sites lr 0 or another model isolates
    one site's update in the sum)."""
    return pack("round-view", run_id, round_, digest, received)


@dataclass(frozen=True)
class Received:
    """What a site received for a round, as it computed it itself."""
    run_id: str      # the run its round config names
    round: int
    model: bytes     # SHA-256 of the model weights
    digest: bytes    # SHA-256 of the model hash and the whole round config


def model_hash(arrays: Mapping[str, np.ndarray]) -> bytes:
    """SHA-256 over (name, dtype, shape, little-endian bytes) of every tensor, by name."""
    h = hashlib.sha256(b"fedvox-model-v1")
    for name in sorted(arrays):
        a = np.ascontiguousarray(arrays[name])
        a = a.astype(a.dtype.newbyteorder("<"), copy=False)
        h.update(pack(name, a.dtype.str, *[int(d) for d in a.shape], a.ndim))
        h.update(memoryview(a.reshape(-1)).cast("B"))
    return h.digest()


def _canonical(v: Any) -> Any:
    if isinstance(v, bytes):
        return {"bytes": v.hex()}
    if isinstance(v, (list, tuple)):
        return [_canonical(x) for x in v]
    if isinstance(v, float):
        return {"float": v.hex()}  # exact, and distinct from an int of the same value
    return v


def received(arrays: Mapping[str, np.ndarray], config: Mapping[str, Any], run_id: str,
             round_: int) -> Received:
    """The Received of a round: computed by the site from the message it got
    and by the server from the message it sent (the same bytes if honest)."""
    m = model_hash(arrays)
    cfg = json.dumps({str(k): _canonical(v) for k, v in config.items()}, sort_keys=True)
    return Received(str(run_id), int(round_), m, sha256(pack("round-input", m, cfg)))


def view_digest(run_id: str, round_: int, threshold: int,
                participants: Sequence[tuple[str, int, bytes]], *, clip_range: float,
                max_weight: float) -> bytes:
    """Digest of a round's participant view: (site, key epoch, mask key),
    sorted by site, and the quantisation the site was given at setup: a server
    that gives the other sites a huge clip range rounds their updates to 0 and
    reads one site's update in the sum, so survivors must have signed the same."""
    parts: list[str | bytes | int] = ["view", run_id, round_, threshold, float(clip_range).hex(),
                                      float(max_weight).hex(), len(participants)]
    for site, epoch, pk in sorted(participants):
        parts += [site, epoch, pk]
    return sha256(pack(*parts))


def check_advert(run_id: str, adv: Mapping[str, Any], roster: Mapping[str, Any],
                 where: str) -> None:
    """A key advert is from an enrolled site, well formed and signed by it."""
    site = adv["site_id"]
    if site not in roster:
        raise ProtocolError(f"{where}: site {site!r} is not in the federation roster")
    if len(adv["channel_public_key"]) != KEY_BYTES or len(adv["mask_public_key"]) != KEY_BYTES:
        raise ProtocolError(f"{where}: site {site!r} advertised keys of the wrong length")
    pki.verify(roster[site], adv["signature"],
               advert_signed_bytes(run_id, site, adv["epoch"],
                                   adv["channel_public_key"], adv["mask_public_key"]),
               f"key advert of site {site!r} (epoch {adv['epoch']})")


def check_view_signature(roster: Mapping[str, Any], site: str, signature: bytes, run_id: str,
                         round_: int, digest: bytes, received_digest: bytes, what: str) -> None:
    """``site`` signed the round's view with this digest and this received
    model/config digest (BadSignature naming ``what``)."""
    pki.verify(roster[site], signature,
               view_signed_bytes(run_id, round_, digest, received_digest), what)


def vector_digest(vec: np.ndarray) -> bytes:
    """SHA-256 of a masked vector as little-endian uint32."""
    # hash the little-endian buffer in place (no 20 MB copy on x86)
    return sha256(memoryview(np.ascontiguousarray(vec, dtype="<u4")).cast("B"))
