"""The package-level import graph of fedvox and the rules of DESIGN.md, read
statically from every .py file with `ast` (imports inside functions count too).

    python tests/import_graph.py         # the graph, then any violation (exit 1 if any)

Rules (arrows point one way: imaging_core <- fl_common <- {fl_client, fl_server}):
- imaging_core imports no fl_* package, no flwr and no cryptography;
- fl_common imports no torch, no fl_client, no fl_server, and of imaging_core
  only modules that do not load torch at import;
- fl_client never imports fl_server;
- fl_server imports fl_client only inside a function (the CLI and the demo
  start a site lazily), never at module level;
- only fl_common/crypto imports cryptography (and pycryptodome, `Crypto`);
- fl_client.client_app (the ClientApp shim) loads no torch at import.
"""
from __future__ import annotations

import ast
import sys
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("imaging_core", "fl_common", "fl_client", "fl_server", "protos", "sites_example")
THIRD_PARTY = ("torch", "flwr", "cryptography", "Crypto")  # Crypto: pycryptodome
FL = ("fl_common", "fl_client", "fl_server")
CRYPTO_PKG = "fl_common/crypto/"
SHIM = "fl_client.client_app"

# Edges tolerated against the rules, each with its reason: none.
KNOWN_EDGES: set[tuple[str, str]] = set()


@dataclass(frozen=True)
class Edge:
    file: str        # importing file, relative to the repo
    module: str      # importing module (dotted)
    target: str      # imported module (dotted, relative imports resolved)
    line: int
    lazy: bool       # inside a function: runs only when it is called

    @property
    def src_root(self) -> str:
        return self.module.split(".")[0]

    @property
    def dst_root(self) -> str:
        return self.target.split(".")[0]


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _resolve(module: str, is_pkg: bool, node: ast.ImportFrom) -> str:
    if not node.level:
        return node.module or ""
    base = module.split(".") if is_pkg else module.split(".")[:-1]
    base = base[:len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def _edges_of(path: Path) -> list[Edge]:
    rel = str(path.relative_to(REPO))
    module = _module_name(path)
    is_pkg = path.name == "__init__.py"
    tree = ast.parse(path.read_text(), filename=rel)
    out: list[Edge] = []

    def visit(node: ast.AST, lazy: bool) -> None:
        for child in ast.iter_child_nodes(node):
            inner = lazy or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
            if isinstance(child, ast.Import):
                out.extend(Edge(rel, module, a.name, child.lineno, lazy) for a in child.names)
            elif isinstance(child, ast.ImportFrom):
                base = _resolve(module, is_pkg, child)
                if child.level or base in _first_party_modules():
                    # `from pkg import sub`: the target may be a submodule
                    for a in child.names:
                        sub = f"{base}.{a.name}" if base else a.name
                        target = sub if sub in _first_party_modules() else base
                        out.append(Edge(rel, module, target, child.lineno, lazy))
                else:
                    out.append(Edge(rel, module, base, child.lineno, lazy))
            visit(child, inner)

    visit(tree, False)
    return list(dict.fromkeys(out))  # `from m import a, b` is one edge


_FIRST_PARTY: dict[str, Path] | None = None


def _first_party_files() -> dict[str, Path]:
    """{dotted module: file} of every first-party module."""
    global _FIRST_PARTY
    if _FIRST_PARTY is None:
        _FIRST_PARTY = {}
        for pkg in PACKAGES:
            for f in sorted((REPO / pkg).rglob("*.py")):
                _FIRST_PARTY[_module_name(f)] = f
    return _FIRST_PARTY


def _first_party_modules() -> set[str]:
    return set(_first_party_files())


def all_edges() -> list[Edge]:
    return [e for f in _first_party_files().values() for e in _edges_of(f)]


def _eager_closure(start: str, edges: list[Edge]) -> set[str]:
    """Every module loaded by importing ``start`` (module-level imports only),
    including the parent packages Python imports first."""
    by_module: dict[str, list[Edge]] = {}
    for e in edges:
        if not e.lazy:
            by_module.setdefault(e.module, []).append(e)
    seen: set[str] = set()
    todo = [start]
    while todo:
        m = todo.pop()
        if m in seen:
            continue
        seen.add(m)
        parts = m.split(".")
        todo += [".".join(parts[:i]) for i in range(1, len(parts))]  # parent packages
        todo += [e.target for e in by_module.get(m, [])]
    return seen


def _loads_torch(module: str, edges: list[Edge]) -> bool:
    return any(m.split(".")[0] == "torch" for m in _eager_closure(module, edges))


def violations(edges: list[Edge] | None = None) -> list[tuple[Edge, str]]:
    """Every edge that breaks a rule, with the rule."""
    edges = all_edges() if edges is None else edges
    out: list[tuple[Edge, str]] = []
    for e in edges:
        src, dst = e.src_root, e.dst_root
        if src == "imaging_core" and dst in (*FL, "flwr", "cryptography", "Crypto"):
            out.append((e, f"imaging_core imports {dst}"))
        if src == "fl_common" and dst in ("torch", "fl_client", "fl_server"):
            out.append((e, f"fl_common imports {dst}"))
        if src == "fl_common" and dst == "imaging_core" and _loads_torch(e.target, edges):
            out.append((e, f"fl_common imports {e.target}, which loads torch"))
        if src == "fl_client" and dst == "fl_server":
            out.append((e, "fl_client imports fl_server"))
        if src == "fl_server" and dst == "fl_client" and not e.lazy:
            out.append((e, "fl_server imports fl_client at module level (start a site lazily)"))
        if dst in ("cryptography", "Crypto") and not e.file.startswith(CRYPTO_PKG):
            out.append((e, f"{dst} imported outside {CRYPTO_PKG}"))
    if _loads_torch(SHIM, edges):
        shim = next(e for e in edges if e.module == SHIM)
        out.append((shim, f"{SHIM} loads torch at import"))
    return out


def unexpected(viol: list[tuple[Edge, str]]) -> list[tuple[Edge, str]]:
    return [(e, why) for e, why in viol if (e.file, e.target) not in KNOWN_EDGES]


def package_graph(edges: list[Edge]) -> dict[str, dict[str, str]]:
    """{package: {imported root: "eager" | "lazy"}} over first-party packages and
    the tracked third-party roots."""
    graph: dict[str, dict[str, str]] = {p: {} for p in PACKAGES}
    for e in edges:
        src, dst = e.src_root, e.dst_root
        if src == dst or dst not in (*PACKAGES, *THIRD_PARTY):
            continue
        kind = "lazy" if e.lazy else "eager"
        if graph[src].get(dst) != "eager":
            graph[src][dst] = kind
    return graph


def main() -> int:
    edges = all_edges()
    for pkg, deps in package_graph(edges).items():
        shown = ", ".join(f"{d}{' (lazy)' if k == 'lazy' else ''}" for d, k in sorted(deps.items()))
        print(f"{pkg:14s} -> {shown or '-'}")
    viol = violations(edges)
    bad = unexpected(viol)
    for e, why in viol:
        tag = "KNOWN (until merge)" if (e, why) not in bad else "VIOLATION"
        print(f"{tag}: {e.file}:{e.line} imports {e.target}{' (lazy)' if e.lazy else ''}: {why}")
    if not viol:
        print("no violations")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
