"""`fedvox provision`: a federation CA, the SuperLink's TLS identity and one
startup kit per site, written atomically.

Layout of ``out_dir``::

    federation.json           name, hosts, SuperLink address, sites, CA fingerprint
    server/                   stays with the coordinator (0700)
      ca.crt  server.pem  server.key (0600)  ca.key (0600)  roster.json
    sites/<name>/             handed to that site only (0700)
      ca.crt  auth.key (0600)  auth.key.pub  roster.json  site.toml

The site kit's format and its reader: fl_common.kit. ``roster.json`` maps every site name to its OpenSSH public key: the server
registers these with the SuperLink; sites get it so they can see who else is in
the federation. ``ca.key`` is kept so the server certificate can be re-issued
(new host name) without re-distributing kits. Paths inside ``site.toml`` are
relative to the kit directory, so a kit can be copied anywhere.

The key and certificate generation itself lives in ``fl_common.crypto.pki``
(all of fedvox's cryptography is in that one package).
"""
from __future__ import annotations

import datetime as _dt
import json
import os
import re
import secrets
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from fl_common.crypto import pki as crypto
from fl_common.kit import KIT_AUTH_KEY, KIT_AUTH_PUB, KIT_CA, KIT_ROSTER, KIT_SITE_TOML
from imaging_core.io.atomic import replace_dir

DEFAULT_PORT = 8000  # flower-superlink's own default for its single HTTPS port
# Loopback is always in the server certificate: the SuperLink's own SuperExec
# and ServerApp processes connect to its Runtime API on 127.0.0.1 with the same
# certificate, so TLS would fail without it even when sites use a DNS name.
LOOPBACK = ("127.0.0.1", "localhost")
_SITE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$")


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
    site_kits: dict[str, Path] = field(default_factory=dict)


def _check_sites(sites) -> list[str]:
    sites = [str(s) for s in sites]
    if not sites:
        raise ProvisionError("no sites given")
    for s in sites:
        if not _SITE_NAME.match(s):
            raise ProvisionError(f"bad site name {s!r}: use letters, digits, '_', '-', '.' "
                                 "(it becomes a directory and a SuperNode name)")
    dup = sorted({s for s in sites if sites.count(s) > 1})
    if dup:
        raise ProvisionError(f"duplicate site names: {', '.join(dup)}")
    if "server" in sites:
        raise ProvisionError("'server' is reserved for the coordinator's directory")
    return sites


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
# Keep auth.key private: it is this site's identity towards the SuperLink.

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
auth_key = "{KIT_AUTH_KEY}"
"""


def provision(out_dir, sites: list[str], hosts=LOOPBACK, federation: str = "fedvox",
              force: bool = False, port: int = DEFAULT_PORT,
              superlink_address: str | None = None) -> Provision:
    """Create a federation's CA, server identity and site startup kits in ``out_dir``.

    ``hosts``: names/IPs the SuperLink is reached by (loopback is always added).
    ``superlink_address`` (default ``hosts[0]:port``) goes into each site.toml.
    Refuses to replace an existing ``out_dir`` unless ``force``.
    """
    out = Path(out_dir).absolute()
    sites = _check_sites(sites)
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
        site_keys = {s: crypto.new_key() for s in sites}
        roster = {s: crypto.openssh_public(k, comment=s) for s, k in site_keys.items()}
        roster_json = json.dumps(roster, indent=2) + "\n"
        ca_pem = crypto.cert_pem(ca)

        sdir = tmp / "server"
        sdir.mkdir(mode=0o700)
        _write(sdir / "ca.crt", ca_pem)
        _write(sdir / "server.pem", crypto.cert_pem(srv))
        _write(sdir / "server.key", crypto.key_pem(srv_key), 0o600)
        _write(sdir / "ca.key", crypto.key_pem(ca_key), 0o600)
        _write(sdir / "roster.json", roster_json)

        (tmp / "sites").mkdir(mode=0o755)
        for s, k in site_keys.items():
            d = tmp / "sites" / s
            d.mkdir(mode=0o700)
            _write(d / KIT_CA, ca_pem)
            _write(d / KIT_AUTH_KEY, crypto.openssh_private(k), 0o600)
            _write(d / KIT_AUTH_PUB, roster[s] + "\n")
            _write(d / KIT_ROSTER, roster_json)
            _write(d / KIT_SITE_TOML, _site_toml(s, federation, address))

        meta = {"federation": federation, "superlink_address": address, "hosts": san_hosts,
                "sites": sites, "ca_sha256": crypto.fingerprint(ca),
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
