"""The site's pin on the Flower app it runs: the FAB a coordinator ships must be
exactly the code-free app fedvox ships (fl_server/flower_app/pyproject.toml),
checked from its bytes before anything of it is unpacked, put on sys.path or
imported. Flower itself puts the FAB directory first on sys.path, so any .py
file in a FAB (e.g. its own fl_client/client_app.py) would shadow the
installed shim; and `--trusted-entities` only accepts hub-issued
verifications. fl_client must not import fl_server, so the expectation is
written here; tests/fl_client/test_runner.py checks it against the shipped
pyproject.toml. Torch- and flwr-free.
"""
from __future__ import annotations

import hashlib
import io
import tomllib
import zipfile

# The app fedvox ships: no code, the two installed components, one config key.
EXPECTED_PUBLISHER = "fedvox"
EXPECTED_COMPONENTS = {"serverapp": "fl_server.server_app:app", "clientapp": "fl_client.client_app:app"}
EXPECTED_CONFIG_KEYS = frozenset({"spec"})
# A FAB built by `flwr run` 1.41 from fl_server/flower_app holds exactly these entries.
ALLOWED_FILES = frozenset({"pyproject.toml", ".info/CONTENT"})
_APP_KEYS = frozenset({"publisher", "components", "config"})
MAX_FAB_BYTES = 1 << 20  # the honest FAB is < 1 kB; never inflate anything big


class FabRefused(ValueError):
    """The shipped app is not the one this site installed (message says why)."""


def _refuse(why: str) -> None:
    raise FabRefused(f"refused the shipped Flower app (FAB): {why}")


def _entries(zf: zipfile.ZipFile) -> dict[str, bytes]:
    names = [i.filename for i in zf.infolist()]
    py = sorted(n for n in names if n.endswith((".py", ".pyc", ".pth", ".so")))
    if py:
        _refuse(f"it contains code: {', '.join(py)} (the fedvox app ships none)")
    extra = sorted(set(names) - ALLOWED_FILES)
    if extra:
        _refuse(f"it contains files the fedvox app does not: {', '.join(extra)}")
    if len(names) != len(set(names)):
        _refuse("it holds a file name twice")
    missing = sorted(ALLOWED_FILES - set(names))
    if missing:
        _refuse(f"it lacks {', '.join(missing)}")
    if sum(i.file_size for i in zf.infolist()) > MAX_FAB_BYTES:
        _refuse(f"its files inflate to more than {MAX_FAB_BYTES} bytes")
    return {n: zf.read(n) for n in names}


def _check_content_list(files: dict[str, bytes]) -> None:
    # .info/CONTENT: "path,sha256,size_in_bits" per file (flwr 1.41); exactly our pyproject.
    lines = [ln for ln in files[".info/CONTENT"].decode("utf-8", "replace").splitlines() if ln.strip()]
    pp = files["pyproject.toml"]
    want = f"pyproject.toml,{hashlib.sha256(pp).hexdigest()},{len(pp) * 8}"
    if lines != [want]:
        _refuse(".info/CONTENT does not list exactly pyproject.toml with its hash")


def _check_pyproject(raw: bytes) -> None:
    try:
        doc = tomllib.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, tomllib.TOMLDecodeError) as e:
        _refuse(f"pyproject.toml is not valid TOML: {e}")
    tool = doc.get("tool", {})
    if set(tool.get("flwr", {})) != {"app"}:
        _refuse(f"[tool.flwr] has {sorted(tool.get('flwr', {}))}, expected only 'app'")
    app = tool["flwr"]["app"]
    if not isinstance(app, dict) or set(app) != _APP_KEYS:
        _refuse(f"[tool.flwr.app] has {sorted(app) if isinstance(app, dict) else app!r}, "
                f"expected {sorted(_APP_KEYS)}")
    if app["publisher"] != EXPECTED_PUBLISHER:
        _refuse(f"publisher is {app['publisher']!r}, expected {EXPECTED_PUBLISHER!r}")
    if app["components"] != EXPECTED_COMPONENTS:
        _refuse(f"components are {app['components']!r}, expected {EXPECTED_COMPONENTS!r}")
    cfg = app["config"]
    if not isinstance(cfg, dict) or set(cfg) != EXPECTED_CONFIG_KEYS:
        _refuse(f"[tool.flwr.app.config] keys are {sorted(cfg) if isinstance(cfg, dict) else cfg!r}, "
                f"expected {sorted(EXPECTED_CONFIG_KEYS)}")
    deps = doc.get("project", {}).get("dependencies", [])
    if deps:
        _refuse(f"it asks for dependencies {deps!r} (the fedvox app has none)")


def check_fab(content: bytes, hash_str: str | None = None) -> None:
    """Raise FabRefused unless ``content`` (the FAB zip bytes) is the fedvox app.

    ``hash_str``: the hash Flower announced for it (sha256 hex), checked too.
    Reads the zip in memory only: nothing is written or imported.
    """
    if len(content) > MAX_FAB_BYTES:
        _refuse(f"it is {len(content)} bytes (the fedvox app is < 1 kB)")
    if hash_str is not None and hashlib.sha256(content).hexdigest() != hash_str:
        _refuse("its bytes do not match the hash it was announced with")
    try:
        with zipfile.ZipFile(io.BytesIO(content)) as zf:
            files = _entries(zf)
    except zipfile.BadZipFile as e:
        _refuse(f"it is not a zip archive ({e})")
    _check_content_list(files)
    _check_pyproject(files["pyproject.toml"])
