"""The federation's identities: site enrollment keys (EC P-384, OpenSSH form:
the SuperNode auth key and the key that signs secure-aggregation adverts and
views), ECDSA signatures over pack() tuples, and the PKI that provisioning
writes (the federation CA and the SuperLink's TLS certificate).
"""
from __future__ import annotations

import base64
import datetime as _dt
import ipaddress
import os
from pathlib import Path
from typing import Iterable

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from fl_common.secagg.errors import BadSignature, SecAggError

from .secagg import pack, sha256

# ---------------------------------------------------------- enrollment keys (EC)
SIG_HASH = hashes.SHA384()


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


def parse_private_key(data: bytes, password: bytes | None = None):
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
        key = parse_private_key(data, password)
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
    except (ValueError, TypeError, UnsupportedAlgorithm) as e:
        raise SecAggError(f"{where}: not a readable OpenSSH public key ({e})") from e
    if not isinstance(key, ec.EllipticCurvePublicKey):
        raise SecAggError(f"{where}: enrollment key must be an EC key, got {type(key).__name__}")
    return key


def sign(key: ec.EllipticCurvePrivateKey, data: bytes) -> bytes:
    """ECDSA-SHA384 (DER) over `data` (always a pack() tuple)."""
    return key.sign(data, ec.ECDSA(SIG_HASH))


def verify(pub: ec.EllipticCurvePublicKey, signature: bytes, data: bytes, what: str) -> None:
    """Raises BadSignature naming `what` (the site and the signed object)."""
    try:
        pub.verify(signature, data, ec.ECDSA(SIG_HASH))
    except InvalidSignature:
        raise BadSignature(f"{what}: signature does not verify against the "
                           "site's enrolled public key") from None


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


# ---- fingerprints people compare by eye --------------------------------------
# SHA-256 over a pack() tuple, cut to 160 bits (second preimages stay out of
# reach) and written as base32 groups: short enough to read out on the phone.
_FP_BITS = 160


def _public_point(key_line: str | ec.EllipticCurvePublicKey) -> bytes:
    """An enrollment public key as its curve point (the comment is not part of a key)."""
    pub = load_enrollment_public_key(key_line)
    return pub.public_bytes(serialization.Encoding.X962,
                            serialization.PublicFormat.UncompressedPoint)


def human_fingerprint(*fields: str | bytes | int) -> str:
    """``XXXX-XXXX-...`` (8 groups of base32) of SHA-256 over pack(fields)."""
    code = base64.b32encode(sha256(pack(*fields))[:_FP_BITS // 8]).decode()
    return "-".join(code[i:i + 4] for i in range(0, len(code), 4))


def roster_fingerprint(roster) -> str:
    """The fingerprint of a roster {site: OpenSSH public key}: sites sorted, keys
    as curve points, so any added, removed, renamed or swapped key changes it."""
    parts: list[str | bytes | int] = ["fedvox-roster-v1", len(roster)]
    for site in sorted(roster):
        parts += [str(site), _public_point(roster[site])]
    return human_fingerprint(*parts)


def request_fingerprint(site: str, public_key: str, created: str) -> str:
    """The fingerprint of an enrollment request's content (site, key, time)."""
    return human_fingerprint("fedvox-enroll-v1", str(site), _public_point(public_key), str(created))


def is_private_key(data: bytes) -> bool:
    """Whether ``data`` holds private key material in any form cryptography reads
    (PEM PKCS#8/SEC1, OpenSSH, DER)."""
    if b"PRIVATE KEY" in data:
        return True
    try:
        serialization.load_der_private_key(data, password=None)
    except (ValueError, TypeError, UnsupportedAlgorithm):
        return False
    return True


def public_pem(key: ec.EllipticCurvePrivateKey | ec.EllipticCurvePublicKey) -> bytes:
    """SubjectPublicKeyInfo PEM (the bundle-signing public key kits carry)."""
    pub = key.public_key() if isinstance(key, ec.EllipticCurvePrivateKey) else key
    return pub.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
