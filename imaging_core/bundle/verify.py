"""Check an exported bundle: every file's SHA-256 against the signed manifest,
added or missing files, the signature, and the files MONAI needs."""
from __future__ import annotations

import os
from pathlib import Path

from .manifest import verify_manifest

REQUIRED_FILES = ("configs/metadata.json", "configs/inference.json", "models/model.pt")


def verify_bundle(bundle_dir: str | os.PathLike, public_key=None, strict: bool = False,
                  scheme=None, allow_unsigned: bool = False) -> list[str]:
    """Problems with the bundle, one line each naming the file; ``[]`` when intact.

    ``public_key``: the PINNED public key of the bundle's signer (the
    coordinator's bundle-signing key: path, PEM/OpenSSH bytes or a key object),
    never a key inside the bundle. Without it, or for an unsigned bundle, the
    bundle is refused unless ``allow_unsigned`` (then only its files are checked
    against its own manifest). The input/ and eval/ folders that ``python -m
    monai.bundle run`` uses by default are skipped unless ``strict``.
    ``scheme``: the signature scheme (manifest.SignatureScheme); without one a
    signed bundle's signature is reported as unchecked.
    """
    root = Path(bundle_dir)
    problems = verify_manifest(root, public_key, strict, scheme, allow_unsigned)
    for rel in REQUIRED_FILES:
        if root.is_dir() and not (root / rel).is_file() and not any(p.startswith(f"{rel}:") for p in problems):
            problems.append(f"{rel}: missing (required by MONAI's bundle format)")
    return problems
