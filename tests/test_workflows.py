"""The models' former module paths (``workflows.trainer``...): stored class paths and pickles still resolve."""

from __future__ import annotations

import signal
import uuid

import numpy as np
import pytest

from tests.conftest import run_python


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


def test_old_module_paths_resolve_once_the_models_are_imported():
    """The other order than above: the models first (this process holds them), then their old paths."""
    import importlib

    from storage_api._object import import_class
    from workflows.models import blocks, datasets, lstm, trainer

    for module in (blocks, datasets, lstm, trainer):
        assert importlib.import_module(module.__name__.replace(".models", "")) is module
    assert import_class("workflows.trainer.LSTMTrainer") is trainer.LSTMTrainer


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
