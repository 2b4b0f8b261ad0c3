"""A site's startup kit and key directory: the file names, spelt here once.

The kit is what `fedvox provision` writes (fl_server.provision) for one site;
it holds nothing secret and nothing the site must trust blindly:

    sites/<name>/   ca.crt  roster.json  roster.fingerprint  site.toml  bundle_signing.pub

The key directory is what `fedvox site init` makes AT the site (fl_client.enroll)
and never leaves it, apart from the enrollment request:

    KEYS/ (0700)    auth.key (0600)  auth.key.pub  enroll.json  trust.toml

trust.toml pins the roster fingerprint the site compared out of band; a kit's
own roster.fingerprint is for display only. Paths inside site.toml are
relative to the kit directory, so a kit can be copied anywhere.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

KIT_CA = "ca.crt"
KIT_ROSTER = "roster.json"
KIT_ROSTER_FP = "roster.fingerprint"
KIT_SITE_TOML = "site.toml"
# The coordinator's bundle-signing key: its own key pair, not the TLS CA's. The
# private half stays in the provision directory's server/; every kit carries the
# public half so a site can pin it.
SERVER_BUNDLE_KEY = "bundle_signing.key"
KIT_BUNDLE_PUB = "bundle_signing.pub"
# The run-record key: signs each run directory's manifest of model/checkpoint hashes
# (fl_server.record_manifest), so that `fedvox export` signs into a bundle only a model
# the coordinator's run wrote. Its own pair, not the bundle key: the long-running
# ServerApp must hold it to re-sign after every checkpoint, while the bundle key
# that sites pin is used only by the operator's `fedvox export`; a key taken from
# the server process cannot sign a bundle a site trusts. Both halves stay in server/.
SERVER_RUN_KEY = "run_record.key"
SERVER_RUN_PUB = "run_record.pub"
# the site's key directory
KIT_AUTH_KEY = "auth.key"            # the site's enrollment key (SuperNode auth + secagg signatures)
KIT_AUTH_PUB = "auth.key.pub"
KEYS_REQUEST = "enroll.json"         # the enrollment request the hospital sends
KEYS_TRUST = "trust.toml"            # [site] name + [trust] roster_fingerprint


class KitError(ValueError):
    pass


@dataclass
class SiteKit:
    dir: Path
    name: str
    federation: str
    superlink_address: str
    ca_cert: Path
    roster_path: Path
    roster: dict[str, str]
    site_toml: Path
    bundle_pub: Path


def read_kit(kit_dir) -> SiteKit:
    """A site's startup kit (as written by provisioning), paths resolved."""
    d = Path(kit_dir).absolute()
    toml_path = d / KIT_SITE_TOML
    if not toml_path.is_file():
        raise KitError(f"{d} is not a site startup kit (no {KIT_SITE_TOML})")
    from .config import read_site_file
    doc = read_site_file(toml_path)  # the one site.toml parser: a bad key is one error naming it
    if doc.trust is not None:  # a pin the coordinator wrote would let it choose what the site trusts
        raise KitError(f"{toml_path}: a [trust] table in the startup kit is not honoured (the "
                       f"coordinator wrote this file); pin with `fedvox site trust` instead")
    sl = doc.superlink
    roster_path = d / KIT_ROSTER
    try:
        roster = json.loads(roster_path.read_text())
    except (OSError, ValueError) as e:
        raise KitError(f"{roster_path}: not a readable roster ({e})") from None
    if not isinstance(roster, dict) or not all(isinstance(v, str) for v in roster.values()):
        raise KitError(f"{roster_path}: a roster is a JSON object {{site: OpenSSH public key}}")

    def _p(v):
        p = Path(v).expanduser()
        return p if p.is_absolute() else d / p

    return SiteKit(dir=d, name=doc.site.name, federation=doc.federation.name,
                   superlink_address=sl.address, ca_cert=_p(sl.root_certificates),
                   roster_path=roster_path, roster=roster, site_toml=toml_path,
                   bundle_pub=d / KIT_BUNDLE_PUB)
