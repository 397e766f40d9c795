"""The task-workflow layer (``workflows/``) against the store: who imports whom, and old class paths."""

from __future__ import annotations

import ast
import signal
import uuid
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import ROOT, run_python


def _imports(path: Path) -> set[str]:
    """Every module a file imports (absolute names; relative imports resolved against its package)."""
    package = ".".join(path.relative_to(ROOT).with_suffix("").parts[:-1])
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
            module = node.module or ""
            name = module if not node.level else ".".join(p for p in (base, module) if p)
            found.add(name)
            found.update(f"{name}.{a.name}" for a in node.names)
    return found


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
    "storage_api._context": {"current", "peek"}, "storage_api._transport": {"traffic"},
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


@pytest.mark.slow  # imports torch in a fresh interpreter
def test_old_module_paths_name_the_same_modules():
    """`workflows.trainer` & co. are the moved modules themselves, not copies (pickles resolve either way)."""
    out = run_python(
        "import importlib\n"
        "for m in ('blocks', 'datasets', 'trainer', 'lstm'):\n"
        "    assert importlib.import_module('workflows.' + m) is importlib.import_module('workflows.models.' + m), m\n"
        "from storage_api._object import import_class\n"
        "from workflows.models.trainer import LSTMTrainer\n"
        "assert import_class('workflows.trainer.LSTMTrainer') is LSTMTrainer\n"
        "print('ok')"
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "ok"


def test_an_object_stored_under_an_old_class_path_is_served(own_cluster, own_client):
    """A backend log written when the models lived in workflows/ (class path and pickled references
    name `workflows.blocks`, `workflows.datasets`): after a restart the backend serves it, by id and
    by alias, and takes new writes."""
    from storage_api._backend._store import Store
    from storage_api._serial import dumps
    from workflows.models.blocks import PersistentBlock
    from workflows.models.datasets import DatasetError

    own_cluster.kill("b0", signal.SIGTERM)
    oid = str(uuid.uuid4())
    data = np.arange(6.0).reshape(2, 3)
    state = {"data": data, "shape": (2, 3), "dtype": data.dtype, "ndim": 2, "nbytes": data.nbytes,
             "origin": DatasetError("made by an old deployment")}
    DatasetError.__module__ = "workflows.datasets"  # how the pickle named it then
    try:
        body, buffers = dumps(state)
    finally:
        DatasetError.__module__ = "workflows.models.datasets"
    assert b"workflows.datasets" in body
    store = Store(own_cluster.backend("b0").storage_dir)
    store.sync(store.put(oid, {"class": "workflows.blocks.PersistentBlock", "alias": "old-block"}, body, buffers))
    store.close()
    own_cluster.restart("b0")

    assert own_client.placement(oid).class_path == "workflows.blocks.PersistentBlock"
    block = own_client.get_by_id(oid)
    assert isinstance(block, PersistentBlock)
    assert block[1, 2] == 5.0
    assert block.shape == (2, 3)
    origin = block.origin
    assert type(origin) is DatasetError and str(origin) == "made by an old deployment"
    assert PersistentBlock.get_by_alias("old-block").getID() == oid
    labels = block.fill_blobs(4, 0)
    assert labels.shape == (4, 1) and block.shape == (4, 20)
