"""The bundle manifest: SHA-256 of every file, signed with ECDSA P-384.

    manifest.json       {"format", "hash", "files": {relpath: sha256}, "signature": {...} | null}
    manifest.json.sig   DER ECDSA-SHA384 signature of manifest.json's exact bytes
    signer.pub.pem      the signer's public key (a convenience, NOT a trust anchor)

Verification checks every listed hash, names files that were added or removed,
and checks the signature. Integrity alone is checked against the embedded
``signer.pub.pem``; authenticity needs the federation's public key (its CA
certificate, a PEM public key or an OpenSSH public key) passed explicitly, since
anyone who can edit the bundle can also replace the embedded key.

The signature scheme (key loading, sign, verify) is passed in by the caller:
imaging_core never imports `cryptography` (fedvox keeps all of it in one
reviewed module, fl_common.crypto.signing; its MANIFEST_SIGNATURES is the
scheme ``fedvox export`` and ``fedvox bundle verify`` use). Anything with the
same methods works. No torch import here.
"""
from __future__ import annotations

import base64
import hashlib
import json
import os
from pathlib import Path

from typing import Any, Protocol

MANIFEST = "manifest.json"
SIGNATURE = "manifest.json.sig"
SIGNER_PUB = "signer.pub.pem"
# files the manifest cannot list (they are written after it, or hold its signature)
_NOT_LISTED = {MANIFEST, SIGNATURE, SIGNER_PUB}
FORMAT = "fedvox-bundle-manifest/1"
# where `python -m monai.bundle run` reads inputs and writes outputs by default
# (configs/inference.json): user data, not part of the bundle, never loaded as code
RUNTIME_DIRS = ("input/", "eval/")


class SignatureScheme(Protocol):
    algorithm: str

    def load_private(self, path) -> Any: ...
    def load_public(self, src) -> Any: ...
    def public_pem(self, key) -> bytes: ...
    def fingerprint(self, key) -> str: ...
    def sign(self, key, data: bytes) -> bytes: ...
    def verify(self, public_key, signature: bytes, data: bytes) -> bool: ...


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


# ---- write / verify -----------------------------------------------------------

def write_manifest(root: str | os.PathLike, key=None, scheme: SignatureScheme | None = None) -> dict:
    """Hash every file under ``root`` into manifest.json; sign it with ``scheme``
    when a private ``key`` (loaded by that scheme) is given."""
    if key is not None and scheme is None:
        raise ValueError("signing a manifest needs a signature scheme")
    root = Path(root)
    for stale in (SIGNATURE, SIGNER_PUB):
        (root / stale).unlink(missing_ok=True)
    files = {rel: sha256_file(root / rel) for rel in bundle_files(root)}
    sig_info = None
    if key is not None:
        sig_info = {"algorithm": scheme.algorithm, "public_key_sha256": scheme.fingerprint(key),
                    "signature_file": SIGNATURE, "public_key_file": SIGNER_PUB}
    manifest = {"format": FORMAT, "hash": "sha256", "files": files, "signature": sig_info}
    data = (json.dumps(manifest, indent=1, sort_keys=True) + "\n").encode()
    (root / MANIFEST).write_bytes(data)
    if key is not None:
        sig = scheme.sign(key, data)
        (root / SIGNATURE).write_bytes(base64.b64encode(sig) + b"\n")
        (root / SIGNER_PUB).write_bytes(scheme.public_pem(key))
    return manifest


def verify_manifest(root: str | os.PathLike, public_key=None, strict: bool = False,
                    scheme: SignatureScheme | None = None) -> list[str]:
    """Problems found (empty list = intact and, where a key was given, authentic).

    ``strict`` also reports files under the runtime input/ and eval/ folders.
    Without a ``scheme`` a signed manifest's signature cannot be checked, which
    is reported as a problem (never passed silently).
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
    problems += _check_signature(root, data, manifest.get("signature"), public_key, scheme)
    return problems


def _check_signature(root: Path, data: bytes, info, public_key, scheme) -> list[str]:
    if not info:
        return ["manifest is not signed"] if public_key is not None else []
    if scheme is None or info.get("algorithm") != scheme.algorithm:
        return [f"{SIGNATURE}: cannot check a {info.get('algorithm')!r} signature here"]
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
            key = scheme.load_public(ppath)
        except ValueError as e:
            return [str(e)]
    else:
        key = scheme.load_public(public_key)  # a bad key the user passed raises (CLI: one line)
    if not scheme.verify(key, sig, data):
        who = "the given key" if public_key is not None else f"the embedded {SIGNER_PUB}"
        return [f"{SIGNATURE}: signature does not verify with {who} (manifest changed or other signer)"]
    if public_key is None and scheme.fingerprint(key) != info.get("public_key_sha256"):
        return [f"{SIGNER_PUB}: does not match the key fingerprint recorded in the manifest"]
    return []
