"""DESIGN.md's import rules, statically (every import in every file, those
inside functions included: tests/import_graph.py) and dynamically (what a
fresh interpreter really loads)."""
from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
_spec = importlib.util.spec_from_file_location("fedvox_import_graph", HERE / "import_graph.py")
G = sys.modules.setdefault(_spec.name, importlib.util.module_from_spec(_spec))
_spec.loader.exec_module(G)  # registered first: its dataclasses look themselves up there

pytestmark = pytest.mark.timeout(300)


# ---- static --------------------------------------------------------------------------

def test_no_rule_is_broken_statically():
    bad = G.unexpected(G.violations())
    assert not bad, "\n".join(f"{e.file}:{e.line} imports {e.target}: {why}" for e, why in bad)


def test_the_site_never_imports_the_server():
    edges = [e for e in G.all_edges() if e.src_root == "fl_client" and e.dst_root == "fl_server"]
    assert edges == []


def test_lazy_imports_are_seen_and_classified():
    edges = G.all_edges()
    site = [e for e in edges if e.file == "fl_server/cli.py" and e.target == "fl_client.site"]
    assert site and all(e.lazy for e in site)  # `fedvox site` starts the site lazily
    crypto = {e.file for e in edges if e.dst_root in ("cryptography", "Crypto")}
    assert crypto and all(f.startswith("fl_common/crypto/") for f in crypto)
    assert not any(e.lazy for e in edges if e.file == "fl_common/crypto/pki.py")


def _edge(file, target, lazy=False):
    return G.Edge(file, G._module_name(REPO / file), target, 1, lazy)


@pytest.mark.parametrize("edge, rule", [
    (("imaging_core/io/nifti.py", "flwr.app"), "imaging_core imports flwr"),
    (("imaging_core/io/nifti.py", "fl_common.keys", True), "imaging_core imports fl_common"),
    (("fl_common/kit.py", "torch"), "fl_common imports torch"),
    (("fl_common/kit.py", "fl_server.config", True), "fl_common imports fl_server"),
    (("fl_common/kit.py", "imaging_core.train.trainer"), "which loads torch"),
    (("fl_client/site.py", "fl_server.deploy", True), "fl_client imports fl_server"),
    (("fl_server/report.py", "fl_client.site"), "at module level"),
    (("fl_common/secagg/checks.py", "cryptography.x509"), "outside fl_common/crypto/"),
    (("fl_server/export.py", "Crypto.Cipher", True), "outside fl_common/crypto/"),
])
def test_the_checker_catches_each_kind_of_violation(edge, rule):
    edges = G.all_edges() + [_edge(*edge)]
    found = [why for e, why in G.violations(edges) if (e.file, e.target) == edge[:2]]
    assert found and rule in found[0]


def test_allowed_edges_pass_the_checker():
    allowed = [_edge("fl_server/report.py", "fl_client.site", True),   # lazy: allowed
               _edge("fl_common/kit.py", "imaging_core.errors")]       # torch-free imaging_core
    edges = G.all_edges() + allowed
    flagged = {(e.file, e.target) for e, _ in G.violations(edges)}
    assert not flagged & {(e.file, e.target) for e in allowed}


def test_the_command_prints_the_graph_and_passes():
    r = subprocess.run([sys.executable, str(HERE / "import_graph.py")], capture_output=True,
                       text=True, timeout=120, cwd=REPO)
    assert r.returncode == 0, r.stdout + r.stderr
    graph = {k.strip(): v for k, v in (line.split("->", 1) for line in r.stdout.splitlines()
                                       if "->" in line)}
    assert set(graph) == set(G.PACKAGES)
    assert "torch" not in graph["fl_common"] and "fl_client" not in graph["fl_common"]
    assert "VIOLATION" not in r.stdout


# ---- dynamic: what a fresh interpreter loads ------------------------------------------

_PROBE = r"""
import builtins, importlib, json, os, sys
repo, mods = sys.argv[1], json.loads(sys.argv[2])
first_party = {"imaging_core", "fl_common", "fl_client", "fl_server", "protos", "sites_example"}
crypto_importers = set()
_real = builtins.__import__
def _spy(name, globals=None, locals=None, fromlist=(), level=0):
    if level == 0 and name.split(".")[0] in ("cryptography", "Crypto"):
        f = (globals or {}).get("__file__") or ""
        rel = os.path.relpath(f, repo) if f.startswith(repo + os.sep) else ""
        if rel.split(os.sep)[0] in first_party:  # not a library (a venv may live inside the repo)
            crypto_importers.add(rel)
    return _real(name, globals, locals, fromlist, level)
builtins.__import__ = _spy
loaded = {}
for m in mods:
    before = set(sys.modules)
    importlib.import_module(m)
    loaded[m] = sorted({k.split(".")[0] for k in set(sys.modules) - before})
print(json.dumps({"loaded": loaded, "roots": sorted({k.split(".")[0] for k in sys.modules}),
                  "crypto_importers": sorted(crypto_importers)}))
"""


def _probe(modules: list[str]) -> dict:
    r = subprocess.run([sys.executable, "-c", _PROBE, str(REPO), json.dumps(modules)],
                       capture_output=True, text=True, timeout=240, cwd=REPO)
    assert r.returncode == 0, r.stderr[-3000:]
    return json.loads(r.stdout.strip().splitlines()[-1])


def _modules(pkg: str) -> list[str]:
    return [m for m in sorted(G._first_party_files()) if m.split(".")[0] == pkg]


def test_every_torch_free_module_imports_first_on_its_own():
    """Each module of fl_common and of the site's secure aggregation, imported
    first in a fresh interpreter: an import cycle between two of them shows
    only in one order (fl_common.crypto.secagg first failed once)."""
    mods = _modules("fl_common") + [m for m in _modules("fl_client") if m.startswith("fl_client.secagg")]
    failed = {}
    for m in mods:
        r = subprocess.run([sys.executable, "-c", f"import {m}"], capture_output=True, text=True,
                           timeout=60, cwd=REPO)
        if r.returncode:
            failed[m] = r.stderr.strip().splitlines()[-1]
    assert not failed, failed


def test_fl_common_loads_no_torch_and_neither_side():
    res = _probe(_modules("fl_common"))
    assert not {"torch", "fl_client", "fl_server"} & set(res["roots"]), res["loaded"]


def test_the_clientapp_shim_loads_no_torch_and_no_server():
    res = _probe([G.SHIM])
    assert not {"torch", "fl_server"} & set(res["roots"]), res["roots"]


def test_imaging_core_loads_no_federation_code():
    res = _probe(_modules("imaging_core"))
    assert not {"fl_common", "fl_client", "fl_server", "flwr", "cryptography", "Crypto"} & set(
        res["roots"]), res["roots"]


def test_only_fl_common_crypto_imports_cryptography():
    res = _probe(_modules("fl_common") + _modules("fl_client") + _modules("fl_server"))
    assert res["crypto_importers"], "the probe saw no import of cryptography at all"
    assert all(f.startswith("fl_common/crypto/") for f in res["crypto_importers"]), \
        res["crypto_importers"]
