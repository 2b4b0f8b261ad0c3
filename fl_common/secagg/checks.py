"""What both sides of secure aggregation compute and check the same way: the
roster of enrolled keys, signed key adverts, the signed
participant view of a round and the digest of a masked vector.

A site and the server must agree on these bytes exactly, so they are written
once, here.
"""
from __future__ import annotations

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


def view_signed_bytes(run_id: str, round_: int, digest: bytes) -> bytes:
    return pack("round-view", run_id, round_, digest)


def view_digest(run_id: str, round_: int, threshold: int,
                participants: Sequence[tuple[str, int, bytes]]) -> bytes:
    """Digest of a round's participant view: (site, key epoch, mask key),
    sorted by site."""
    parts: list[str | bytes | int] = ["view", run_id, round_, threshold, len(participants)]
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
                         round_: int, digest: bytes, what: str) -> None:
    """``site`` signed the round's view with this digest (BadSignature naming ``what``)."""
    pki.verify(roster[site], signature, view_signed_bytes(run_id, round_, digest), what)


def vector_digest(vec: np.ndarray) -> bytes:
    """SHA-256 of a masked vector as little-endian uint32."""
    # hash the little-endian buffer in place (no 20 MB copy on x86)
    return sha256(memoryview(np.ascontiguousarray(vec, dtype="<u4")).cast("B"))
