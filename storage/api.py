"""The Python Storage Runtime Interface COMPSs calls (``storage.api``), over storage_api.

PyCOMPSs imports this module on every worker, storage or not, so importing it has no side effects
and costs nothing (no numpy, no torch, no connection). Call sequences, as PyCOMPSs makes them:

* master: ``init(config_file_path=conf)`` ... ``getByID(id)`` ... ``finish()``;
* piper worker: ``initWorker(config_file_path=conf)``, fork, ``initWorkerPostFork()`` in each
  executor, per task ``TaskContext(logger, values, config_file_path=conf)`` around the call,
  ``finishWorkerPostFork()``, and ``finishWorker()`` in the main process;
* GAT worker: ``initWorker`` → task → ``finishWorker``, no PostFork calls.

Connections are made lazily, on first use, in the process that uses them: ``init``/``initWorker``
only read the storage conf, so a fork after them is safe; a client inherited across a fork is
dropped by :mod:`storage_api._context`'s at-fork hook and the child reconnects with the same
settings. Mutations a task makes go to the live object on its backend, which persists them, so
``TaskContext`` has nothing to write back and never changes an id.
"""

from __future__ import annotations

import logging
import threading
from typing import Any

from storage_api import StorageObject
from storage_api import _context
from storage_api.errors import InvalidArguments, StoreError

__all__ = [
    "init",
    "finish",
    "initWorker",
    "finishWorker",
    "initWorkerPostFork",
    "finishWorkerPostFork",
    "getByID",
    "TaskContext",
    "StorageObject",
    # the module-level names COMPSs' own storage backends add, which apps and models import
    "StorageException",
    "make_persistent",
    "makePersistent",
    "delete_persistent",
    "deletePersistent",
    "get_by_ID",
    "init_worker",
    "finish_worker",
    "task_context",
]

# PyCOMPSs reads this flag to fetch a task's persistent arguments with one getByID(*ids) call;
# its worker then assigns each Parameter to the fetched *object's* ``content`` attribute instead of
# the reverse, which on a persistent object would write that Parameter into the store. One
# getByID per argument is what it does without the flag.
__pipelining__ = False

log = logging.getLogger("storage.api")


# COMPSs' backends raise StorageException and apps catch it: every error of the store (the
# subclasses of StoreError: ObjectNotFound, InvalidArguments, ...) is one, whatever raised it.
StorageException = StoreError

_lock = threading.Lock()
_conf_path: str | None = None  # the storage conf of the last init/initWorker


def _settings(config_file_path: str | None) -> Any:
    from storage_api._compss._conf import settings_from_conf

    return settings_from_conf(config_file_path)


def _use(config_file_path: str | None) -> None:
    """Make the deployment named by the storage conf this process's runtime (connecting lazily)."""
    global _conf_path
    settings = _settings(config_file_path)  # errors in the conf surface here, in init
    with _lock:
        previous = _context.peek()
        if previous is not None and previous.settings == settings:
            return
        from storage_api._client import Client

        _context.install(Client(settings))
        _conf_path = config_file_path
        if previous is not None and previous.closed_when_replaced:
            previous.close()


def _release() -> None:
    with _lock:
        rt = _context.install(None)
        if rt is not None and rt.closed_when_replaced:
            rt.close()


def init(config_file_path: str | None = None, **kwargs: Any) -> None:
    """Master: connect to the deployment the storage conf names (an empty or absent conf: the default one)."""
    log.debug("init(%r)", config_file_path)
    _use(config_file_path)


def finish(**kwargs: Any) -> None:
    """Master: close the connections. Objects stay in the store."""
    log.debug("finish()")
    _release()


def initWorker(config_file_path: str | None = None, **kwargs: Any) -> None:
    """Worker main process: read the storage conf. Nothing is connected before the executors fork."""
    log.debug("initWorker(%r)", config_file_path)
    _use(config_file_path)


def finishWorker(**kwargs: Any) -> None:
    """Worker main process: close what this process opened."""
    log.debug("finishWorker()")
    _release()


def initWorkerPostFork() -> None:
    """Executor process after the fork: nothing to do, connections open on first use."""
    log.debug("initWorkerPostFork()")


def finishWorkerPostFork() -> None:
    """Executor process before it exits: close its connections (objects are already durable)."""
    log.debug("finishWorkerPostFork()")
    _release()


def getByID(*identifiers: str) -> Any:
    """The persistent object with this id (one object for one id, a list for several).

    Works on any node, in any process: without a prior ``init`` (a GAT worker, a forked executor)
    it connects with the settings it inherited or finds. ``getID()`` of the result equals the id.
    """
    if not identifiers:
        raise TypeError("getByID() needs an object id")
    if _context.peek() is None and _conf_path is not None:
        _use(_conf_path)
    client = _context.current()
    objects = [client.get_by_id(str(i)) for i in identifiers]
    return objects[0] if len(objects) == 1 else objects


class TaskContext:
    """Wraps each task on a worker. The store persists mutations itself, so this only logs.

    ``values`` are PyCOMPSs ``Parameter`` objects (their ``.content`` holds the id before the task
    and the object after it); ``__exit__`` is only called when the task succeeded.
    """

    def __init__(self, logger: Any, values: Any, config_file_path: str | None = None, **kwargs: Any) -> None:
        self.logger = logger or log
        self.values = values
        self.config_file_path = config_file_path

    def __enter__(self) -> TaskContext:
        self.logger.debug("storage task context entered (%d parameters)", len(self.values or ()))
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        if exc_type is not None:
            self.logger.error("task failed inside the storage context", exc_info=(exc_type, exc, tb))
        ids = []
        for value in self.values or ():
            get_id = getattr(getattr(value, "content", value), "getID", None)
            try:
                ids.append(get_id() if callable(get_id) else None)
            except TypeError:  # getID of a class, not of an object
                pass
        self.logger.debug("storage task context exited; persistent parameters: %s", [i for i in ids if i])


def make_persistent(obj: Any, identifier: str | None = None) -> str:
    """Store ``obj`` (a StorageObject) under ``identifier`` (default: a fresh id); return its id.

    As the COMPSs manual's ``makePersistent(id)``: the argument is the object's id (a UUID string
    here), so ``delete_persistent(o); make_persistent(o, old_id)`` stores ``o`` again under its id.
    """
    return _storage_object(obj, "make_persistent").make_persistent(identifier)


def delete_persistent(obj: Any) -> None:
    """Remove ``obj`` from the store; it stays usable as a transient object (``getID()`` is None).
    Deleting an object that is not persistent does nothing."""
    _storage_object(obj, "delete_persistent").delete_persistent()


def _storage_object(obj: Any, what: str) -> StorageObject:
    if not isinstance(obj, StorageObject):
        raise InvalidArguments(f"{what}() takes a StorageObject, not a {type(obj).__name__}")
    return obj


makePersistent = make_persistent
deletePersistent = delete_persistent
get_by_ID = getByID
init_worker = initWorker
finish_worker = finishWorker
task_context = TaskContext
