"""All of fedvox's cryptography, in one reviewable module (DESIGN.md): the
secure-aggregation primitives, the federation PKI that provisioning writes,
and the signatures of exported bundles' manifests. Nothing else in the
project imports `cryptography`.

Only well-kept libraries do the cryptographic work:
- `cryptography`: X25519 key agreement, HKDF-SHA256, AES-256-GCM, the ChaCha20
  keystream used as the mask PRG, ECDSA (enrollment keys, OpenSSH format),
  X.509 (the federation CA and the SuperLink's TLS certificate);
- pycryptodome: Shamir secret sharing over GF(2^128).

Keys are handled as raw 32-byte strings so that state files and wire payloads
hold plain bytes. No torch import here (the ClientApp shim must stay light).
"""
from __future__ import annotations

import datetime as _dt
import hashlib
import ipaddress
import os
import struct
import sys
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
from Crypto.Protocol.SecretSharing import Shamir
from cryptography import x509
from cryptography.exceptions import InvalidSignature, InvalidTag
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from .errors import BadSignature, SecAggError, TamperedShare

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


# ---------------------------------------------------------- enrollment keys (EC)
_SIG_HASH = hashes.SHA384()


def generate_enrollment_key(curve: ec.EllipticCurve | None = None) -> ec.EllipticCurvePrivateKey:
    """A new site enrollment key (P-384 unless told otherwise), as provisioning makes."""
    return ec.generate_private_key(curve or ec.SECP384R1())


def enrollment_private_openssh(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH,
                             serialization.NoEncryption())


def enrollment_public_openssh(key: ec.EllipticCurvePublicKey | ec.EllipticCurvePrivateKey) -> bytes:
    pub = key.public_key() if isinstance(key, ec.EllipticCurvePrivateKey) else key
    return pub.public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)


def _read_source(src: str | bytes | os.PathLike) -> tuple[bytes, str]:
    if isinstance(src, (bytes, bytearray)):
        return bytes(src), "<bytes>"
    text = str(src)
    if text.lstrip().startswith(("-----BEGIN", "ecdsa-sha2-")):
        return text.encode(), "<text>"
    p = Path(text).expanduser()
    try:
        return p.read_bytes(), str(p)
    except OSError as e:
        raise SecAggError(f"cannot read key file {p}: {e.strerror or e}") from e


def _parse_private_key(data: bytes, password: bytes | None = None):
    """OpenSSH or PEM (PKCS#8/SEC1) private key bytes -> key (ValueError/TypeError if not)."""
    if b"OPENSSH PRIVATE KEY" in data:
        return serialization.load_ssh_private_key(data, password=password)
    return serialization.load_pem_private_key(data, password=password)


def load_enrollment_private_key(src: str | bytes | os.PathLike,
                                password: bytes | None = None) -> ec.EllipticCurvePrivateKey:
    """An OpenSSH-format EC private key from a path, PEM text or bytes (PKCS#8
    PEM is accepted too)."""
    data, where = _read_source(src)
    try:
        key = _parse_private_key(data, password)
    except (ValueError, TypeError) as e:
        raise SecAggError(f"{where}: not a readable enrollment private key ({e})") from e
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise SecAggError(f"{where}: enrollment key must be an EC key, got {type(key).__name__}")
    return key


def load_enrollment_public_key(src: str | bytes | os.PathLike
                               | ec.EllipticCurvePublicKey) -> ec.EllipticCurvePublicKey:
    """An OpenSSH public key line ('ecdsa-sha2-nistp384 AAAA... comment') from
    a path, text or bytes; an already loaded key passes through."""
    if isinstance(src, ec.EllipticCurvePublicKey):
        return src
    data, where = _read_source(src)
    try:
        key = serialization.load_ssh_public_key(data.strip())
    except (ValueError, TypeError, serialization.UnsupportedAlgorithm) as e:
        raise SecAggError(f"{where}: not a readable OpenSSH public key ({e})") from e
    if not isinstance(key, ec.EllipticCurvePublicKey):
        raise SecAggError(f"{where}: enrollment key must be an EC key, got {type(key).__name__}")
    return key


def sign(key: ec.EllipticCurvePrivateKey, data: bytes) -> bytes:
    """ECDSA-SHA384 (DER) over `data` (always a pack() tuple)."""
    return key.sign(data, ec.ECDSA(_SIG_HASH))


def verify(pub: ec.EllipticCurvePublicKey, signature: bytes, data: bytes, what: str) -> None:
    """Raises BadSignature naming `what` (the site and the signed object)."""
    try:
        pub.verify(signature, data, ec.ECDSA(_SIG_HASH))
    except InvalidSignature:
        raise BadSignature(f"{what}: signature does not verify against the "
                           "site's enrolled public key") from None


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


# ================================================================ federation PKI
# One curve everywhere: NIST P-384 (ECDSA with SHA-384), which both TLS (the
# SuperLink's HTTPS port) and Flower's SuperNode authentication accept.
# - CA: self-signed, CA:true with pathlen 0 (it signs leaf certificates only).
# - Server certificate: CA:false, serverAuth only, SANs for every host name and
#   IP the SuperLink is reached by.
# - Site auth keys: EC P-384 in OpenSSH format, the form `flower-supernode
#   --auth-supernode-private-key` and `flwr supernode register` read.
CURVE = ec.SECP384R1
HASH = hashes.SHA384
CA_DAYS = 3650
SERVER_DAYS = 825  # the longest leaf lifetime common TLS clients still accept
# A few minutes of back-dating so a site whose clock is slightly behind
# does not reject a certificate issued a moment ago.
_CLOCK_SKEW = _dt.timedelta(minutes=5)


def new_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(CURVE())


def split_hosts(hosts: Iterable[str]) -> tuple[list[str], list[ipaddress._BaseAddress]]:
    """Host names -> (DNS names, IP addresses), deduplicated, order kept."""
    dns: list[str] = []
    ips: list[ipaddress._BaseAddress] = []
    for h in hosts:
        h = str(h).strip().strip("[]")
        if not h:
            continue
        try:
            ip = ipaddress.ip_address(h)
        except ValueError:
            if h.lower() not in (d.lower() for d in dns):
                dns.append(h)
        else:
            if ip not in ips:
                ips.append(ip)
    return dns, ips


def _name(common_name: str, org: str | None) -> x509.Name:
    attrs = [x509.NameAttribute(NameOID.COMMON_NAME, common_name)]
    if org:
        attrs.append(x509.NameAttribute(NameOID.ORGANIZATION_NAME, org))
    return x509.Name(attrs)


def make_ca(key: ec.EllipticCurvePrivateKey, common_name: str, org: str | None = None,
            days: int = CA_DAYS) -> x509.Certificate:
    """A self-signed CA certificate for ``key``."""
    now = _dt.datetime.now(_dt.timezone.utc)
    name = _name(common_name, org)
    pub = key.public_key()
    return (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(pub)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - _CLOCK_SKEW)
        .not_valid_after(now + _dt.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                     content_commitment=False, key_encipherment=False,
                                     data_encipherment=False, key_agreement=False,
                                     encipher_only=False, decipher_only=False), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(pub), critical=False)
        # AKI on the root too: OpenSSL's X509_STRICT (default in newer Pythons) wants it.
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(pub), critical=False)
        .sign(key, HASH())
    )


def issue_server_cert(ca_cert: x509.Certificate, ca_key: ec.EllipticCurvePrivateKey,
                      key: ec.EllipticCurvePrivateKey, hosts: Iterable[str],
                      common_name: str | None = None, org: str | None = None,
                      days: int = SERVER_DAYS) -> x509.Certificate:
    """A TLS server certificate for ``key`` with DNS and IP SANs for ``hosts``."""
    dns, ips = split_hosts(hosts)
    if not dns and not ips:
        raise ValueError("a server certificate needs at least one host name or IP")
    sans: list[x509.GeneralName] = [x509.DNSName(d) for d in dns]
    sans += [x509.IPAddress(ip) for ip in ips]
    now = _dt.datetime.now(_dt.timezone.utc)
    not_after = min(now + _dt.timedelta(days=days), ca_cert.not_valid_after_utc)
    ski = ca_cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    return (
        x509.CertificateBuilder()
        .subject_name(_name(common_name or (dns[0] if dns else str(ips[0])), org))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - _CLOCK_SKEW)
        .not_valid_after(not_after)
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=False, crl_sign=False,
                                     content_commitment=False, key_encipherment=False,
                                     data_encipherment=False, key_agreement=False,
                                     encipher_only=False, decipher_only=False), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski),
                       critical=False)
        .sign(ca_key, HASH())
    )


# ---- encodings ---------------------------------------------------------------

def cert_pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    """PKCS#8 PEM, unencrypted: the SuperLink reads it unattended (file is 0600)."""
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def openssh_private(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH,
                             serialization.NoEncryption())


def openssh_public(key: ec.EllipticCurvePrivateKey | ec.EllipticCurvePublicKey,
                   comment: str | None = None) -> str:
    """``ecdsa-sha2-nistp384 AAAA... [comment]`` (one line, no newline)."""
    pub = key.public_key() if isinstance(key, ec.EllipticCurvePrivateKey) else key
    line = pub.public_bytes(serialization.Encoding.OpenSSH,
                            serialization.PublicFormat.OpenSSH).decode()
    return f"{line} {comment}" if comment else line


def load_cert(data: bytes) -> x509.Certificate:
    return x509.load_pem_x509_certificate(data)


def load_key(data: bytes) -> ec.EllipticCurvePrivateKey:
    key = serialization.load_pem_private_key(data, password=None)
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise ValueError("not an EC private key")
    return key


def fingerprint(cert: x509.Certificate) -> str:
    """SHA-256 fingerprint of a certificate, colon separated (what people compare by eye)."""
    return cert.fingerprint(hashes.SHA256()).hex(":").upper()


# ================================================== bundle manifest signatures
class ManifestSignatures:
    """ECDSA P-384 / SHA-384 signatures of a bundle's manifest.json, handed to
    imaging_core.bundle (which must not import cryptography itself). Keys: the
    federation CA key signs; a CA certificate, PEM or OpenSSH public key, or a
    private key (its public half) verifies."""

    algorithm = "ecdsa-p384-sha384"

    @staticmethod
    def _check_curve(key, label) -> None:
        if not isinstance(getattr(key, "curve", None), CURVE):
            raise ValueError(f"{label}: expected an EC P-384 key, got {type(key).__name__}"
                             + (f" on {key.curve.name}" if hasattr(key, "curve") else ""))

    def load_private(self, path: str | os.PathLike) -> ec.EllipticCurvePrivateKey:
        """An EC P-384 private key from a PEM (PKCS#8/SEC1) or OpenSSH file."""
        try:
            key = _parse_private_key(Path(path).read_bytes())
        except (ValueError, TypeError) as e:
            raise ValueError(f"{path}: not a readable unencrypted private key ({e})") from None
        self._check_curve(key, path)
        return key

    def load_public(self, src) -> ec.EllipticCurvePublicKey:
        """A public key from a key object, or a path or bytes holding a PEM public
        key, an X.509 certificate, an OpenSSH public key line or a private key."""
        if isinstance(src, ec.EllipticCurvePublicKey):
            return src
        if isinstance(src, ec.EllipticCurvePrivateKey):
            return src.public_key()
        data = src if isinstance(src, bytes) else Path(src).read_bytes()
        label = "public key" if isinstance(src, bytes) else str(src)
        text = data.strip()
        try:
            if b"BEGIN CERTIFICATE" in text:
                key = x509.load_pem_x509_certificate(text).public_key()
            elif b"PRIVATE KEY" in text:
                key = (serialization.load_ssh_private_key(text, None) if b"OPENSSH" in text
                       else serialization.load_pem_private_key(text, None)).public_key()
            elif text.startswith(b"ecdsa-sha2-") or text.startswith(b"ssh-"):
                key = serialization.load_ssh_public_key(text.split(b"\n")[0])
            else:
                key = serialization.load_pem_public_key(text)
        except (ValueError, TypeError) as e:
            raise ValueError(f"{label}: not a readable public key or certificate ({e})") from None
        self._check_curve(key, label)
        return key

    @staticmethod
    def public_pem(key) -> bytes:
        pub = key.public_key() if isinstance(key, ec.EllipticCurvePrivateKey) else key
        return pub.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)

    @staticmethod
    def fingerprint(key) -> str:
        """SHA-256 of the DER SubjectPublicKeyInfo: the key, whatever its encoding."""
        pub = key.public_key() if isinstance(key, ec.EllipticCurvePrivateKey) else key
        der = pub.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
        return hashlib.sha256(der).hexdigest()

    @staticmethod
    def sign(key: ec.EllipticCurvePrivateKey, data: bytes) -> bytes:
        return sign(key, data)

    @staticmethod
    def verify(pub: ec.EllipticCurvePublicKey, signature: bytes, data: bytes) -> bool:
        try:
            pub.verify(signature, data, ec.ECDSA(_SIG_HASH))
        except InvalidSignature:
            return False
        return True


MANIFEST_SIGNATURES = ManifestSignatures()
