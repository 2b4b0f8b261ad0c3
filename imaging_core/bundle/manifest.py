"""The bundle manifest: SHA-256 of every file, signed with ECDSA P-384.

    manifest.json       {"format", "hash", "files": {relpath: sha256}, "signature": {...} | null}
    manifest.json.sig   DER ECDSA-SHA384 signature of manifest.json's exact bytes
    signer.pub.pem      the signer's public key (a convenience, NOT a trust anchor)

Verification checks every listed hash, names files that were added or removed,
and checks the signature. Integrity alone is checked against the embedded
``signer.pub.pem``; authenticity needs the federation's public key (its CA
certificate, a PEM public key or an OpenSSH public key) passed explicitly, since
anyone who can edit the bundle can also replace the embedded key.

No torch import here, so this can be reviewed (and used) on its own.
"""
from __future__ import annotations

import base64
import hashlib
import json
import os
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

MANIFEST = "manifest.json"
SIGNATURE = "manifest.json.sig"
SIGNER_PUB = "signer.pub.pem"
# files the manifest cannot list (they are written after it, or hold its signature)
_NOT_LISTED = {MANIFEST, SIGNATURE, SIGNER_PUB}
FORMAT = "fedvox-bundle-manifest/1"
# where `python -m monai.bundle run` reads inputs and writes outputs by default
# (configs/inference.json): user data, not part of the bundle, never loaded as code
RUNTIME_DIRS = ("input/", "eval/")
CURVE = ec.SECP384R1


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while b := f.read(chunk):
            h.update(b)
    return h.hexdigest()


def bundle_files(root: Path, skip_runtime: bool = True) -> list[str]:
    """Every file under ``root`` except the manifest's own files (and, with
    ``skip_runtime``, the runtime input/ and eval/ folders), as posix relpaths."""
    out = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        for name in sorted(filenames):
            rel = (Path(dirpath) / name).relative_to(root).as_posix()
            if rel in _NOT_LISTED or (skip_runtime and rel.startswith(RUNTIME_DIRS)):
                continue
            out.append(rel)
    return out


# ---- keys ----------------------------------------------------------------------

def load_private_key(path: str | os.PathLike) -> ec.EllipticCurvePrivateKey:
    """An EC P-384 private key from a PEM (PKCS#8/SEC1) or OpenSSH file."""
    data = Path(path).read_bytes()
    try:
        if b"OPENSSH PRIVATE KEY" in data:
            key = serialization.load_ssh_private_key(data, password=None)
        else:
            key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError) as e:
        raise ValueError(f"{path}: not a readable unencrypted private key ({e})") from None
    _check_curve(key, path)
    return key


def load_public_key(src) -> ec.EllipticCurvePublicKey:
    """A public key from: a key object, a path or bytes holding a PEM public key,
    an X.509 certificate (the federation CA's ``ca.crt``), an OpenSSH public key
    line, or a private key (its public half)."""
    if isinstance(src, ec.EllipticCurvePublicKey):
        return src
    if isinstance(src, ec.EllipticCurvePrivateKey):
        return src.public_key()
    label = src
    data = src if isinstance(src, bytes) else Path(src).read_bytes()
    label = "public key" if isinstance(src, bytes) else str(label)
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
    _check_curve(key, label)
    return key


def _check_curve(key, label) -> None:
    if not isinstance(getattr(key, "curve", None), CURVE):
        raise ValueError(f"{label}: expected an EC P-384 key, got {type(key).__name__}"
                         + (f" on {key.curve.name}" if hasattr(key, "curve") else ""))


def public_pem(key) -> bytes:
    pub = key.public_key() if isinstance(key, ec.EllipticCurvePrivateKey) else key
    return pub.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)


def key_fingerprint(key) -> str:
    """SHA-256 of the DER SubjectPublicKeyInfo: identifies the key independently of its encoding."""
    pub = key.public_key() if isinstance(key, ec.EllipticCurvePrivateKey) else key
    der = pub.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return hashlib.sha256(der).hexdigest()


# ---- write / verify -----------------------------------------------------------

def write_manifest(root: str | os.PathLike, key: ec.EllipticCurvePrivateKey | None = None) -> dict:
    """Hash every file under ``root`` into manifest.json; sign it when ``key`` is given."""
    root = Path(root)
    for stale in (SIGNATURE, SIGNER_PUB):
        (root / stale).unlink(missing_ok=True)
    files = {rel: sha256_file(root / rel) for rel in bundle_files(root)}
    sig_info = None
    if key is not None:
        sig_info = {"algorithm": "ecdsa-p384-sha384", "public_key_sha256": key_fingerprint(key),
                    "signature_file": SIGNATURE, "public_key_file": SIGNER_PUB}
    manifest = {"format": FORMAT, "hash": "sha256", "files": files, "signature": sig_info}
    data = (json.dumps(manifest, indent=1, sort_keys=True) + "\n").encode()
    (root / MANIFEST).write_bytes(data)
    if key is not None:
        sig = key.sign(data, ec.ECDSA(hashes.SHA384()))
        (root / SIGNATURE).write_bytes(base64.b64encode(sig) + b"\n")
        (root / SIGNER_PUB).write_bytes(public_pem(key))
    return manifest


def verify_manifest(root: str | os.PathLike, public_key=None, strict: bool = False) -> list[str]:
    """Problems found (empty list = intact and, where a key was given, authentic).

    ``strict`` also reports files under the runtime input/ and eval/ folders.
    """
    root = Path(root)
    if not root.is_dir():
        return [f"{root}: not a directory"]
    mpath = root / MANIFEST
    if not mpath.is_file():
        return [f"{MANIFEST}: missing (the bundle was never sealed)"]
    data = mpath.read_bytes()
    try:
        manifest = json.loads(data)
        listed = dict(manifest["files"])
    except (ValueError, KeyError, TypeError) as e:
        return [f"{MANIFEST}: unreadable ({e})"]
    problems = []
    present = set(bundle_files(root, skip_runtime=not strict))
    for rel, digest in sorted(listed.items()):
        p = root / rel
        if not p.is_file():
            problems.append(f"{rel}: missing")
        elif sha256_file(p) != digest:
            problems.append(f"{rel}: changed (SHA-256 differs from the manifest)")
    for rel in sorted(present - set(listed)):
        problems.append(f"{rel}: added (not in the manifest)")
    problems += _check_signature(root, data, manifest.get("signature"), public_key)
    return problems


def _check_signature(root: Path, data: bytes, info, public_key) -> list[str]:
    if not info:
        return ["manifest is not signed"] if public_key is not None else []
    spath = root / info.get("signature_file", SIGNATURE)
    if not spath.is_file():
        return [f"{spath.name}: missing (manifest says it is signed)"]
    try:
        sig = base64.b64decode(spath.read_bytes().strip(), validate=True)
    except ValueError:
        return [f"{spath.name}: not base64"]
    if public_key is None:
        ppath = root / info.get("public_key_file", SIGNER_PUB)
        if not ppath.is_file():
            return [f"{ppath.name}: missing; pass the federation's public key to verify the signature"]
        try:
            key = load_public_key(ppath)
        except ValueError as e:
            return [str(e)]
    else:
        key = load_public_key(public_key)
    try:
        key.verify(sig, data, ec.ECDSA(hashes.SHA384()))
    except InvalidSignature:
        who = "the given key" if public_key is not None else f"the embedded {SIGNER_PUB}"
        return [f"{SIGNATURE}: signature does not verify with {who} (manifest changed or other signer)"]
    if public_key is None and key_fingerprint(key) != info.get("public_key_sha256"):
        return [f"{SIGNER_PUB}: does not match the key fingerprint recorded in the manifest"]
    return []
