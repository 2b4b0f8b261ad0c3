"""Provisioning: real keys and certificates, checked with cryptography and a real TLS handshake."""
from __future__ import annotations

import json
import socket
import ssl
import stat
import threading
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import load_pem_public_key, load_ssh_public_key
from cryptography.x509.oid import ExtendedKeyUsageOID

from fl_client.enroll import EnrollError, init_site
from fl_common.config import load_site
from fl_common.crypto import pki
from fl_common.kit import KitError, read_kit
from fl_server.provision import ProvisionError, load_provision, provision, reissue_server_cert

pytestmark = pytest.mark.timeout(60)
SITES = ["hospital_a", "hospital_b", "hospital_c"]


def requests(base: Path, names) -> list[Path]:
    """Each site's `fedvox site init`, in its own directory outside the provision tree."""
    return [init_site(n, base / "site-keys" / n, force=True) for n in names]


@pytest.fixture(scope="module")
def prov(tmp_path_factory):
    base = tmp_path_factory.mktemp("prov")
    return provision(base / "fed", requests(base, SITES), hosts=("fl.example.org", "10.1.2.3"),
                     federation="demo")


def _cert(p: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(p.read_bytes())


def test_ca_is_a_self_signed_p384_ca(prov):
    ca = _cert(prov.ca_cert)
    ca.verify_directly_issued_by(ca)
    bc = ca.extensions.get_extension_for_class(x509.BasicConstraints)
    assert bc.critical and bc.value.ca and bc.value.path_length == 0
    assert ca.extensions.get_extension_for_class(x509.KeyUsage).value.key_cert_sign
    assert isinstance(ca.public_key().curve, ec.SECP384R1)
    key = pki.load_key(prov.ca_key.read_bytes())
    assert key.public_key().public_numbers() == ca.public_key().public_numbers()


def test_server_cert_signed_by_ca_with_sans(prov):
    ca, srv = _cert(prov.ca_cert), _cert(prov.server_cert)
    srv.verify_directly_issued_by(ca)
    assert not srv.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    eku = srv.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert ExtendedKeyUsageOID.SERVER_AUTH in eku
    san = srv.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert set(san.get_values_for_type(x509.DNSName)) == {"fl.example.org", "localhost"}
    assert {str(i) for i in san.get_values_for_type(x509.IPAddress)} == {"10.1.2.3", "127.0.0.1"}
    key = pki.load_key(prov.server_key.read_bytes())
    assert key.public_key().public_numbers() == srv.public_key().public_numbers()
    assert srv.not_valid_after_utc <= ca.not_valid_after_utc


def _handshake(prov, server_hostname: str) -> None:
    """A real TLS handshake on loopback: server.pem/key vs a client trusting only ca.crt."""
    sctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    sctx.load_cert_chain(prov.server_cert, prov.server_key)
    cctx = ssl.create_default_context(cafile=str(prov.ca_cert))
    lsock = socket.create_server(("127.0.0.1", 0))
    port = lsock.getsockname()[1]

    def serve():
        conn, _ = lsock.accept()
        try:
            with sctx.wrap_socket(conn, server_side=True) as s:
                s.recv(1)
        except (ssl.SSLError, OSError):
            pass

    t = threading.Thread(target=serve, daemon=True)
    t.start()
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=5) as raw:
            with cctx.wrap_socket(raw, server_hostname=server_hostname) as s:
                s.sendall(b"x")
    finally:
        t.join(5)
        lsock.close()


@pytest.mark.parametrize("name", ["fl.example.org", "localhost", "127.0.0.1", "10.1.2.3"])
def test_tls_handshake_for_every_san(prov, name):
    _handshake(prov, name)


def test_tls_rejects_a_name_not_in_the_certificate(prov):
    with pytest.raises(ssl.SSLCertVerificationError):
        _handshake(prov, "evil.example.org")


def test_private_keys_are_0600_and_dirs_private(prov):
    for k in [prov.server_key, prov.ca_key, prov.bundle_key, prov.run_record_key]:
        assert stat.S_IMODE(k.stat().st_mode) == 0o600, k
    for d in [prov.root, prov.root / "server"]:
        assert stat.S_IMODE(d.stat().st_mode) == 0o700, d


def test_roster_is_the_sites_own_p384_keys_and_every_kit_carries_it(prov):
    roster = json.loads(prov.roster_path.read_text())
    assert sorted(roster) == sorted(SITES)
    fp = pki.roster_fingerprint(roster)
    assert prov.roster_fingerprint == fp
    assert json.loads((prov.root / "federation.json").read_text())["roster_fingerprint"] == fp
    for s in SITES:
        kit = prov.site_kits[s]
        pub_line = (prov.root.parent / "site-keys" / s / "auth.key.pub").read_text().strip()
        assert pub_line.startswith("ecdsa-sha2-nistp384 ") and pub_line == roster[s]
        assert isinstance(load_ssh_public_key(pub_line.encode()).curve, ec.SECP384R1)
        # every kit carries the same roster, fingerprint, CA and bundle-signing public key
        assert json.loads((kit / "roster.json").read_text()) == roster
        assert (kit / "roster.fingerprint").read_text().strip() == fp
        assert (kit / "ca.crt").read_bytes() == prov.ca_cert.read_bytes()
        pub = load_pem_public_key((kit / "bundle_signing.pub").read_bytes())
        assert pub.public_numbers() == pki.load_key(prov.bundle_key.read_bytes()).public_key().public_numbers()
    assert len(set(roster.values())) == len(SITES)  # distinct keys
    ca = pki.load_key(prov.ca_key.read_bytes())
    assert pki.load_key(prov.bundle_key.read_bytes()).private_numbers() != ca.private_numbers()
    # the run-record key is a third pair, and stays with the coordinator: no kit carries it
    run_key = pki.load_key(prov.run_record_key.read_bytes())
    assert run_key.private_numbers() not in (ca.private_numbers(),
                                             pki.load_key(prov.bundle_key.read_bytes()).private_numbers())
    assert load_pem_public_key(prov.run_record_pub.read_bytes()).public_numbers() == \
        run_key.public_key().public_numbers()
    assert not any(p.name.startswith("run_record") for p in (prov.root / "sites").rglob("*"))


def test_site_toml_is_a_valid_site_config(prov):
    kit = read_kit(prov.site_kits["hospital_b"])
    assert kit.name == "hospital_b" and kit.federation == "demo"
    assert kit.superlink_address == "fl.example.org:8000"
    assert kit.ca_cert.is_file() and kit.bundle_pub.is_file() and kit.roster == prov.roster
    site = load_site(kit.site_toml)
    assert site.name == "hospital_b"
    assert site.data_root == "/path/to/hospital_b/data"
    with pytest.raises(KitError, match="not a site startup kit"):
        read_kit(prov.root / "server")


def test_refuses_to_overwrite_then_force_replaces(tmp_path):
    out = tmp_path / "fed"
    reqs = requests(tmp_path, ["a", "b", "c"])
    first = provision(out, reqs[:2])
    ca_before = first.ca_cert.read_bytes()
    with pytest.raises(ProvisionError, match="already exists"):
        provision(out, reqs)
    assert first.ca_cert.read_bytes() == ca_before
    assert sorted(p.name for p in (out / "sites").iterdir()) == ["a", "b"]
    second = provision(out, reqs, force=True)
    assert second.ca_cert.read_bytes() != ca_before
    assert sorted(second.roster) == ["a", "b", "c"]
    assert second.roster_fingerprint != first.roster_fingerprint
    assert sorted(p.name for p in tmp_path.iterdir()) == ["fed", "site-keys"]  # no temp or old dirs left


def test_bad_request_lists_are_refused_and_nothing_written(tmp_path):
    reqs = requests(tmp_path / "keys", ["a"])
    for bad, err in (([], ProvisionError), ([reqs[0], reqs[0]], ProvisionError),
                     ([tmp_path / "missing.json"], EnrollError)):
        with pytest.raises(err):
            provision(tmp_path / "fed", bad)
    assert [p.name for p in tmp_path.iterdir()] == ["keys"]


def test_failure_midway_leaves_nothing(tmp_path, monkeypatch):
    reqs = requests(tmp_path / "keys", ["a"])

    def boom(_key):
        raise RuntimeError("disk full")
    monkeypatch.setattr(pki, "public_pem", boom)
    with pytest.raises(RuntimeError, match="disk full"):
        provision(tmp_path / "fed", reqs)
    assert [p.name for p in tmp_path.iterdir()] == ["keys"]


def test_reissue_server_cert_keeps_the_ca(tmp_path):
    p = provision(tmp_path / "fed", requests(tmp_path, ["a"]))
    kit_ca = (p.site_kits["a"] / "ca.crt").read_bytes()
    reissue_server_cert(p.root, ["coordinator.hospital.org"])
    srv = _cert(p.server_cert)
    srv.verify_directly_issued_by(_cert(p.ca_cert))
    san = srv.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert "coordinator.hospital.org" in san.get_values_for_type(x509.DNSName)
    assert stat.S_IMODE(p.server_key.stat().st_mode) == 0o600
    assert (p.site_kits["a"] / "ca.crt").read_bytes() == kit_ca
    assert "coordinator.hospital.org" in load_provision(p.root).hosts
