"""What runs a task away from the app: a local worker process (:func:`run`), or a backend (:func:`shipped`).

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
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from storage_api._messages import value_at

from ._errors import ReturnsMismatch, TaskError, TaskTimeout
from ._serial import dumps, script_attr


_started: Any = None  # where this worker reports each task it starts (see _pool)


def setup(started: Any = None, script: str | None = None) -> None:
    """Each worker's start: Ctrl-C in a terminal reaches the whole process group, but it is the
    launcher's to handle (it stops the workers); a worker would only print a traceback. (Workers
    are spawned with it ignored already; this covers one spawned later, from another thread.)
    The app ``script`` becomes the worker's ``__main__``, run when a task first needs it."""
    import signal
    import sys

    global _started
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    _started = started
    if script is not None:
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


def ready() -> bool:
    """A no-op the engine runs once per worker so that all of them are started up front."""
    return True


def _traffic_total() -> int:
    import sys

    transport = sys.modules.get("storage_api._transport")
    if transport is None:
        return 0
    return sum(s + r for s, r in transport.traffic().values())


def run(payload: bytes, keep_out: tuple[str, ...] = (), key: str = "", time_out: float | None = None) -> bytes:
    """Run task ``key``; return ``pickle((answer, bytes this worker exchanged with backends))``.

    Unpickling imports the task's function, as the app's process did: without the notices users
    cannot act on and without the packages the app kept out (``keep_out``, see :mod:`workflows.quiet`).
    Exceptions propagate: the pool carries them to the engine with their traceback. With
    ``time_out``, an alarm stops the task after that many seconds.
    """
    import os

    from workflows.quiet import quiet_import

    if _started is not None:
        _started.send((key, os.getpid()))
    before = _traffic_total()
    with quiet_import(hide=keep_out):
        func, args, kwargs, outputs, n_returns, name = pickle.loads(payload)
    try:
        with _alarm(time_out, name):
            result = declared(func(*args, **kwargs), n_returns, name)
    except Exception as exc:
        raise _sendable(exc) from None
    except BaseException as exc:  # sys.exit(), KeyboardInterrupt: the task failed, the app goes on
        raise _remote_error(exc) from None  # (out of compss_wait_on, SystemExit(0) ended the app with 0)
    answer = [result, *(value_at(args, kwargs, tuple(p)) for p in outputs)]
    return dumps((answer, _traffic_total() - before))


@contextmanager
def _alarm(seconds: float | None, task: str) -> Iterator[None]:
    """Raise :class:`TaskTimeout` in the task after ``seconds`` (PyCOMPSs' worker uses SIGALRM too)."""
    if not seconds:
        yield
        return
    import signal

    def expired(signum: int, frame: Any) -> None:
        raise TaskTimeout(f"task {task} ran past its time_out of {seconds:g} s")

    previous = signal.signal(signal.SIGALRM, expired)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def _sendable(exc: Exception) -> Exception:
    """``exc`` if the pool can carry it back, else a :class:`RemoteError` naming it. An exception
    that pickles but cannot be rebuilt (its ``__init__`` takes other arguments than its ``args``)
    broke the whole pool: every later local task of the run failed with BrokenProcessPool."""
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
