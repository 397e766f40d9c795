"""Shipped tasks: a function sent by reference runs on the backend, next to its persistent arguments.

``workflows.executor`` (the PyCOMPSs-compatible development executor) sends a task here when one of
its arguments is a persistent object this backend holds, or a result an earlier task left here.
Operations (registered in :data:`TASK_HANDLERS`, merged into the backend's handler table):

``("task", ref, paths, args, kwargs, writes, outputs, keep)``
    Import the function ``ref`` (see :func:`resolve`), run ``ref(*args, **kwargs)`` and answer
    ``[return value, *outputs]`` where ``outputs`` are paths into ``(args, kwargs)`` whose values
    after the call are results too (INOUT and COLLECTION_OUT/INOUT parameters). Persistent
    arguments arrive as the live object where this backend owns them (references unpickle that
    way) and as handles elsewhere. ``writes`` are the ids the task may mutate: each one this backend
    owns is write-locked for the call and durably saved after it (``commit_mutation``); the other
    owned persistent arguments are read-locked. With ``keep`` (a key), the answer stays here
    under that key and the reply is ``None``: later tasks name it with :class:`Remote`.
``("task_result", key, index)``
    A kept answer (``index``: a path of indices into it, or ``None`` for all of it).
``("task_drop", keys)``
    Forget kept answers.

Arguments may contain :class:`Remote` markers; they are replaced by the kept value, fetched from
the backend that keeps it when that is another one (once: the copy is cached here until the key is
dropped). :class:`Stash` markers carry a value and keep it here too, so the caller can name it
with a :class:`Remote` next time instead of sending it again. A ``ref`` is ``("module", name, qualname)`` or,
for functions of a script run as ``__main__``, ``("file", path, qualname)``: the file is imported
under a synthetic module name, so its ``if __name__ == "__main__":`` block does not run here.
``paths`` are directories the function's module needs on ``sys.path`` (the script's directory, the
executor's ``pycompss`` shim when the real one is absent).
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import sys
import threading
from typing import TYPE_CHECKING, Any

from .._object import ActiveObject, State
from .._serial import dumps
from ..errors import StoreError

if TYPE_CHECKING:
    from ._runtime import LocalBackend

_results: dict[str, list[Any]] = {}
_fetched: dict[str, list[Any]] = {}  # values fetched from other backends, by "key@index"
_results_lock = threading.Lock()
_import_lock = threading.RLock()


class Remote:
    """Marker for a value an earlier task kept on backend ``bid`` (``index``: a path into its answer)."""

    __slots__ = ("bid", "key", "index")

    def __init__(self, bid: str, key: str, index: tuple | None) -> None:
        self.bid, self.key, self.index = bid, key, index

    def __reduce__(self) -> Any:
        return (Remote, (self.bid, self.key, self.index))

    def __repr__(self) -> str:
        return f"<Remote {self.key}[{self.index}] on {self.bid}>"


class Stash:
    """Marker carrying a value the caller also wants kept here under ``key`` (for later :class:`Remote`)."""

    __slots__ = ("key", "value")

    def __init__(self, key: str, value: Any) -> None:
        self.key, self.value = key, value

    def __reduce__(self) -> Any:
        return (Stash, (self.key, self.value))


# ------------------------------------------------------------------ function references
def resolve(ref: tuple, paths: list[str] = ()) -> Any:  # type: ignore[assignment]
    """The callable a reference names (importing its module, or the script by path)."""
    kind, where, qualname = ref
    with _import_lock:
        for p in reversed(list(paths)):
            if p not in sys.path:
                sys.path.insert(0, p)
        if kind == "module":
            obj: Any = sys.modules.get(where) or importlib.import_module(where)
        elif kind == "file":
            obj = _import_file(where)
        else:
            raise StoreError(f"unknown function reference {ref!r}")
    for part in qualname.split("."):
        obj = getattr(obj, part)
    return obj


def _import_file(path: str) -> Any:
    name = "_sa_script_" + hashlib.sha1(path.encode()).hexdigest()[:12]
    module = sys.modules.get(name)
    if module is None:
        spec = importlib.util.spec_from_file_location(name, path)
        if spec is None or spec.loader is None:
            raise StoreError(f"cannot import the script {path}")
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        try:
            spec.loader.exec_module(module)
        except BaseException:
            del sys.modules[name]
            raise
    return module


# ------------------------------------------------------------------ values
def _substitute(value: Any, fetch: Any) -> Any:
    if isinstance(value, Remote):
        return fetch(value)
    if isinstance(value, Stash):
        with _results_lock:
            _results[value.key] = [value.value]
        return value.value
    if type(value) is list:
        return [_substitute(v, fetch) for v in value]
    if type(value) is tuple:
        return tuple(_substitute(v, fetch) for v in value)
    if type(value) is dict:
        return {k: _substitute(v, fetch) for k, v in value.items()}
    return value


def _kept(key: str, index: tuple | None) -> Any:
    with _results_lock:
        answer = _results.get(key)
    if answer is None:
        raise StoreError(f"no task result {key} on this backend")
    for step in index or ():
        answer = answer[step]
    return answer


def _fetcher(b: LocalBackend) -> Any:
    def fetch(r: Remote) -> Any:
        if r.bid == b.id:
            return _kept(r.key, r.index)
        cache_key = f"{r.key}@{r.index}"  # fetched once per backend, dropped with the key
        with _results_lock:
            cached = _fetched.get(cache_key)
        if cached is not None:
            return cached[0]
        value = b._peer()._send(r.bid, *dumps(("task_result", r.key, r.index)))
        with _results_lock:
            _fetched[cache_key] = [value]
        return value
    return fetch


def _at(args: list, kwargs: dict, path: tuple) -> Any:
    where: Any = args if isinstance(path[0], int) else kwargs
    for step in path:
        where = where[step]
    return where


def _owned(b: LocalBackend, value: Any, found: dict[str, ActiveObject]) -> None:
    if isinstance(value, ActiveObject):
        if value._sa_state is State.RESIDENT and value._sa_backend == b.id and value._sa_id:
            found[value._sa_id] = value
    elif type(value) in (list, tuple):
        for v in value:
            _owned(b, v, found)
    elif type(value) is dict:
        for v in value.values():
            _owned(b, v, found)


# ------------------------------------------------------------------ handlers
def _task(b: LocalBackend, msg: tuple, frame: Any) -> Any:
    _op, ref, paths, args, kwargs, writes, outputs, keep = msg
    func = resolve(ref, paths)
    fetch = _fetcher(b)
    args = list(_substitute(list(args), fetch))
    kwargs = _substitute(dict(kwargs), fetch)
    owned: dict[str, ActiveObject] = {}
    _owned(b, args, owned)
    _owned(b, kwargs, owned)
    writes = set(writes)
    locks = []
    try:
        for oid in sorted(owned):  # one global order: two tasks never wait for each other's locks
            entry = b.entry(oid)
            if oid in writes:
                entry.lock.acquire_write()
                locks.append((entry.lock.release_write, oid, True))
            else:
                entry.lock.acquire_read()
                locks.append((entry.lock.release_read, oid, False))
        result = func(*args, **kwargs)
        answer = [result, *(_at(args, kwargs, tuple(p)) for p in outputs)]
        for _release, oid, write in locks:
            if write:
                b.commit_mutation(oid)
    finally:
        for release, _oid, _write in reversed(locks):
            release()
    if keep is None:
        return answer
    with _results_lock:
        _results[keep] = answer
    return None


def _task_result(b: LocalBackend, msg: tuple, frame: Any) -> Any:
    _op, key, index = msg
    return _kept(key, index)


def _task_drop(b: LocalBackend, msg: tuple, frame: Any) -> int:
    _op, keys = msg
    with _results_lock:
        keys = set(keys)
        for cache_key in [c for c in _fetched if c.partition("@")[0] in keys]:
            del _fetched[cache_key]
        return sum(_results.pop(k, None) is not None for k in keys)


TASK_HANDLERS = {
    "task": (_task, 8),
    "task_result": (_task_result, 3),
    "task_drop": (_task_drop, 2),
}
