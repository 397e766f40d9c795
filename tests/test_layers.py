"""The layers: the store never imports the workflow layer, which uses only the store's documented
interfaces, and the client never imports the backend (the backend builds on the client)."""

from __future__ import annotations

import ast
from pathlib import Path

from tests.conftest import ROOT, run_python


def _module(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path) -> set[str]:
    """Every module a file imports, anywhere in it (type-checking and function-level imports too)."""
    name = _module(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = package
            for _ in range(node.level - 1):
                base = base.rpartition(".")[0]
            module = ".".join(p for p in (base, node.module or "") if p) if node.level else node.module or ""
            found.add(module)
            found.update(f"{module}.{a.name}" for a in node.names)
    return found


def _graph(*packages: str) -> dict[str, set[str]]:
    files = {_module(p): p for d in packages for p in (ROOT / d).rglob("*.py")}
    return {m: _imports(p) & files.keys() for m, p in files.items()}


def test_the_store_never_imports_the_workflow_layer():
    """Nothing in storage_api/ or storage/ imports workflows (the CLI finds `run` as a plugin)."""
    offenders = {str(p.relative_to(ROOT)): sorted(m for m in _imports(p) if m.split(".")[0] == "workflows")
                 for d in ("storage_api", "storage") for p in (ROOT / d).rglob("*.py")}
    assert {k: v for k, v in offenders.items() if v} == {}
    out = run_python("import sys, storage_api, storage, storage.api, storage_api._cli, storage_api._backend._main\n"
                     "print(sorted(m for m in sys.modules if m.split('.')[0] == 'workflows'))")
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


# The store's interfaces the workflow layer may use: the public package, and the documented
# internal ones (README, "Interfaces for tools built on the store").
_DOCUMENTED = {
    "storage_api": None, "storage_api.errors": None, "storage_api._messages": None,
    "storage_api._context": {"current", "peek", "on_delete"}, "storage_api._transport": {"traffic"},
    "storage_api._config": {"default_config_path"},
}


def _store_imports(path: Path) -> list[tuple[str, str | None]]:
    """(module, name) of every import of the store in a file (name None for a plain import)."""
    out = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out += [(a.name, None) for a in node.names if a.name.split(".")[0] == "storage_api"]
        elif isinstance(node, ast.ImportFrom) and not node.level and (node.module or "").split(".")[0] == "storage_api":
            out += [(node.module, a.name) for a in node.names]
    return out


def test_the_workflow_layer_uses_only_documented_interfaces_of_the_store():
    bad = []
    for path in (ROOT / "workflows").rglob("*.py"):
        for module, name in _store_imports(path):
            if module == "storage_api" and name is not None and f"storage_api.{name}" in _DOCUMENTED:
                module, name = f"storage_api.{name}", None
            allowed = _DOCUMENTED.get(module, set())
            if module not in _DOCUMENTED or (allowed is not None and name not in allowed):
                bad.append(f"{path.relative_to(ROOT)}: {module} {name or ''}")
        text = path.read_text()
        bad += [f"{path.relative_to(ROOT)}: a private Client method" for private in ("._send(", "._locate(")
                if private in text]
    assert bad == []


def test_the_client_never_reaches_the_backend():
    """No chain of imports leads from the client runtime to the backend package, and only the
    backend and the command line (whose `backend` command runs one) import it."""
    graph = _graph("storage_api", "storage")
    seen, todo = set(), ["storage_api._client"]
    while todo:
        for nxt in graph[todo.pop()] - seen:
            seen.add(nxt)
            todo.append(nxt)
    assert sorted(m for m in seen if m.startswith("storage_api._backend")) == []
    importers = {m for m, deps in graph.items() if any(d.startswith("storage_api._backend") for d in deps)}
    assert {m for m in importers if not m.startswith("storage_api._backend")} == {"storage_api._cli"}


def test_the_readme_tree_names_every_module_and_only_those():
    """README's "How it works" tree is the map of storage_api/: every module in it, none missing."""
    tree = (ROOT / "README.md").read_text().split("## How it works", 1)[1].split("```", 2)[1]
    listed, directory = set(), ""
    for line in tree.strip("\n").splitlines()[1:]:  # the lines under storage_api/
        if not line.startswith("  "):
            break  # the next top-level folder
        names = [n.strip() for n in line[:30].split(",") if n.strip()]  # the name column
        if line.startswith("    "):
            listed.update(directory + n for n in names)
        else:
            directory = names[0] if names and names[0].endswith("/") else ""
            listed.update(n for n in names if n.endswith(".py"))
    package = ROOT / "storage_api"
    modules = {p.name for p in package.glob("*.py")} - {"__main__.py"}
    modules |= {f"_backend/{p.name}" for p in (package / "_backend").glob("*.py")} - {"_backend/__init__.py"}
    assert modules - listed == set(), "modules missing from the tree"
    assert listed - modules == set(), "the tree names modules that do not exist"
