"""`fedvox provision`: a federation CA, the SuperLink's TLS identity, the
coordinator's bundle-signing and run-record keys and one startup kit per site, built from the
sites' enrollment requests (`fedvox site init`), written atomically. No site
private key is made or kept here: each site made its own.

Layout of ``out_dir``::

    federation.json           name, hosts, SuperLink address, sites, CA and roster fingerprints
    server/                   stays with the coordinator (0700)
      ca.crt  server.pem  server.key (0600)  ca.key (0600)  roster.json  roster.fingerprint
      bundle_signing.key (0600)  bundle_signing.pub  enroll/<site>.json (the requests)
      run_record.key (0600)  run_record.pub   signs / verifies run manifests (fl_common.kit)
    sites/<name>/             handed to that site (nothing secret in it)
      ca.crt  roster.json  roster.fingerprint  site.toml  bundle_signing.pub

The kit's format and its reader: fl_common.kit. ``roster.json`` maps every site
name to the OpenSSH public key of its request: the server registers these with
the SuperLink; each site pins the roster's fingerprint itself (`fedvox site
trust`) after comparing it out of band. ``ca.key`` is kept so the server
certificate can be re-issued (new host name) without re-distributing kits.

The key and certificate generation itself lives in ``fl_common.crypto.pki``.
"""
from __future__ import annotations

import datetime as _dt
import json
import os
import secrets
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from fl_common.crypto import pki as crypto
from fl_common.kit import (KIT_BUNDLE_PUB, KIT_CA, KIT_ROSTER, KIT_ROSTER_FP, KIT_SITE_TOML,
                           SERVER_BUNDLE_KEY, SERVER_RUN_KEY, SERVER_RUN_PUB)
from imaging_core.io.atomic import replace_dir

DEFAULT_PORT = 8000  # flower-superlink's own default for its single HTTPS port
# Loopback is always in the server certificate: the SuperLink's own SuperExec
# and ServerApp processes connect to its Runtime API on 127.0.0.1 with the same
# certificate, so TLS would fail without it even when sites use a DNS name.
LOOPBACK = ("127.0.0.1", "localhost")


class ProvisionError(ValueError):
    pass


@dataclass
class Provision:
    root: Path
    federation: str
    superlink_address: str
    hosts: list[str]
    ca_cert: Path
    server_cert: Path
    server_key: Path
    ca_key: Path
    roster_path: Path
    roster: dict[str, str]
    roster_fingerprint: str
    bundle_key: Path
    run_record_key: Path
    run_record_pub: Path
    site_kits: dict[str, Path] = field(default_factory=dict)


def _read_requests(paths) -> dict:
    """Enrollment requests -> {site: request}; a bad, duplicated or altered request
    is one error naming its file."""
    from fl_client.enroll import read_request  # the request format lives with `site init`
    paths = [Path(p) for p in paths]
    if not paths:
        raise ProvisionError("no enrollment requests given (--enroll: each site's enroll.json)")
    by_site: dict = {}
    by_key: dict = {}
    for p in paths:
        r = read_request(p)
        key = r.public_key.rsplit(" ", 1)[0]
        if r.site in by_site:
            raise ProvisionError(f"{p}: site {r.site!r} is already enrolled by {by_site[r.site].path}")
        if key in by_key:
            raise ProvisionError(f"{p}: the same public key as {by_key[key].path}: "
                                 "each site makes its own key")
        by_site[r.site], by_key[key] = r, r
    return by_site


def _write(path: Path, data: bytes | str, mode: int = 0o644) -> None:
    # Private files are created with their final mode, never briefly world-readable.
    if isinstance(data, str):
        data = data.encode()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.chmod(path, mode)  # umask may have narrowed/widened nothing, but be explicit


def _toml_str(s: str) -> str:
    return json.dumps(str(s))  # a JSON string is a valid TOML basic string


def _site_toml(name: str, federation: str, address: str) -> str:
    return f"""# Startup kit of site {_toml_str(name)} in federation {_toml_str(federation)}.
# Paths are relative to this file's directory unless absolute.
# The site's key stays in its own key directory (`fedvox site init`); the
# roster fingerprint is pinned there too (`fedvox site trust`), not here.

[site]
name = {_toml_str(name)}
data_root = "/path/to/{name}/data"   # EDIT: this site's data directory
datalist = "dataset.json"            # relative to data_root
modality = "CT"                      # CT or MR
device = "cpu"                       # or "cuda", "cuda:1"
num_workers = 0

[federation]
name = {_toml_str(federation)}

[superlink]
address = {_toml_str(address)}
root_certificates = "{KIT_CA}"
"""


def provision(out_dir, requests, hosts=LOOPBACK, federation: str = "fedvox",
              force: bool = False, port: int = DEFAULT_PORT,
              superlink_address: str | None = None) -> Provision:
    """Create a federation's CA, server identity, bundle-signing and run-record
    keys and site startup kits in ``out_dir`` from the sites' enrollment request files.

    ``hosts``: names/IPs the SuperLink is reached by (loopback is always added).
    ``superlink_address`` (default ``hosts[0]:port``) goes into each site.toml.
    Refuses to replace an existing ``out_dir`` unless ``force``.
    """
    out = Path(out_dir).absolute()
    reqs = _read_requests(requests)
    sites = list(reqs)
    hosts = [str(h) for h in hosts if str(h).strip()]
    if not hosts:
        raise ProvisionError("no hosts given for the server certificate")
    san_hosts = list(dict.fromkeys([*hosts, *LOOPBACK]))
    address = superlink_address or f"{hosts[0]}:{port}"
    if out.exists() and not force:
        raise ProvisionError(f"{out} already exists; pass force=True (--force) to replace it")
    out.parent.mkdir(parents=True, exist_ok=True)

    tmp = out.parent / f".{out.name}.tmp-{secrets.token_hex(4)}"
    tmp.mkdir(mode=0o700)
    try:
        ca_key = crypto.new_key()
        ca = crypto.make_ca(ca_key, f"{federation} federation CA", org=federation)
        srv_key = crypto.new_key()
        srv = crypto.issue_server_cert(ca, ca_key, srv_key, san_hosts,
                                    common_name=hosts[0], org=federation)
        bundle_key = crypto.new_key()  # its own pair: the CA key only signs certificates
        run_key = crypto.new_key()     # and another: why, in fl_common.kit
        roster = {s: reqs[s].public_key for s in sites}
        roster_json = json.dumps(roster, indent=2) + "\n"
        roster_fp = crypto.roster_fingerprint(roster)
        ca_pem, bundle_pub = crypto.cert_pem(ca), crypto.public_pem(bundle_key)

        sdir = tmp / "server"
        sdir.mkdir(mode=0o700)
        _write(sdir / "ca.crt", ca_pem)
        _write(sdir / "server.pem", crypto.cert_pem(srv))
        _write(sdir / "server.key", crypto.key_pem(srv_key), 0o600)
        _write(sdir / "ca.key", crypto.key_pem(ca_key), 0o600)
        _write(sdir / SERVER_BUNDLE_KEY, crypto.key_pem(bundle_key), 0o600)
        _write(sdir / KIT_BUNDLE_PUB, bundle_pub)
        _write(sdir / SERVER_RUN_KEY, crypto.key_pem(run_key), 0o600)
        _write(sdir / SERVER_RUN_PUB, crypto.public_pem(run_key))
        _write(sdir / "roster.json", roster_json)
        _write(sdir / KIT_ROSTER_FP, roster_fp + "\n")
        (sdir / "enroll").mkdir(mode=0o700)
        for s in sites:  # what each site sent, kept for audit
            _write(sdir / "enroll" / f"{s}.json", reqs[s].path.read_bytes())

        (tmp / "sites").mkdir(mode=0o755)
        for s in sites:
            d = tmp / "sites" / s
            d.mkdir(mode=0o755)
            _write(d / KIT_CA, ca_pem)
            _write(d / KIT_ROSTER, roster_json)
            _write(d / KIT_ROSTER_FP, roster_fp + "\n")  # for display: the site pins what it was told
            _write(d / KIT_BUNDLE_PUB, bundle_pub)
            _write(d / KIT_SITE_TOML, _site_toml(s, federation, address))

        meta = {"federation": federation, "superlink_address": address, "hosts": san_hosts,
                "sites": sites, "ca_sha256": crypto.fingerprint(ca), "roster_fingerprint": roster_fp,
                "enrolled": {s: reqs[s].fingerprint for s in sites},
                "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")}
        _write(tmp / "federation.json", json.dumps(meta, indent=2) + "\n")

        replace_dir(tmp, out)  # old dir moved aside, deleted once the new one is in place
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    os.chmod(out, 0o700)  # holds ca.key
    return load_provision(out)


def load_provision(out_dir) -> Provision:
    """Read back what ``provision`` wrote (paths and roster)."""
    out = Path(out_dir).absolute()
    meta_path = out / "federation.json"
    if not meta_path.is_file():
        raise ProvisionError(f"{out} is not a provision directory (no federation.json)")
    meta = json.loads(meta_path.read_text())
    s = out / "server"
    roster = json.loads((s / "roster.json").read_text())
    return Provision(root=out, federation=meta["federation"],
                     superlink_address=meta["superlink_address"], hosts=meta["hosts"],
                     ca_cert=s / "ca.crt", server_cert=s / "server.pem",
                     server_key=s / "server.key", ca_key=s / "ca.key",
                     roster_path=s / "roster.json", roster=roster,
                     roster_fingerprint=crypto.roster_fingerprint(roster),
                     bundle_key=s / SERVER_BUNDLE_KEY,
                     run_record_key=s / SERVER_RUN_KEY, run_record_pub=s / SERVER_RUN_PUB,
                     site_kits={n: out / "sites" / n for n in meta["sites"]})


def reissue_server_cert(out_dir, hosts) -> Path:
    """Re-issue server.pem/server.key for new host names with the kept CA key.

    Site kits stay valid (they only trust the CA). Returns the certificate path.
    """
    p = load_provision(out_dir)
    ca = crypto.load_cert(p.ca_cert.read_bytes())
    ca_key = crypto.load_key(p.ca_key.read_bytes())
    hosts = [str(h) for h in hosts if str(h).strip()]
    san_hosts = list(dict.fromkeys([*hosts, *LOOPBACK]))
    key = crypto.new_key()
    cert = crypto.issue_server_cert(ca, ca_key, key, san_hosts, common_name=hosts[0],
                                 org=p.federation)
    # Write both beside, then rename: the pair is never half replaced.
    for name, data, mode in (("server.key", crypto.key_pem(key), 0o600),
                             ("server.pem", crypto.cert_pem(cert), 0o644)):
        tmp = p.server_cert.parent / f".{name}.tmp-{secrets.token_hex(4)}"
        _write(tmp, data, mode)
        os.replace(tmp, p.server_cert.parent / name)
    meta = json.loads((p.root / "federation.json").read_text())
    meta["hosts"] = san_hosts
    tmp = p.root / f".federation.json.tmp-{secrets.token_hex(4)}"
    _write(tmp, json.dumps(meta, indent=2) + "\n")
    os.replace(tmp, p.root / "federation.json")
    return p.server_cert
