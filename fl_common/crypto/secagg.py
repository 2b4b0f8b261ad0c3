"""Secure-aggregation primitives: canonical tuple encoding, X25519 key
agreement, HKDF-SHA256, AES-256-GCM for shares, the ChaCha20 mask keystream
and Shamir secret sharing (pycryptodome, GF(2^128)).

Keys are raw 32-byte strings so state files and wire payloads hold plain
bytes. No torch import here (the ClientApp shim must stay light).
"""
from __future__ import annotations

import hashlib
import os
import struct
import sys
from typing import Iterable

import numpy as np
from Crypto.Protocol.SecretSharing import Shamir
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from fl_common.secagg.errors import SecAggError, TamperedShare

SECRET_BYTES = 32
NONCE_BYTES = 12
_DOMAIN = b"fedvox-secagg-v1"


# --------------------------------------------------------------- canonical bytes
def pack(*fields: str | bytes | int) -> bytes:
    """Unambiguous encoding of a tuple, used for everything that is signed,
    authenticated or fed to HKDF: type tag + length prefix per field, so no two
    different tuples encode to the same bytes (protobuf serialisation is not
    guaranteed canonical, so it is never signed directly)."""
    out = [_DOMAIN]
    for f in fields:
        if isinstance(f, bool):
            raise TypeError("pack() takes str, bytes or int, not bool")
        if isinstance(f, int):
            if f < 0:
                raise ValueError("pack() takes non-negative ints")
            out.append(b"i" + struct.pack(">Q", f))
        elif isinstance(f, str):
            b = f.encode("utf-8")
            out.append(b"s" + struct.pack(">I", len(b)) + b)
        elif isinstance(f, (bytes, bytearray, memoryview)):
            b = bytes(f)
            out.append(b"b" + struct.pack(">I", len(b)) + b)
        else:
            raise TypeError(f"pack() cannot encode {type(f).__name__}")
    return b"".join(out)


def sha256(*chunks: bytes) -> bytes:
    h = hashlib.sha256()
    for c in chunks:
        h.update(c)
    return h.digest()


def random_secret() -> bytes:
    return os.urandom(SECRET_BYTES)


# ------------------------------------------------------------------------ X25519
def x25519_keypair() -> tuple[bytes, bytes]:
    """(private, public) raw 32-byte X25519 keys."""
    sk = X25519PrivateKey.generate()
    return (sk.private_bytes_raw(), sk.public_key().public_bytes_raw())


def x25519_public(private: bytes) -> bytes:
    return X25519PrivateKey.from_private_bytes(private).public_key().public_bytes_raw()


def _x25519(private: bytes, peer_public: bytes, peer: str) -> bytes:
    try:
        return X25519PrivateKey.from_private_bytes(private).exchange(
            X25519PublicKey.from_public_bytes(peer_public))
    except ValueError as e:  # malformed key or an all-zero (low-order) result
        raise SecAggError(f"key agreement with {peer!r} failed: {e}") from e


def hkdf(ikm: bytes, info: bytes, length: int = 32) -> bytes:
    # No salt: every input key is fresh and the info binds run/round/parties.
    return HKDF(algorithm=hashes.SHA256(), length=length, salt=None, info=info).derive(ikm)


def channel_key(my_channel_sk: bytes, peer_channel_pk: bytes, run_id: str,
                me: str, peer: str) -> bytes:
    """AES-256-GCM key shared by two sites for the whole run. Both ends get the
    same key because the site pair is put in sorted order."""
    lo, hi = sorted((me, peer))
    return hkdf(_x25519(my_channel_sk, peer_channel_pk, peer),
                pack("channel", run_id, lo, hi))


def pairwise_mask_key(my_mask_sk: bytes, peer_mask_pk: bytes, run_id: str, round_: int,
                      me: str, my_epoch: int, peer: str, peer_epoch: int) -> bytes:
    """ChaCha20 key of the pairwise mask s_ij^r. The round and both key epochs
    are bound in, so a mask never repeats even if a key pair did."""
    (lo, lo_e), (hi, hi_e) = sorted(((me, my_epoch), (peer, peer_epoch)))
    return hkdf(_x25519(my_mask_sk, peer_mask_pk, peer),
                pack("pair-mask", run_id, round_, lo, lo_e, hi, hi_e))


def self_mask_key(seed: bytes, run_id: str, round_: int, site: str) -> bytes:
    return hkdf(seed, pack("self-mask", run_id, round_, site))


def self_mask_commitment(seed: bytes, run_id: str, round_: int, site: str) -> bytes:
    """Public commitment to b_i^r so the server can check a reconstruction
    (a 256-bit random seed is not recoverable from its hash)."""
    return sha256(pack("self-mask-commitment", run_id, round_, site, seed))


# ------------------------------------------------------------------------ AES-GCM
def share_ad(run_id: str, kind: int, tag: int, sender: str, receiver: str) -> bytes:
    """Associated data of an encrypted share: binds run, share kind, round (or
    key epoch), sender and receiver, so the server cannot relabel or reroute."""
    return pack("share", run_id, kind, tag, sender, receiver)


def encrypt(key: bytes, plaintext: bytes, ad: bytes) -> tuple[bytes, bytes]:
    """AES-256-GCM with a random 96-bit nonce -> (nonce, ciphertext||tag)."""
    nonce = os.urandom(NONCE_BYTES)
    return nonce, AESGCM(key).encrypt(nonce, plaintext, ad)


def decrypt(key: bytes, nonce: bytes, ciphertext: bytes, ad: bytes, what: str) -> bytes:
    """Inverse of encrypt(); `what` names the share/peer for the error."""
    if len(nonce) != NONCE_BYTES:
        raise TamperedShare(f"{what}: nonce has {len(nonce)} bytes, expected {NONCE_BYTES}")
    try:
        return AESGCM(key).decrypt(nonce, ciphertext, ad)
    except InvalidTag:
        raise TamperedShare(f"{what}: AES-GCM authentication failed (modified, "
                            "relabelled or not encrypted for this site)") from None


# ---------------------------------------------------------------------- the PRG
class Keystream:
    """ChaCha20 keystream as a uint32 vector of length n, the mask PRG.

    The stream is made and applied in cache-sized chunks from one encryptor
    (the cipher's counter runs on, so the values are those of one long call):
    a full-length keystream buffer would be 80 MB at 20M values, and a fresh
    process pays about 0.25 s of page faults to touch it before the cipher
    (5 GB/s here) does any work. A fixed nonce is safe because every key is
    used once (HKDF output bound to run, round and parties)."""

    _NONCE = bytes(16)  # cryptography's ChaCha20 takes counter||nonce (16 bytes)
    CHUNK = 1 << 16      # values per chunk (256 kB: stays in L2)

    def __init__(self, n: int):
        self.n = int(n)
        m = min(self.n, self.CHUNK)
        self._zero = np.zeros(m, dtype=np.uint32)
        self._out = np.empty(m, dtype=np.uint32)

    def _chunks(self, key: bytes):
        """(start, stop, keystream values for [start, stop)) over the whole length;
        each yielded array is the shared chunk buffer: use it before the next."""
        enc = Cipher(algorithms.ChaCha20(key, self._NONCE), mode=None).encryptor()
        for i in range(0, self.n, self.CHUNK):
            j = min(i + self.CHUNK, self.n)
            out = self._out[:j - i]
            enc.update_into(memoryview(self._zero[:j - i]).cast("B"), memoryview(out).cast("B"))
            if sys.byteorder != "little":  # the wire format is little-endian uint32
                out.byteswap(inplace=True)
            yield i, j, out

    def __call__(self, key: bytes) -> np.ndarray:
        """The whole keystream as a new uint32[n]."""
        full = np.empty(self.n, dtype=np.uint32)
        for i, j, out in self._chunks(key):
            full[i:j] = out
        return full

    def add_into(self, acc: np.ndarray, key: bytes) -> None:
        for i, j, out in self._chunks(key):
            np.add(acc[i:j], out, out=acc[i:j])  # uint32 wraps mod 2^32

    def sub_into(self, acc: np.ndarray, key: bytes) -> None:
        for i, j, out in self._chunks(key):
            np.subtract(acc[i:j], out, out=acc[i:j])


def prg_uint32(key: bytes, n: int) -> np.ndarray:
    """The keystream as a new uint32[n] (convenience for tests)."""
    return Keystream(n)(key)


# ------------------------------------------------------------------------ Shamir
def shamir_split(secret: bytes, threshold: int, n: int) -> list[tuple[int, bytes]]:
    """t-of-n shares of a 32-byte secret, indices 1..n. pycryptodome shares
    16-byte blocks, so each half is shared with its own random polynomial and
    a share is the two 16-byte points at the same index."""
    if len(secret) != SECRET_BYTES:
        raise ValueError(f"Shamir secret must be {SECRET_BYTES} bytes, got {len(secret)}")
    if not 1 <= threshold <= n:
        raise ValueError(f"threshold {threshold} must be within 1..{n}")
    if threshold == 1:
        # pycryptodome needs k >= 2; with t = 1 every share IS the secret
        return [(i, bytes(secret)) for i in range(1, n + 1)]
    lo = Shamir.split(threshold, n, secret[:16], ssss=False)
    hi = Shamir.split(threshold, n, secret[16:], ssss=False)
    return [(i, a + b) for (i, a), (j, b) in zip(lo, hi) if i == j]


def shamir_combine(shares: Iterable[tuple[int, bytes]], threshold: int) -> bytes:
    """Secret from at least `threshold` shares (the first `threshold` distinct
    indices are used; more do not help and cost time)."""
    seen: dict[int, bytes] = {}
    for idx, val in shares:
        if len(val) != SECRET_BYTES:
            raise ValueError(f"share {idx} has {len(val)} bytes, expected {SECRET_BYTES}")
        seen.setdefault(int(idx), bytes(val))
    if len(seen) < threshold:
        raise ValueError(f"{len(seen)} distinct shares, threshold is {threshold}")
    pts = sorted(seen.items())[:threshold]
    if threshold == 1:
        return pts[0][1]
    lo = Shamir.combine([(i, v[:16]) for i, v in pts], ssss=False)
    hi = Shamir.combine([(i, v[16:]) for i, v in pts], ssss=False)
    return lo + hi
