"""Imports announced: a backend tells its callers when it may fall silent, and when that is over.

Loading a large extension module (torch) holds the interpreter lock for seconds, tens on a busy
machine or a cold disk: no thread of the backend can answer pings meanwhile, and every caller
would give the live backend up after ``liveness_timeout`` (see :mod:`storage_api._rpc`). So the
first import of a module in the process, by any thread, is bracketed: when the first one starts
(no other running), :func:`watch`'s ``quiet`` callback is told the silence may last
:data:`IMPORT_QUIET` seconds, and told 0 when the last one ends. The server sends both to every
connection (``PONG`` frames carrying :data:`~storage_api._wire.QUIET`).

A meta path finder that finds nothing itself sees each import of a module not yet loaded; it asks
the finders after it for the module's spec and wraps the loader's ``create_module`` (where an
extension is loaded) and ``exec_module`` (where a module runs, importing others) on that loader
instance only: its type, and what other code sees of it, stay the same. Built-in and frozen
modules (class-level loaders) load at once and are left alone.
"""

from __future__ import annotations

import importlib.abc
import logging
import sys
import threading
from collections.abc import Callable
from functools import wraps
from typing import Any

log = logging.getLogger("storage.backend")

IMPORT_QUIET = 60.0  # seconds a caller waits without answers while a module loads

_lock = threading.Lock()
_running = 0  # outermost imports under way, in all threads
_depth = threading.local()  # per thread: how deep in wrapped loader calls it is


class _Announcer(importlib.abc.MetaPathFinder):
    def __init__(self, quiet: Callable[[float], None]) -> None:
        self.quiet = quiet

    def find_spec(self, fullname: str, path: Any = None, target: Any = None) -> Any:
        for finder in sys.meta_path:
            if finder is self or isinstance(finder, _Announcer) or not hasattr(finder, "find_spec"):
                continue
            spec = finder.find_spec(fullname, path, target)
            if spec is not None:
                _wrap(spec.loader, self.quiet)
                return spec
        return None


def loading() -> bool:
    """Whether a module is loading in this process now."""
    return _running > 0


def watch(quiet: Callable[[float], None]) -> None:
    """Announce this process's imports through ``quiet(seconds)`` (0: the silence is over)."""
    for finder in sys.meta_path:
        if isinstance(finder, _Announcer):
            finder.quiet = quiet
            return
    sys.meta_path.insert(0, _Announcer(quiet))


def _wrap(loader: Any, quiet: Callable[[float], None]) -> None:
    if loader is None or isinstance(loader, type) or not hasattr(loader, "__dict__"):
        return  # built-in, frozen (class-level loaders), or nothing to wrap
    for name in ("create_module", "exec_module"):
        method = getattr(loader, name, None)
        if method is not None and not getattr(method, "_sa_announced", False):
            setattr(loader, name, _bracketed(method, quiet))


def _bracketed(method: Callable[..., Any], quiet: Callable[[float], None]) -> Callable[..., Any]:
    @wraps(method)
    def call(*args: Any, **kwargs: Any) -> Any:
        _enter(quiet)
        try:
            return method(*args, **kwargs)
        finally:
            _leave(quiet)

    call._sa_announced = True  # type: ignore[attr-defined]
    return call


def _tell(quiet: Callable[[float], None], seconds: float) -> None:
    try:
        quiet(seconds)
    except Exception:  # never the import's failure
        log.exception("could not announce a module load")


def _enter(quiet: Callable[[float], None]) -> None:
    global _running
    depth = getattr(_depth, "n", 0)
    _depth.n = depth + 1
    if depth:
        return
    with _lock:
        _running += 1
        first = _running == 1
    if first:
        _tell(quiet, IMPORT_QUIET)


def _leave(quiet: Callable[[float], None]) -> None:
    global _running
    _depth.n -= 1
    if _depth.n:
        return
    with _lock:
        _running -= 1
        last = _running == 0
    if last:
        _tell(quiet, 0.0)
