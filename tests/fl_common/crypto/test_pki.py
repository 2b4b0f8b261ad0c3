"""Site enrollment keys: OpenSSH form, loading, ECDSA signatures over pack() tuples."""
from __future__ import annotations

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519

from fl_common.crypto import pki
from fl_common.crypto.secagg import pack
from fl_common.secagg import BadSignature, SecAggError


def test_openssh_enrollment_keys_load_sign_and_verify(tmp_path):
    key = pki.generate_enrollment_key()
    (tmp_path / "site.key").write_bytes(pki.enrollment_private_openssh(key))
    (tmp_path / "site.key.pub").write_bytes(pki.enrollment_public_openssh(key) + b" site-a\n")
    priv = pki.load_enrollment_private_key(tmp_path / "site.key")
    pub = pki.load_enrollment_public_key(tmp_path / "site.key.pub")
    assert pki.enrollment_private_openssh(key).startswith(b"-----BEGIN OPENSSH PRIVATE KEY")
    assert pki.enrollment_public_openssh(key).startswith(b"ecdsa-sha2-nistp384 ")
    assert pki.load_enrollment_public_key(pki.enrollment_public_openssh(key).decode())
    data = pack("hello")
    sig = pki.sign(priv, data)
    pki.verify(pub, sig, data, "site-a advert")
    with pytest.raises(BadSignature, match="site-a advert"):
        pki.verify(pub, sig, pack("hellO"), "site-a advert")
    other = pki.generate_enrollment_key().public_key()
    with pytest.raises(BadSignature):
        pki.verify(other, sig, data, "site-b")


def test_non_ec_enrollment_key_is_refused_clearly(tmp_path):
    ed = ed25519.Ed25519PrivateKey.generate()
    p = tmp_path / "ed.key"
    p.write_bytes(ed.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH,
                                   serialization.NoEncryption()))
    with pytest.raises(SecAggError, match="must be an EC key"):
        pki.load_enrollment_private_key(p)
    with pytest.raises(SecAggError, match="cannot read key file"):
        pki.load_enrollment_private_key(tmp_path / "missing.key")
