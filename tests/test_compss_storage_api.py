"""Persistent objects as COMPSs' storage API and its users rely on them, against real backends.

Models written for COMPSs declare state as class-level defaults and import ``pycompss``; apps use
the module-level functions of ``storage.api`` and ``storage.storage_object``, and the COMPSs
manual's ``makePersistent(id)``/``deletePersistent()`` semantics.
"""

from __future__ import annotations


# ------------------------------------------------------------------ models that import pycompss
def test_backends_import_models_that_import_pycompss(own_client) -> None:
    # fresh backends, which no task has reached; the model's module imports pycompss (with
    # dataClay's fallback, absent here too) and the client asks a backend to import it
    job_cls = own_client.stub("tests.pycompss_models.Job")
    job = job_cls("fit")
    job.make_persistent()
    assert job.describe() == "fit: task decorator from workflows.executor._decorators"
