"""Persistent objects as COMPSs' storage API and its users rely on them, against real backends.

Models written for COMPSs declare state as class-level defaults and import ``pycompss``; apps use
the module-level functions of ``storage.api`` and ``storage.storage_object``, and the COMPSs
manual's ``makePersistent(id)``/``deletePersistent()`` semantics.
"""

from __future__ import annotations

import os
import pickle
import subprocess
import sys
import textwrap
import uuid
from pathlib import Path

import pytest

import storage.api as api
from storage.storage_object import StorageObject, storage_object
from storage_api import ActiveObject
from storage_api.errors import InvalidArguments, ObjectExists, ObjectNotFound, StoreError
from tests.compss_models import Tally
from tests.conftest import Cluster, run_python, unique

ROOT = Path(__file__).resolve().parent.parent


# ------------------------------------------------------------------ class-level defaults
def test_class_level_defaults_never_hide_the_stored_state(client) -> None:
    t = Tally(5)
    t.make_persistent()
    assert (t.value, t.get()) == (5, 5)  # an attribute read and a plain method, on the handle
    t.value = 7
    t.count("a")
    t.count("a")  # a plain method reading and writing a class-level dict default
    assert (t.value, t.words) == (7, {"a": 2})
    assert t.held() == (7, {"a": 2}, True)  # what the backend's live object holds


def _thin(cluster: Cluster, code: str) -> str:
    """Run ``code`` in a client that builds stubs, not handles of the model's class (a thin client)."""
    proc = run_python("import storage_api\nstorage_api.connect()\n" + textwrap.dedent(code),
                      env={"STORAGE_API_CONFIG": str(cluster.dep.config_path), "STORAGE_API_IMPORT_CLASSES": "false"})
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def test_class_level_defaults_through_a_stub(cluster: Cluster, client) -> None:
    t = Tally(5)
    t.make_persistent()
    t.bump(2)
    out = _thin(cluster, f"""
        h = storage_api.get_by_id({t.getID()!r})
        print("stub", type(h).__dict__.get("_sa_stub"), h.value, h.words)  # words: never set on it
    """)
    assert "stub True 7 {}" in out


def test_class_level_defaults_in_a_task_process(cluster: Cluster, client) -> None:
    t = Tally(5)
    t.make_persistent()
    t.bump(4)
    # a local task worker receives the handle pickled, as the executor sends it
    proc = run_python(textwrap.dedent(f"""
        import pickle
        import storage_api
        storage_api.connect()
        h = pickle.loads(bytes.fromhex("{pickle.dumps(t).hex()}"))
        h.bump(1)
        print("seen", h.value, h.get())
    """), env={"STORAGE_API_CONFIG": str(cluster.dep.config_path)})
    assert proc.returncode == 0, proc.stderr
    assert "seen 10 10" in proc.stdout
    assert t.held()[0] == 10


# ------------------------------------------------------------------ models that import pycompss
def test_backends_import_models_that_import_pycompss(own_client) -> None:
    # fresh backends, which no task has reached; the model's module imports pycompss (with
    # dataClay's fallback, absent here too) and the client asks a backend to import it
    job_cls = own_client.stub("tests.pycompss_models.Job")
    job = job_cls("fit")
    job.make_persistent()
    assert job.describe() == "fit: task decorator from workflows.executor._decorators"


# ------------------------------------------------------------------ the storage.api surface
def test_storage_api_has_what_compss_backends_export() -> None:
    assert StorageObject is storage_object is api.StorageObject is ActiveObject
    assert api.makePersistent is api.make_persistent and api.deletePersistent is api.delete_persistent
    assert api.get_by_ID is api.getByID and api.task_context is api.TaskContext
    assert api.init_worker is api.initWorker and api.finish_worker is api.finishWorker
    assert api.StorageException is StoreError  # COMPSs-style `except StorageException` catches the store's errors
    assert api.__pipelining__ is False  # PyCOMPSs' pipelined getByID would write into the objects
    with pytest.raises(api.StorageException, match="StorageObject"):
        api.make_persistent([1])  # InvalidArguments, caught as COMPSs apps catch storage errors
    with pytest.raises(InvalidArguments, match="takes a StorageObject, not a dict"):
        api.make_persistent({"value": 1})
    with pytest.raises(InvalidArguments):
        api.delete_persistent(3)


# ------------------------------------------------------------------ makePersistent / deletePersistent
def test_make_persistent_takes_the_id_positionally(cluster: Cluster, client) -> None:
    oid = str(uuid.uuid4())
    assert api.make_persistent(Tally(3), oid) == oid
    other = cluster.client()
    try:
        assert other.get_by_id(oid).held() == (3, {}, True)
    finally:
        other.close()
    alias = unique("tally")
    Tally(4).make_persistent(alias=alias)  # ours: the alias is a keyword
    assert Tally.get_by_alias(alias).get() == 4
    with pytest.raises(InvalidArguments, match="UUID"):
        Tally(1).make_persistent("hits")
    for _ in range(4):  # either backend: the one holding it, or the other one
        with pytest.raises(ObjectExists):
            Tally(1).make_persistent(oid)
    assert client.get_by_id(oid).get() == 3
    other_spelling = oid.upper().replace("-", "")  # the same UUID: found, and taken, alike
    assert client.get_by_id(other_spelling).getID() == oid
    with pytest.raises(ObjectExists, match="a live object has that id"):
        Tally(1).make_persistent(other_spelling)


def test_delete_persistent_leaves_a_transient_object_with_its_state(cluster: Cluster, client) -> None:
    t = Tally(5)
    oid = t.make_persistent()
    t.value = 9
    t.count("w")
    api.delete_persistent(t)
    assert t.getID() is None
    assert type(t) is Tally and (t.value, t.words) == (9, {"w": 1})
    t.bump(1)  # a plain object again: runs locally
    assert t.get() == 10
    _assert_gone_for_another_client(cluster, oid)
    t.delete_persistent()  # not persistent any more: nothing to do
    api.delete_persistent(Tally(1))


def _assert_gone_for_another_client(cluster: Cluster, oid: str) -> None:
    other = cluster.client()
    try:
        with pytest.raises(ObjectNotFound):
            other.get_by_id(oid)
    finally:
        other.close()


def test_a_deleted_stub_instance_is_spent(cluster: Cluster, client) -> None:
    t = Tally(5)
    oid = t.make_persistent()
    out = _thin(cluster, f"""
        from storage_api.errors import ObjectDeleted
        h = storage_api.get_by_id({oid!r})
        h.delete_persistent()
        try:
            h.held()  # no class here to hold the state
        except ObjectDeleted:
            print("spent", h.getID())
    """)
    assert "spent None" in out
    with pytest.raises(ObjectNotFound):
        client.get_by_id(oid).held()


def test_an_active_method_deletes_its_own_object(cluster: Cluster, client) -> None:
    t = Tally(5)
    oid = t.make_persistent()
    assert t.retire() == 5  # the method holds the object's lock: deleting must not wait for it
    _assert_gone_for_another_client(cluster, oid)
    with pytest.raises(ObjectNotFound):  # and the backend did not write it back after the method
        t.held()


def test_an_object_is_stored_again_under_its_own_id(cluster: Cluster, client) -> None:
    t = Tally(5)
    oid = t.make_persistent()
    # COMPSs' Redis backend updates objects this way (delete, then persist under the same id)
    api.delete_persistent(t)
    t.bump(1)
    api.make_persistent(t, oid)
    assert t.getID() == oid
    other = cluster.client()
    try:
        assert other.get_by_id(oid).held() == (6, {}, True)
    finally:
        other.close()


def test_a_task_on_the_backend_deletes_and_stores_again_its_argument(cluster: Cluster, client,
                                                                      tmp_path: Path) -> None:
    t = Tally(5)
    oid = t.make_persistent()
    app = tmp_path / "app.py"
    app.write_text(textwrap.dedent("""
        import sys
        from pycompss.api.api import compss_wait_on
        from pycompss.api.parameter import INOUT
        from pycompss.api.task import task
        from storage.api import delete_persistent, getByID, make_persistent

        @task(t=INOUT)
        def renew(t):
            oid = t.getID()
            t.bump(5)
            delete_persistent(t)  # the task holds the object: this must not wait for itself
            make_persistent(t, oid)

        if __name__ == "__main__":
            import storage_api
            storage_api.connect()
            t = getByID(sys.argv[1])
            renew(t)
            t = compss_wait_on(t)
            print("after", t.getID(), t.held())
    """))
    proc = subprocess.run([sys.executable, "-m", "workflows.executor", "--workers", "1", str(app), oid],
                          capture_output=True, text=True, timeout=60, cwd=ROOT,
                          env={**os.environ, "PYTHONPATH": str(ROOT),
                               "STORAGE_API_CONFIG": str(cluster.dep.config_path)})
    assert proc.returncode == 0, proc.stderr
    assert f"after {oid} (10, {{}}, True)" in proc.stdout
    assert client.get_by_id(oid).held() == (10, {}, True)


# ------------------------------------------------------------------ shipped tasks
def test_a_task_on_the_backend_gets_the_values_inside_an_object_array(cluster: Cluster, client,
                                                                        tmp_path: Path) -> None:
    """dislib keeps grids of task results in numpy object arrays: a result kept on the backend
    travels inside one as a marker, which the backend replaces by the value before the task runs."""
    t = Tally(5)
    oid = t.make_persistent()
    app = tmp_path / "app.py"
    app.write_text(textwrap.dedent("""
        import os, sys
        import numpy as np
        from pycompss.api.api import compss_wait_on
        from pycompss.api.parameter import COLLECTION_IN
        from pycompss.api.task import task
        from storage.api import getByID

        @task(returns=1)
        def twice(t):  # on the backend holding t: the result stays there
            return t.get() * 2

        @task(returns=1, cells=COLLECTION_IN)
        def total(t, cells):
            return [os.getpid(), t.get() + sum(int(c) for c in cells)]

        if __name__ == "__main__":
            import storage_api
            storage_api.connect()
            t = getByID(sys.argv[1])
            cells = np.empty(2, dtype=object)
            cells[0], cells[1] = twice(t), 3
            print("total", compss_wait_on(total(t, cells)))
    """))
    proc = subprocess.run([sys.executable, "-m", "workflows.executor", "--workers", "1", str(app), oid],
                          capture_output=True, text=True, timeout=60, cwd=ROOT,
                          env={**os.environ, "PYTHONPATH": str(ROOT),
                               "STORAGE_API_CONFIG": str(cluster.dep.config_path)})
    assert proc.returncode == 0, proc.stderr
    backend_pid = next(b.pid for b in client.backends() if b.id == client.placement(oid).backend)
    assert f"total [{backend_pid}, 18]" in proc.stdout
