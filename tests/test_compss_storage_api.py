"""Persistent objects as COMPSs' storage API and its users rely on them, against real backends.

Models written for COMPSs declare state as class-level defaults and import ``pycompss``; apps use
the module-level functions of ``storage.api`` and ``storage.storage_object``, and the COMPSs
manual's ``makePersistent(id)``/``deletePersistent()`` semantics.
"""

from __future__ import annotations

import pickle
import textwrap

from tests.compss_models import Tally
from tests.conftest import Cluster, run_python


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
