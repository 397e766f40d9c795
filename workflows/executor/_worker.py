"""What runs a task away from the app: a Dask worker (:func:`run`), or a backend (:func:`shipped`).

The function travels by reference (PyCOMPSs does the same): ``module.qualname`` of the ``@task``
wrapper, which there calls the function directly. Functions of the app script resolve because
a worker's ``__main__`` runs the script (as ``__mp_main__``: its ``__main__`` block does not run)
when a task first asks it for a name (:func:`setup`); a backend imports the script's file under a
synthetic name (:func:`._serial.script_attr`).

Either way the task's value is shaped by its declared returns (:func:`declared`) before anything
serializes it: PyCOMPSs' worker keeps only the values it declares.
"""

from __future__ import annotations

import itertools
import pickle
import types
from typing import Any

from storage_api._messages import value_at

from ._errors import ReturnsMismatch, TaskError
from ._serial import script_attr


class Ref:
    """Stands, in a task's pickled arguments, for element ``path`` of the ``index``-th value the
    worker receives beside the payload (a result another worker holds: Dask brings it, worker to
    worker)."""

    __slots__ = ("index", "path")

    def __init__(self, index: int, path: tuple = ()) -> None:
        self.index = index
        self.path = path

    def __reduce__(self) -> tuple:
        return (Ref, (self.index, self.path))


def setup(script: str | None = None) -> None:
    """Each worker's start: Ctrl-C in a terminal reaches the whole process group, but it is the
    launcher's to handle (it stops the workers); a worker would only print a traceback.
    The app ``script`` becomes the worker's ``__main__``, run when a task first needs it."""
    import signal
    import sys
    import threading

    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGINT, signal.SIG_IGN)
    if script is not None:  # afresh for each run: a worker of a running scheduler serves one run after another
        sys.modules["__main__"] = sys.modules["__mp_main__"] = _Script(script)


class _Script(types.ModuleType):
    """The app script in a worker, run (as ``__mp_main__``: its ``__main__`` block does not) the
    first time something asks it for a name, i.e. when a task of the script arrives. A worker that
    runs only tasks of other modules never runs the script's top-level code, as in PyCOMPSs."""

    def __init__(self, path: str) -> None:
        super().__init__("__mp_main__")
        self.__file__ = path

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__") or self.__dict__.get("_sa_ran"):
            raise AttributeError(f"module '__main__' has no attribute {name!r}")
        self.__dict__["_sa_ran"] = True
        with open(self.__file__) as fh:
            program = compile(fh.read(), self.__file__, "exec", dont_inherit=True)
        exec(program, self.__dict__)
        return getattr(self, name)


def warm(modules: list[str], keep_out: tuple[str, ...]) -> bool:
    """Import ``modules`` ahead of the tasks that need them (see :meth:`Engine.warm_up`)."""
    import importlib

    from workflows.quiet import quiet_import

    with quiet_import(hide=keep_out):
        for name in modules:
            importlib.import_module(name)
    return True


def _traffic_total() -> int:
    import sys

    transport = sys.modules.get("storage_api._transport")
    if transport is None:
        return 0
    return sum(s + r for s, r in transport.traffic().values())


def moved(dask_worker: Any = None) -> int:
    """Bytes this worker sent to other workers and exchanged with backends so far."""
    sent = getattr(dask_worker, "transfer_outgoing_bytes_total", 0) if dask_worker is not None else 0
    return sent + _traffic_total()


def run(payload: bytes, keep_out: tuple[str, ...], key: str, *inputs: Any) -> list:
    """Run task ``key``; its answer, ``[value, *outputs]``, which stays in this worker.

    Unpickling imports the task's function, as the app's process did: without the notices users
    cannot act on and without the packages the app kept out (``keep_out``, see :mod:`workflows.quiet`).
    ``inputs`` are the values the payload's :class:`Ref` placeholders stand for; the task gets
    copies of them, as a PyCOMPSs task gets its arguments deserialized (a task that writes one,
    INOUT, must not change it under another task that reads the same version). Exceptions
    propagate (Dask carries them to the engine with their traceback); ``sys.exit()`` and other
    ``BaseException`` fail the task, not the worker.
    """
    import os
    import socket

    from distributed import get_worker

    from workflows.quiet import quiet_import

    from ._dask import TOPIC
    from ._structure import rebuild

    worker = get_worker()
    worker.log_event(TOPIC, (key, os.getpid(), worker.address, socket.gethostname()))
    with quiet_import(hide=keep_out):
        func, args, kwargs, outputs, n_returns, name = pickle.loads(payload)
    if inputs:
        def resolve(v: Any) -> Any:  # a copy: Dask hands every task on this worker the same object
            return _copy(element(inputs[v.index], v.path)) if isinstance(v, Ref) else v

        args, kwargs = rebuild(args, resolve), rebuild(kwargs, resolve)
    try:
        result = declared(func(*args, **kwargs), n_returns, name)
    except Exception as exc:
        raise _sendable(exc) from None
    except BaseException as exc:  # sys.exit(), KeyboardInterrupt: the task failed, the app goes on
        raise _remote_error(exc) from None  # (out of compss_wait_on, SystemExit(0) ended the app with 0)
    return [result, *(value_at(args, kwargs, tuple(p)) for p in outputs)]


def _copy(value: Any) -> Any:
    try:
        return pickle.loads(pickle.dumps(value, protocol=5))
    except Exception:  # noqa: BLE001 - what pickle refuses (a lambda inside, say)
        import copy

        return copy.deepcopy(value)


KEEP = ("module", "workflows.executor._worker", "keep")  # what a backend runs to keep a value it is sent


def keep(*values: Any) -> None:
    """Nothing: the backend keeps the :class:`~storage_api._messages.Stash` values it was sent."""


def stash(value: Any, path: tuple, key: str, bid: str, config: str | None) -> bool:
    """On a worker holding ``value``: send element ``path`` of it to backend ``bid``, which keeps it
    under ``key`` for the task that reads it there, so that the value goes from this worker to the
    backend, not through the app's process. The worker reaches the store with its own
    configuration: the one it was started with, else the file ``config`` the app's process uses
    (a path only: no secret travels with the task)."""
    import os

    from storage_api import _messages as m
    from storage_api._context import current, peek

    if peek() is None and not os.environ.get("STORAGE_API_CONFIG") and config and os.path.isfile(config):
        os.environ["STORAGE_API_CONFIG"] = config
    current().send(bid, m.Task(KEEP, [], [m.Stash(key, element(value, path))], {}, [], [], None))
    return True


def element(answer: list, path: tuple) -> Any:
    """Element ``path`` of a task's answer (made where the answer is, so that only it moves on)."""
    for i in path:
        answer = answer[i]
    return answer


def _sendable(exc: Exception) -> Exception:
    """``exc`` if it can be carried back, else a :class:`RemoteError` naming it (an exception that
    pickles but cannot be rebuilt, as its ``__init__`` takes other arguments than its ``args``)."""
    try:
        pickle.loads(pickle.dumps(exc))
        return exc
    except Exception:
        return _remote_error(exc)


def _remote_error(exc: BaseException) -> Exception:
    """A :class:`RemoteError` naming ``exc``'s type, with its traceback (what a backend gives)."""
    import traceback

    from storage_api.errors import RemoteError

    kind = type(exc)
    module = "__main__" if kind.__module__ == "__mp_main__" else kind.__module__  # the app, as its author knows it
    tb = "".join(traceback.format_exception(kind, exc, exc.__traceback__))
    return RemoteError(f"{module}.{kind.__qualname__}", str(exc), tb)


def declared(value: Any, n: int, task: str) -> Any:
    """A task's ``value`` as its ``n`` declared returns keep it: nothing for none (a generator, a
    lock... is never serialized), the value itself for one, else its first ``n`` items (PyCOMPSs'
    worker zips the value with its return parameters, so extra items are dropped there too)."""
    if n == 0:
        return None
    if n == 1:
        return value
    if type(value) is tuple and len(value) == n:
        return value
    try:
        items = tuple(itertools.islice(iter(value), n))
    except TypeError:
        raise ReturnsMismatch(f"task {task} declared {n} returns, got one value of type "
                              f"{type(value).__name__}") from None
    if len(items) < n:
        raise ReturnsMismatch(f"task {task} declared {n} returns, got {len(items)} "
                              f"(a {type(value).__name__} of length {len(items)})")
    return items


def shipped(how: tuple, /, *args: Any, **kwargs: Any) -> Any:
    """What a backend runs for a task (the function of its ``Task`` message): ``how`` is
    ``(reference of the task's function, declared returns, task name)``; the reference is
    ``("module", module, qualname)`` or ``("file", script path, qualname)``."""
    (kind, where, qualname), n_returns, name = how
    func = script_attr(where, qualname, name) if kind == "file" else _module_attr(where, qualname, name)
    return declared(func(*args, **kwargs), n_returns, name)


def _own_path() -> list[str]:
    """This process's import path without Python's own directories."""
    import sys

    return [p for p in sys.path if p and "-packages" not in p and not p.startswith((sys.base_prefix, sys.prefix))]


def _module_attr(module: str, qualname: str, task: str) -> Any:
    import importlib
    import os

    try:
        obj: Any = importlib.import_module(module)
    except ImportError as exc:  # a module on the app's PYTHONPATH only: local workers have it, backends not
        raise TaskError(f"task {task} runs on a backend (pid {os.getpid()}), which cannot import {module}: {exc}; "
                        f"its path is the deployment's PYTHONPATH and the directories `storage-api run "
                        f"--pythonpath` gives, here {os.pathsep.join(_own_path())}") from exc
    for part in qualname.split("."):
        obj = getattr(obj, part)
    return obj
