"""Shipped tasks: a function sent by reference runs on the backend, next to its persistent arguments.

The operations are :class:`~storage_api._messages.Task`, ``TaskResult`` and ``TaskDrop`` (their
semantics are documented in :mod:`storage_api._messages`); :data:`TASK_HANDLERS` joins the
backend's handler table. A client (the PyCOMPSs executor in ``workflows/``) sends a task here
when one of its arguments is a persistent object this backend holds, or a value an earlier task
left here. Answers kept for later tasks, and copies fetched from other backends, live in the
backend's :class:`TaskResults` until a ``TaskDrop`` names them.
"""

from __future__ import annotations

import importlib
import sys
import threading
import zlib
from typing import TYPE_CHECKING, Any, Callable

from .. import _messages as m
from .._object import ActiveObject, State, state_of
from .._serial import dump_state
from ..errors import StoreError

if TYPE_CHECKING:
    from ._runtime import LocalBackend

_import_lock = threading.RLock()


class TaskResults:
    """The answers tasks kept on this backend (by key) and the values fetched from other backends
    for tasks run here (by ``key@index``, so each is fetched once), until a ``TaskDrop``."""

    def __init__(self) -> None:
        self._kept: dict[str, list[Any]] = {}
        self._fetched: dict[str, list[Any]] = {}
        self._lock = threading.Lock()

    def keep(self, key: str, answer: list[Any]) -> None:
        with self._lock:
            self._kept[key] = answer

    def get(self, key: str, index: tuple | None) -> Any:
        with self._lock:
            answer = self._kept.get(key)
        if answer is None:
            raise StoreError(f"no task result {key} on this backend")
        for step in index or ():
            answer = answer[step]
        return answer

    def fetched(self, kept: m.Kept, fetch: Any) -> Any:
        """The value ``kept`` names on another backend: ``fetch(kept)`` the first time, then a copy."""
        cache_key = f"{kept.key}@{kept.index}"
        with self._lock:
            cached = self._fetched.get(cache_key)
        if cached is not None:
            return cached[0]
        value = fetch(kept)
        with self._lock:
            self._fetched[cache_key] = [value]
        return value

    def drop(self, keys: set[str]) -> int:
        """Forget kept answers and their fetched copies; return how many answers were kept."""
        with self._lock:
            for cache_key in [c for c in self._fetched if c.partition("@")[0] in keys]:
                del self._fetched[cache_key]
            return sum(self._kept.pop(k, None) is not None for k in keys)


class TaskLocks(threading.local):
    """The entries whose locks the code running in this thread holds (a shipped task, an active
    method): it may delete such an object (COMPSs' delete-then-persist-again idiom, a method that
    deletes its own object) without waiting for its own lock."""

    def __init__(self) -> None:
        self.entries: set[Any] = set()

    def holds(self, entry: Any) -> bool:
        return entry in self.entries

    def holding(self, entry: Any) -> _Holding:
        """``with task_locks.holding(entry):`` notes ``entry`` as held for the block (its caller
        holds the entry's lock). A plain class, not a generator: every call passes here."""
        return _Holding(self.entries, entry)


class _Holding:
    __slots__ = ("entries", "entry")

    def __init__(self, entries: set[Any], entry: Any) -> None:
        self.entries = entries
        self.entry = entry

    def __enter__(self) -> None:
        self.entries.add(self.entry)

    def __exit__(self, *exc: object) -> None:
        self.entries.discard(self.entry)


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
            obj = m.import_script(where)
        else:
            raise StoreError(f"unknown function reference {ref!r}")
    for part in qualname.split("."):
        obj = getattr(obj, part)
    return obj


# ------------------------------------------------------------------ values
def _rebuild(value: Any, leaf: Callable[[Any], Any]) -> Any:
    """``value`` with ``leaf`` applied to everything but the containers tasks pass (lists, tuples,
    dicts, numpy object arrays), which are rebuilt around the results."""
    if type(value) is list:
        return [_rebuild(v, leaf) for v in value]
    if type(value) is tuple:
        return tuple(_rebuild(v, leaf) for v in value)
    if type(value) is dict:
        return {k: _rebuild(v, leaf) for k, v in value.items()}
    if _is_object_array(value):
        out = value.copy()
        for cell in sys.modules["numpy"].ndindex(value.shape):
            out[cell] = _rebuild(value[cell], leaf)
        return out
    return leaf(value)


def _substitute(value: Any, b: LocalBackend) -> Any:
    """Arguments with every marker replaced by its value (stashed values kept here on the way)."""
    def leaf(v: Any) -> Any:
        if isinstance(v, m.Kept):
            if v.bid == b.id:
                return b.task_results.get(v.key, v.index)
            return b.task_results.fetched(v, lambda k: b.peer_client().send(k.bid, m.TaskResult(k.key, k.index)))
        if isinstance(v, m.Stash):
            b.task_results.keep(v.key, [v.value])
            return v.value
        return v

    return _rebuild(value, leaf)


def _is_object_array(value: Any) -> bool:
    """A numpy array of Python objects (dislib's grids of task results); numpy is not imported here:
    such an array exists only if the task's code or its arguments brought numpy in."""
    np = sys.modules.get("numpy")
    return np is not None and type(value) is np.ndarray and value.dtype == object


def _persistent(value: Any) -> dict[str, ActiveObject]:
    """The persistent objects in the arguments, by id: live ones held here, handles of others."""
    found: dict[str, ActiveObject] = {}

    def leaf(v: Any) -> Any:
        if isinstance(v, ActiveObject) and v._sa_id and v._sa_state in (State.RESIDENT, State.PROXY):
            found[v._sa_id] = v
        return v

    _rebuild(value, leaf)
    return found


def _gather(b: LocalBackend, args: list, kwargs: dict, writes: set[str]) -> tuple[list, dict]:
    """Move here the objects the task writes that other backends hold, and give the task them live.

    A task changes the live objects it holds, locked and saved after it; another backend's object
    reached through a handle would take assignments but silently drop in-place changes (an append,
    an item set: a handle's attribute reads are copies). The move happens once: the objects stay
    here."""
    away = [o for oid, o in _persistent((args, kwargs)).items() if oid in writes and o._sa_state is State.PROXY]
    if not away:
        return args, kwargs
    client = b.peer_client()
    for handle in away:
        client.move(handle, b.id)
    live = {h._sa_id: b.entry(h._sa_id).obj for h in away}

    def leaf(v: Any) -> Any:
        return live.get(v._sa_id, v) if isinstance(v, ActiveObject) else v

    return _rebuild(args, leaf), _rebuild(kwargs, leaf)


# ------------------------------------------------------------------ handlers
def _task(b: LocalBackend, msg: m.Task) -> Any:
    func = resolve(msg.ref, msg.paths)
    args = list(_substitute(list(msg.args), b))
    kwargs = _substitute(dict(msg.kwargs), b)
    writes = set(msg.writes)
    args, kwargs = _gather(b, args, kwargs, writes)
    owned = {oid: o for oid, o in _persistent((args, kwargs)).items()
             if o._sa_state is State.RESIDENT and o._sa_backend == b.id}
    locks = []
    held = b.task_locks.entries
    changed: list[Any] = []
    try:
        for oid in sorted(owned):  # one global order: two tasks never wait for each other's locks
            entry = b.entry(oid)
            if oid in writes:
                entry.lock.acquire_write()
                locks.append((entry.lock.release_write, entry, True))
            else:
                entry.lock.acquire_read()
                locks.append((entry.lock.release_read, entry, False))
            held.add(entry)
        read = {entry: _fingerprint(entry) for _release, entry, write in locks if not write}
        try:
            result = func(*args, **kwargs)
            answer = [result, *(m.value_at(args, kwargs, tuple(p)) for p in msg.outputs)]
        finally:  # what the task changed is saved even when it failed, as after an active method
            for _release, entry, write in locks:
                if write and not entry.deleted:  # one the task deleted (and maybe stored again) is written
                    b.commit_mutation(entry.oid)
            changed = [e for e, before in read.items() if not e.deleted and _changed(e, before)]
    finally:
        for release, entry, _write in reversed(locks):
            held.discard(entry)
            release()
        for entry in changed:  # each alone, once the task's locks are released: no lock order to break
            with entry.lock.writing():
                if not entry.deleted:
                    b.commit_mutation(entry.oid)
    if msg.keep is None:
        return answer
    b.task_results.keep(msg.keep, answer)
    return None


def _changed(entry: Any, before: tuple) -> bool:
    try:
        return _fingerprint(entry) != before
    except Exception:  # noqa: BLE001 - a state the task made unpicklable: saving it fails and undoes it
        return True


def _fingerprint(entry: Any) -> tuple:
    """What a change to an object's state alters: the state's pickle, and its large buffers by
    length and CRC-32 (a few GB/s), so that an in-place write into an array counts too.

    A task that changes a persistent object it was given ``IN`` (PyCOMPSs' default direction)
    changed the live object, which every later call sees: the change is made durable before the
    task's answer, never left visible and lost at the next crash."""
    body, buffers = dump_state(state_of(entry.obj), entry.cls._sa_class_path)
    return body, tuple((view.nbytes, zlib.crc32(view)) for view in buffers)


def _task_result(b: LocalBackend, msg: m.TaskResult) -> Any:
    return b.task_results.get(msg.key, msg.index)


def _task_drop(b: LocalBackend, msg: m.TaskDrop) -> int:
    return b.task_results.drop(set(msg.keys))


TASK_HANDLERS = {m.Task: _task, m.TaskResult: _task_result, m.TaskDrop: _task_drop}
