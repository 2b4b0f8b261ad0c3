"""A site's own keys and its trust in the roster, made and kept AT the site.

- `fedvox site init`: the site's enrollment key pair (P-384; it authenticates
  the SuperNode and signs secure-aggregation adverts and views) in a 0700 key
  directory, and the enrollment request (enroll.json) the hospital sends to
  the coordinator. The private key never leaves the directory.
- `fedvox provision --enroll` reads the requests back with ``read_request``
  (the request format lives here once).
- `fedvox site trust`: pins the roster fingerprint the site compared out of
  band (phone, letter) in KEYS/trust.toml; ``check_trust`` is what `fedvox site`
  runs before it starts anything.
"""
from __future__ import annotations

import datetime as _dt
import json
import os
import re
import sys
from dataclasses import dataclass
from pathlib import Path

from fl_common.crypto import pki
from fl_common.kit import KEYS_REQUEST, KEYS_TRUST, KIT_AUTH_KEY, KIT_AUTH_PUB, SiteKit
from fl_common.secagg.errors import SecAggError
from imaging_core.errors import ImagingError

REQUEST_FORMAT = "fedvox-enroll-v1"
SITE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$")  # a directory and a SuperNode name


class EnrollError(ImagingError):
    """Bad key directory, request or pin: one line naming the file."""


@dataclass(frozen=True)
class Request:
    path: Path
    site: str
    public_key: str      # OpenSSH line, comment = site
    created: str
    fingerprint: str


@dataclass(frozen=True)
class SiteKeys:
    dir: Path
    site: str
    auth_key: Path
    public_key: str


def check_site_name(name: str, where=None) -> str:
    if not SITE_NAME.match(str(name)) or name == "server":
        raise EnrollError(where, f"bad site name {name!r}: use letters, digits, '_', '-', '.' "
                                 "(not 'server'); it becomes a directory and a SuperNode name")
    return str(name)


def _write_file(path: Path, data: bytes, mode: int) -> None:
    # created with its final mode (never briefly readable by others); replaced atomically
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def init_site(site: str, out_dir, force: bool = False) -> Path:
    """Make the site's key pair in ``out_dir`` (0700) and its enrollment request;
    returns the request's path. Refuses to replace a key unless ``force``."""
    site = check_site_name(site)
    d = Path(out_dir).absolute()
    key_path = d / KIT_AUTH_KEY
    if key_path.exists() and not force:
        raise EnrollError(key_path, "a site key already exists here; pass --force to replace it "
                                    "(the coordinator must then enroll the new request)")
    d.mkdir(parents=True, exist_ok=True, mode=0o700)
    os.chmod(d, 0o700)
    key = pki.new_key()
    pub = pki.openssh_public(key, comment=site)
    created = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
    req = {"format": REQUEST_FORMAT, "site": site, "auth_public_key": pub, "created": created,
           "fingerprint": pki.request_fingerprint(site, pub, created)}
    _write_file(key_path, pki.openssh_private(key), 0o600)
    _write_file(d / KIT_AUTH_PUB, (pub + "\n").encode(), 0o644)
    _write_file(d / KEYS_REQUEST, (json.dumps(req, indent=2) + "\n").encode(), 0o644)
    (d / KEYS_TRUST).unlink(missing_ok=True)  # a new key means a new roster to pin
    return d / KEYS_REQUEST


def read_request(path) -> Request:
    """An enrollment request, checked: well formed, a P-384 public key, and its
    fingerprint matches its content (one EnrollError naming the file)."""
    p = Path(path)
    try:
        doc = json.loads(p.read_text())
    except OSError as e:
        raise EnrollError(p, f"cannot read the enrollment request ({e.strerror or e})") from None
    except ValueError as e:
        raise EnrollError(p, f"not JSON ({e})") from None
    want = {"format", "site", "auth_public_key", "created", "fingerprint"}
    if not isinstance(doc, dict) or set(doc) != want or not all(isinstance(doc[k], str) for k in want):
        raise EnrollError(p, f"not an enrollment request: want exactly the string fields {sorted(want)}")
    if doc["format"] != REQUEST_FORMAT:
        raise EnrollError(p, f"unknown request format {doc['format']!r} (want {REQUEST_FORMAT!r})")
    site = check_site_name(doc["site"], p)
    try:
        pub = pki.load_enrollment_public_key(doc["auth_public_key"])
        fp = pki.request_fingerprint(site, doc["auth_public_key"], doc["created"])
    except SecAggError as e:
        raise EnrollError(p, f"auth_public_key: {e}") from None
    if pub.curve.name != "secp384r1":
        raise EnrollError(p, f"auth_public_key must be P-384 (Flower's SuperNode auth), got {pub.curve.name}")
    if fp != doc["fingerprint"]:
        raise EnrollError(p, f"fingerprint {doc['fingerprint']} does not match the request's content "
                             f"({fp}): it was altered after `fedvox site init` wrote it")
    return Request(p, site, pki.openssh_public(pub, comment=site), doc["created"], fp)


def read_keys(keys_dir) -> SiteKeys:
    """The site's key directory: its name (from enroll.json) and its key pair."""
    d = Path(keys_dir).absolute()
    req = read_request(d / KEYS_REQUEST)
    key_path = d / KIT_AUTH_KEY
    if not key_path.is_file():
        raise EnrollError(key_path, "no site key here: run `fedvox site init` first")
    if key_path.stat().st_mode & 0o077:
        raise EnrollError(key_path, "the site key is readable by others: chmod 600 it")
    try:
        key = pki.load_enrollment_private_key(key_path)
    except SecAggError as e:
        raise EnrollError(key_path, str(e)) from None
    if pki.openssh_public(key, comment=req.site) != req.public_key:
        raise EnrollError(key_path, f"does not match the public key in {req.path}")
    return SiteKeys(d, req.site, key_path, req.public_key)


def _write_trust(keys: SiteKeys, fingerprint: str) -> Path:
    path = keys.dir / KEYS_TRUST
    text = (f"# Pinned by this site (`fedvox site trust`), not by the coordinator.\n"
            f"[site]\nname = {json.dumps(keys.site)}\n\n"
            f"[trust]\nroster_fingerprint = \"{fingerprint}\"\n")
    _write_file(path, text.encode(), 0o600)
    return path


def _normalise(fp: str) -> str:
    return fp.strip().upper().replace(" ", "-")


def trust_roster(kit: SiteKit, keys_dir, fingerprint: str) -> Path:
    """Pin ``fingerprint`` (as read out by the coordinator) after checking it is
    the kit's roster's; returns trust.toml's path."""
    keys = read_keys(keys_dir)
    actual = pki.roster_fingerprint(kit.roster)
    if _normalise(fingerprint) != actual:
        raise EnrollError(kit.roster_path, f"roster fingerprint {actual} is not the {_normalise(fingerprint)} "
                                           "you were given: nothing pinned")
    _check_own_entry(kit, keys)
    return _write_trust(keys, actual)


def _check_own_entry(kit: SiteKit, keys: SiteKeys) -> None:
    if kit.name != keys.site:
        raise EnrollError(kit.site_toml, f"kit is for site {kit.name!r}, the key directory for {keys.site!r}")
    mine = kit.roster.get(keys.site)
    try:
        same = mine is not None and pki.openssh_public(pki.load_enrollment_public_key(mine)) \
            == pki.openssh_public(pki.load_enrollment_public_key(keys.public_key))
    except SecAggError as e:
        raise EnrollError(kit.roster_path, f"site {keys.site!r}: {e}") from None
    if not same:
        raise EnrollError(kit.roster_path, f"the roster's key for {keys.site!r} is not this site's "
                                           f"key ({keys.dir / KIT_AUTH_PUB})")


def check_trust(kit: SiteKit, keys_dir, trust_on_first_use: bool = False) -> str:
    """What `fedvox site` checks before it starts: the roster is the one this
    site pinned and lists this site's own key. Returns the pinned fingerprint.
    No pin: refused, unless ``trust_on_first_use`` (then pinned, and said so)."""
    keys = read_keys(keys_dir)
    _check_own_entry(kit, keys)
    actual = pki.roster_fingerprint(kit.roster)
    trust = keys.dir / KEYS_TRUST
    if not trust.is_file():
        if not trust_on_first_use:
            raise EnrollError(trust, f"no pinned roster fingerprint: compare {actual} with the one the "
                                     "coordinator gives you out of band, then `fedvox site trust "
                                     "KIT --keys DIR --fingerprint ...` (or --trust-on-first-use)")
        _write_trust(keys, actual)
        print(f"{keys.site}: trusted the roster on first use and pinned {actual} in {trust}",
              file=sys.stderr)
        return actual
    return check_pin(kit.roster, trust, kit.roster_path)


def check_pin(roster, trust_path, roster_where=None) -> str:
    """``roster`` matches the fingerprint pinned in ``trust_path`` (the site's
    trust.toml), else one EnrollError naming the roster and the pin file."""
    from fl_common.config import read_site_file
    doc = read_site_file(trust_path)
    if doc.trust is None:
        raise EnrollError(trust_path, "no [trust] table (roster_fingerprint)")
    pinned = doc.trust.roster_fingerprint
    actual = pki.roster_fingerprint(roster)
    if actual != pinned:
        raise EnrollError(roster_where or trust_path,
                          f"roster fingerprint {actual} does not match the {pinned} pinned in "
                          f"{trust_path}: refusing this roster")
    return pinned
