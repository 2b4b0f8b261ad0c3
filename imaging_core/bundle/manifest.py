"""The bundle manifest: SHA-256 of every file, signed with ECDSA P-384.

    manifest.json       {"format", "hash", "files": {relpath: sha256}, "signature": {...} | null}
    manifest.json.sig   DER ECDSA-SHA384 signature of manifest.json's exact bytes

Verification checks every listed hash, names files that were added or removed,
and checks the signature against a PINNED public key that the caller supplies
(the coordinator's bundle-signing key, which every site kit carries). Nothing
inside the bundle is ever a trust anchor: whoever can edit the bundle can
re-sign it with a key of their own and ship that key too (older bundles carry a
signer.pub.pem; it is ignored). Without a pinned key only ``allow_unsigned``
lets a bundle through, and then its files are still checked against its own
manifest (integrity, not authenticity).

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
SIGNER_PUB = "signer.pub.pem"  # written by older exports; never trusted, never listed
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
        # the fingerprint tells a reader which key to pin; it proves nothing by itself
        sig_info = {"algorithm": scheme.algorithm, "public_key_sha256": scheme.fingerprint(key),
                    "signature_file": SIGNATURE}
    manifest = {"format": FORMAT, "hash": "sha256", "files": files, "signature": sig_info}
    data = (json.dumps(manifest, indent=1, sort_keys=True) + "\n").encode()
    (root / MANIFEST).write_bytes(data)
    if key is not None:
        sig = scheme.sign(key, data)
        (root / SIGNATURE).write_bytes(base64.b64encode(sig) + b"\n")
    return manifest


def is_signed(root: str | os.PathLike) -> bool:
    """Whether the bundle's manifest claims a signature (not whether it verifies)."""
    try:
        return bool(json.loads((Path(root) / MANIFEST).read_bytes()).get("signature"))
    except (OSError, ValueError, AttributeError):
        return False


def verify_manifest(root: str | os.PathLike, public_key=None, strict: bool = False,
                    scheme: SignatureScheme | None = None, allow_unsigned: bool = False) -> list[str]:
    """Problems found (empty list = intact and authentic under ``public_key``).

    ``public_key``: the PINNED signer key (path, bytes or key object that
    ``scheme`` loads). Without it the bundle is refused unless ``allow_unsigned``,
    which also accepts an unsigned manifest (a signature present is still checked
    when a key is pinned); the files are hash-checked either way. ``strict``
    also reports files under the runtime input/ and eval/ folders. Without a
    ``scheme`` a signature cannot be checked, which is reported as a problem.
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
    problems += _check_signature(root, data, manifest.get("signature"), public_key, scheme, allow_unsigned)
    return problems


def _check_signature(root: Path, data: bytes, info, public_key, scheme, allow_unsigned: bool) -> list[str]:
    if public_key is None:
        if allow_unsigned:
            return []  # the caller warns: integrity only
        return ["no pinned public key given: the signer's key must come from the federation "
                "(its kit), never from the bundle"]
    if not info:
        return [] if allow_unsigned else [f"{MANIFEST}: not signed"]
    if scheme is None or info.get("algorithm") != scheme.algorithm:
        return [f"{SIGNATURE}: cannot check a {info.get('algorithm')!r} signature here"]
    spath = root / SIGNATURE  # fixed name: the manifest does not get to point elsewhere
    if not spath.is_file():
        return [f"{SIGNATURE}: missing (manifest says it is signed)"]
    try:
        sig = base64.b64decode(spath.read_bytes().strip(), validate=True)
    except ValueError:
        return [f"{SIGNATURE}: not base64"]
    key = scheme.load_public(public_key)  # a bad key the user passed raises (CLI: one line)
    if not scheme.verify(key, sig, data):
        return [f"{SIGNATURE}: signature does not verify with the pinned key "
                "(manifest changed after signing, or signed by another key)"]
    return []
