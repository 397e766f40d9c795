"""Run unchanged PyCOMPSs/dislib apps without COMPSs, on the store's backends and on Dask.

COMPSs cannot be installed from the package registries while dislib imports ``pycompss.api``; real
COMPSs, when installed, takes over (``runcompss``/``enqueue_compss`` with the storage bundle). The
launcher (``storage-api run APP.py [args]`` or ``python -m workflows.executor APP.py [args]``) puts a small
``pycompss`` shim on ``sys.path`` (only when the real one is not importable) and runs the app as
``__main__`` with an engine that implements the ``pycompss.api`` subset dislib 1.0 uses:
``@task`` (``returns=`` counted as PyCOMPSs does, see :mod:`._returns`; directions IN, OUT, INOUT,
COMMUTATIVE, CONCURRENT, IN_DELETE, FILE_*, COLLECTION_* and DICTIONARY_* (to any depth, elements
followed by identity, see :mod:`._structure`) and ``{Type: ..., Depth: ...}``; ``target_direction`` for methods), ``@constraint`` (recorded), ``@on_failure``, ``@reduction``
(one call on the whole collection), ``compss_wait_on`` (futures, nested lists), ``compss_delete_object``,
``compss_barrier`` and the rest of ``pycompss.api.api`` in its sequential form.

Tasks return futures and run asynchronously in dependency order. A task whose arguments include a
persistent object runs on the backend holding the first one; a task whose inputs a backend keeps
runs there; the others run on Dask workers: a local cluster, or a running scheduler's (see
:mod:`._engine`, :mod:`._dask`). Errors
surface at ``compss_wait_on`` (or ``compss_barrier``) with their original type and traceback;
the executor's own reasons to fail a task are :class:`TaskError` subclasses naming it.

Known limits: no task groups, no nesting (tasks called inside tasks run as
plain calls, as PyCOMPSs without agents), arguments are snapshotted structurally at submission but
arrays inside them are not copied, persistent objects cannot be of classes defined in the app's
``__main__`` (task arguments of such classes can travel). Results kept on backends are freed once the app drops or
deletes their futures (see :mod:`._frees`).
"""

from __future__ import annotations

from storage_api._context import peek
from storage_api._transport import traffic

from ._current import current
from ._engine import Future
from ._errors import ArgumentNotSendable, ReturnsMismatch, TaskCancelled, TaskError, TaskTimeout, TaskWorkerDied
from ._serial import UnresolvedFuture

__all__ = ["main", "bytes_moved", "tasks_by_node", "warm_up", "Future", "TaskError", "TaskCancelled", "ReturnsMismatch", "TaskTimeout",
           "TaskWorkerDied", "ArgumentNotSendable", "UnresolvedFuture", "current"]


def main(argv: list[str] | None = None) -> int:
    """``python -m workflows.executor [--workers N] APP.py [args...]``."""
    from ._launch import main as _main

    return _main(argv)


def warm_up(*modules: str, hide: tuple[str, ...] = (), backends: bool = False) -> None:
    """Have the Dask workers, and with ``backends`` the store's live backends (where tasks on
    persistent data run), import ``modules`` now, in the background (as COMPSs' workers have their
    libraries loaded before tasks arrive), without their import-time notices and without the
    packages in ``hide`` (see :mod:`workflows.quiet`). Outside the executor it does nothing."""
    engine = current()
    if engine is not None:
        engine.warm_up(list(modules), hide, backends)


def tasks_by_node() -> dict[str, dict[str, int]] | None:
    """Tasks started so far in this run, by node, or ``None`` outside the executor:
    ``{"workers": {host name: tasks its Dask workers started}, "backends": {node: tasks sent to its
    backends}}``."""
    engine = current()
    return None if engine is None else engine.by_node()


def bytes_moved() -> dict[str, int] | None:
    """Bytes moved between processes so far in this run, or ``None`` outside the executor.

    ``workers``: task payloads pickled to the Dask workers, values brought back from them, what
    they sent each other (Dask's transfers) and what they exchanged with backends; ``client``: frame bytes the app's process sent to and received
    from backends (tasks, results, active calls, persistence); ``backends``: frame bytes the
    backends exchanged with each other (on connections they opened). Redis traffic and the
    connection handshakes are not counted. ``total`` is their sum.
    """
    engine = current()
    if engine is None:
        return None
    client = sum(s + r for label, (s, r) in traffic().items() if label == "client")
    backends = 0
    if peek() is not None:
        for counters in engine.remote.backend_traffic().values():
            backends += sum(s + r for label, (s, r) in counters.items() if label == "peer")
    out = {"workers": engine.worker_moved(), "client": client, "backends": backends}
    out["total"] = sum(out.values())
    return out
