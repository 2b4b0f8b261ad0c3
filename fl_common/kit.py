"""A site's startup kit: what `fedvox provision` writes (fl_server.provision)
and `fedvox site` reads (fl_client.site). The file names are spelt here once.

    sites/<name>/   ca.crt  auth.key (0600)  auth.key.pub  roster.json  site.toml

Paths inside site.toml are relative to the kit directory, so a kit can be
copied anywhere.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

KIT_CA = "ca.crt"
KIT_AUTH_KEY = "auth.key"
KIT_AUTH_PUB = "auth.key.pub"
KIT_ROSTER = "roster.json"
KIT_SITE_TOML = "site.toml"
# The coordinator's bundle-signing key: its own key pair, not the TLS CA's. The
# private half stays in the provision directory's server/; every kit carries the
# public half so a site can pin it.
SERVER_BUNDLE_KEY = "bundle_signing.key"
KIT_BUNDLE_PUB = "bundle_signing.pub"


class KitError(ValueError):
    pass


@dataclass
class SiteKit:
    dir: Path
    name: str
    federation: str
    superlink_address: str
    ca_cert: Path
    auth_key: Path
    auth_pub: Path
    roster: dict[str, str]
    site_toml: Path


def read_kit(kit_dir) -> SiteKit:
    """A site's startup kit (as written by provisioning), paths resolved."""
    d = Path(kit_dir).absolute()
    toml_path = d / KIT_SITE_TOML
    if not toml_path.is_file():
        raise KitError(f"{d} is not a site startup kit (no {KIT_SITE_TOML})")
    from .config import read_site_file
    doc = read_site_file(toml_path)  # the one site.toml parser: a bad key is one error naming it
    sl = doc.superlink

    def _p(v):
        p = Path(v).expanduser()
        return p if p.is_absolute() else d / p

    return SiteKit(dir=d, name=doc.site.name, federation=doc.federation.name,
                   superlink_address=sl.address, ca_cert=_p(sl.root_certificates),
                   auth_key=_p(sl.auth_key), auth_pub=_p(sl.auth_key + ".pub"),
                   roster=json.loads((d / KIT_ROSTER).read_text()), site_toml=toml_path)
