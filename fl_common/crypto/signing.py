"""Signatures of exported bundles' manifests (MANIFEST_SIGNATURES), handed to
imaging_core.bundle, which must not import cryptography itself, and of run
directories' manifests (RUN_RECORD_SIGNATURES, fl_server.record_manifest)."""
from __future__ import annotations

import base64
import hashlib
import json
import os
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from .pki import CURVE, SIG_HASH, parse_private_key, sign

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
            key = parse_private_key(Path(path).read_bytes())
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

    def same_key(self, a, b) -> bool:
        """Whether ``a`` and ``b`` (anything load_public takes) are the same key pair."""
        return self.fingerprint(self.load_public(a)) == self.fingerprint(self.load_public(b))

    def write_key_pair(self, key_path: str | os.PathLike, pub_path: str | os.PathLike) -> None:
        """A new bundle-signing key: private PEM (0600) and its public PEM, for a
        site to pin. Never the federation CA key: one key, one job."""
        from .pki import key_pem, new_key
        key = new_key()
        fd = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(key_pem(key))
        Path(pub_path).write_bytes(self.public_pem(key))

    @staticmethod
    def sign(key: ec.EllipticCurvePrivateKey, data: bytes) -> bytes:
        return sign(key, data)

    @staticmethod
    def verify(pub: ec.EllipticCurvePublicKey, signature: bytes, data: bytes) -> bool:
        try:
            pub.verify(signature, data, ec.ECDSA(SIG_HASH))
        except InvalidSignature:
            return False
        return True


MANIFEST_SIGNATURES = ManifestSignatures()


class RunRecordSignatures:
    """ECDSA P-384 / SHA-384 signatures of a run directory's manifest (a JSON object
    of its model files' hashes, fl_server.record_manifest), with the coordinator's
    run-record key. The signed bytes carry a domain tag, so a run-record signature
    can never pass for a bundle manifest's, whatever key signed it."""

    algorithm = "ecdsa-p384-sha384"
    DOMAIN = b"fedvox run record v1\n"

    def signed_bytes(self, manifest: dict) -> bytes:
        # canonical JSON: the same object always gives the same bytes, wherever it was read
        return self.DOMAIN + json.dumps(manifest, sort_keys=True, separators=(",", ":"),
                                        ensure_ascii=True, allow_nan=False).encode()

    def sign(self, key: ec.EllipticCurvePrivateKey, manifest: dict) -> dict:
        """The signed document: the manifest, the signer's key fingerprint and the signature."""
        return {"manifest": manifest, "algorithm": self.algorithm,
                "signer": MANIFEST_SIGNATURES.fingerprint(key),
                "signature": base64.b64encode(sign(key, self.signed_bytes(manifest))).decode()}

    def check(self, pub: ec.EllipticCurvePublicKey, doc) -> dict:
        """The manifest of a signed document, or ValueError saying what is wrong
        (not a signed manifest, signed by another key, or altered after signing)."""
        if not isinstance(doc, dict) or not isinstance(doc.get("manifest"), dict) \
                or not isinstance(doc.get("signature"), str):
            raise ValueError("not a signed run manifest ({manifest, signature} expected)")
        if doc.get("algorithm") != self.algorithm:
            raise ValueError(f"algorithm {doc.get('algorithm')!r} is not {self.algorithm!r}")
        want = MANIFEST_SIGNATURES.fingerprint(pub)
        if doc.get("signer") != want:
            raise ValueError(f"signed by another key (fingerprint {str(doc.get('signer'))[:16]}..., "
                             f"the run-record key's is {want[:16]}...)")
        try:
            sig = base64.b64decode(doc["signature"], validate=True)
        except ValueError:
            raise ValueError("the signature is not base64") from None
        if not MANIFEST_SIGNATURES.verify(pub, sig, self.signed_bytes(doc["manifest"])):
            raise ValueError("the signature does not verify: the manifest was altered after signing")
        return doc["manifest"]


RUN_RECORD_SIGNATURES = RunRecordSignatures()
