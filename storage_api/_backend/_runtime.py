"""The backend's object runtime: live objects, their locks, execution and durability.

Concurrency model: each object has a readers-writer lock. A mutating call (any active method not
declared ``readonly=True``, and every attribute write) holds it exclusively while it runs and while
the object's new state is appended to the log, so concurrent mutations never lose an update. Read-
only calls share it. Locks are taken per request: an active method calling another method of a
live object on the same backend calls it directly (no lock, no copy). A call chain that leaves the
backend and calls back into an object that is locked by an earlier link waits for that lock: do not
build call cycles across backends with mutating methods.

Durability: after a mutating call the object's state is written to the log and the reply waits for
it to be on disk (group commit). Replies of read-only calls also wait until the state they read is
on disk, so no reply ever depends on a write that a crash could undo. If a mutating method raises,
the state it left in memory is persisted all the same: memory and disk never disagree. If the new
state cannot be written (the disk is full, a value cannot be pickled), the object gets back its
last written state from the log before its lock is released, and the caller gets the error: a
call that did not become durable leaves no trace, and a retry runs it once.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
import time
from collections import OrderedDict
from contextlib import nullcontext
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from .._messages import ReplicaDrop
from .._metadata import Metadata
from .._object import RESERVED_PREFIX, ActiveObject, State, become_transient, import_class, state_of
from .._serial import dump_state, loads
from .._stub import describe_class
from ..errors import (ClassNotFound, InvalidArguments, MethodNotFound, ObjectExists, ObjectMoved, ObjectNotFound,
                      StoreError)
from ._dirty import Kept, address, plan
from ._placement import Failed, NotKept, Placement, keepable, record_meta, remember, replace_state
from ._rwlock import RWLock
from ._store import BIG_BUFFER, Store
from ._tasks import TaskLocks, TaskResults

if TYPE_CHECKING:
    from .._client import Client

log = logging.getLogger("storage.backend")


def cannot_import(backend: str, problem: object) -> ClassNotFound:
    """The error for something backend ``backend`` cannot import: it says where the backend looks,
    since that is what the user changes (the class's module is usually merely not on its path)."""
    return ClassNotFound(f"backend {backend}: {problem}; backends import model classes from the working directory "
                         f"and PYTHONPATH of the command that started them (such as `storage-api up`), here "
                         f"{os.getcwd()} and PYTHONPATH={os.environ.get('PYTHONPATH') or '(unset)'} (a client's "
                         f"path, `storage-api run --pythonpath` included, does not change it: start the backends "
                         f"again with the model's folder on PYTHONPATH)")


class Entry:
    __slots__ = ("oid", "obj", "cls", "alias", "lock", "lsn", "deleted", "moved", "role", "replicas", "applied",
                 "kept", "same", "source")

    def __init__(self, oid: str, obj: ActiveObject, alias: str | None, lsn: int, role: str = "primary") -> None:
        self.oid = oid
        self.obj = obj
        self.cls = type(obj)
        self.alias = alias
        self.lock = RWLock()
        self.lsn = lsn
        self.deleted = False
        self.moved = False  # deleted here because another backend holds it now
        self.role = role  # "primary" or "replica" (see _placement)
        self.replicas: list[str] = []  # on a primary: the backends that take its writes
        self.applied: OrderedDict[str, Any] = OrderedDict()  # request id -> result
        self.kept: list[Kept] = []  # the large buffers of the version at ``lsn`` (see _dirty)
        # The last write's unchanged large buffers: the version before it, {buffer index: slot}.
        self.same: tuple[int, dict[int, int]] = (0, {})
        self.source: tuple | None = None  # on a replica: the primary's name of the version held

    def check(self) -> None:
        """Raise if the object was deleted or moved away while the caller waited for its lock."""
        if self.moved:
            raise ObjectMoved(f"object {self.oid} moved away while the call waited for it")
        if self.deleted:
            raise ObjectNotFound(f"object {self.oid} was deleted")


def _big_places(buffers: list[Any]) -> list[tuple[int | None, int, int]]:
    """Where each buffer that the log stores in a DATA record lies (a read-only one: which object)."""
    views = [memoryview(b) for b in buffers]
    return [(address(v), id(v.obj) if v.readonly else 0, v.nbytes) for v in views if v.nbytes >= BIG_BUFFER]


def _invoke(func: Any, args: tuple, kwargs: dict, what: str) -> Any:
    try:
        return func(*args, **kwargs)
    except TypeError as exc:
        # Raised before the callee's first line: the arguments do not fit the signature.
        if exc.__traceback__ is not None and exc.__traceback__.tb_next is None:
            raise InvalidArguments(str(exc) if what.split("(")[0] in str(exc) else f"{what}: {exc}") from None
        raise


class LocalBackend(Placement):
    """The objects of one backend, live in memory, and what can be done to them."""

    def __init__(self, bid: str, name: str, store: Store, meta: Metadata, *,
                 defer_sync: Callable[[int], bool] = lambda lsn: False, watch_writes: bool = True) -> None:
        self.id = bid
        self.name = name
        self.store = store
        self.meta = meta
        self.peer: Client | None = None  # this process's client, to reach other backends
        self.lease_until = 0.0  # monotonic time until which no replica can have been promoted
        self.role_hints: dict[str, str] = {}  # roles Redis gave objects not yet loaded
        self.orphans: set[str] = set()  # replicas whose object Redis lost (see _placement)
        # Registers the backend and all its objects again if Redis lost them (the process sets it).
        self.reregister: Callable[[], None] = lambda: None
        self._entries: dict[str, Entry] = {}
        self._load_lock = threading.RLock()
        self._classes: dict[str, type[ActiveObject]] = {}
        self._class_lock = threading.Lock()
        self._imported: dict[type, float] = {}  # when each class was first loaded here
        self.task_results = TaskResults()  # answers of shipped tasks kept here (see _tasks)
        self.task_locks = TaskLocks()
        # Asked before a request blocks on durability: True if the server takes over the wait
        # (it then sends the reply once the LSN is on disk; see _server.defer_sync).
        self.defer_sync = defer_sync
        # Large buffers not written since they were stored are not stored again (see _dirty).
        self.watch_writes = watch_writes

    # ------------------------------------------------------------- classes
    def load_class(self, path: str) -> type[ActiveObject]:
        cls = self._classes.get(path)
        if cls is None:
            with self._class_lock:
                cls = self._classes.get(path)
                if cls is None:
                    try:
                        cls = import_class(path)
                    except ClassNotFound as exc:
                        raise cannot_import(self.name, exc) from exc
                    self.meta.publish_class(describe_class(cls))
                    self._classes[path] = cls
                    self._imported.setdefault(cls, time.time())
        return cls

    def _stale(self, cls: type[ActiveObject]) -> str:
        """A hint for an error about ``cls``: whether its source changed since it was imported here."""
        source = getattr(sys.modules.get(cls.__module__), "__file__", None)
        try:
            changed = source is not None and os.path.getmtime(source) > self._imported.get(cls, float("inf"))
        except OSError:
            changed = False
        if changed:
            return (f" on backend {self.name}, which imported it before {source} changed: a backend imports a "
                    f"class once, so restart the backends to run the new code (`storage-api down && storage-api up`)")
        return f" on backend {self.name} (a backend imports a class once: restart it after changing the class)"

    def class_metadata(self, path: str) -> dict[str, Any]:
        return describe_class(self.load_class(path))

    # ------------------------------------------------------------- objects
    def lookup(self, oid: str) -> ActiveObject | None:
        """The live object if this backend owns ``oid`` (loading it from the log on first use)."""
        entry = self._entries.get(oid)
        if entry is None:
            if oid not in self.store:
                return None
            entry = self._load(oid)
        return entry.obj if entry.role == "primary" else None

    def entry(self, oid: str) -> Entry:
        entry = self._entries.get(oid)
        if entry is None:
            if oid not in self.store:
                raise ObjectMoved(f"object {oid} is not on backend {self.name}")
            entry = self._load(oid)
        return entry

    def _load(self, oid: str) -> Entry:
        with self._load_lock:
            entry = self._entries.get(oid)
            if entry is not None:
                return entry
            try:
                meta, body, buffers = self.store.load(oid)
            except KeyError:  # moved away (or deleted) since the caller looked
                raise ObjectMoved(f"object {oid} is not on backend {self.name}") from None
            cls = self.load_class(meta["class"])
            obj = cls.__new__(cls)
            role = self.role_hints.pop(oid, None) or meta.get("role", "primary")
            entry = self.new_entry(obj, oid, meta.get("alias"), role)
            try:
                obj.__dict__.update(loads(body, buffers))
                if role == "primary":  # its replicas are in Redis only: they take its writes again
                    rec = self.meta.lookup(oid)
                    if rec is not None and rec.backend == self.id:
                        entry.replicas = [r for r in rec.replicas if r != self.id]
            except BaseException:
                del self._entries[oid]
                raise
            return entry

    def new_entry(self, obj: ActiveObject, oid: str, alias: str | None, role: str) -> Entry:
        """Register a live object in memory (before its state: references back to it resolve)."""
        entry = Entry(oid, obj, alias, 0)
        obj.__dict__["_sa_id"] = oid
        self._set_role(entry, role, [])
        self._entries[oid] = entry
        return entry

    def _set_role(self, entry: Entry, role: str, replicas: list[str]) -> None:
        entry.role = role
        entry.replicas = [r for r in replicas if r != self.id] if role == "primary" else []
        if role == "primary":
            entry.obj.__dict__.update(_sa_state=State.RESIDENT, _sa_backend=self.id)
        else:
            entry.obj.__dict__.update(_sa_state=State.REPLICA, _sa_backend=None)

    def adopt(self, obj: ActiveObject, oid: str, alias: str | None) -> None:
        """Make a transient object resident here (durably) and register it."""
        path = type(obj)._sa_class_path
        self.load_class(path)
        body, buffers = dump_state(state_of(obj), path)
        self._register_new(obj, oid, path, alias, body, buffers)

    def persist_state(self, oid: str, path: str, alias: str | None, body: bytes, buffers: list[Any],
                      streams: list[Any] | None = None) -> None:
        """A client made an object persistent here: its state arrives pickled (large buffers
        possibly already written to the log while they arrived: ``streams``)."""
        cls = self.load_class(path)
        obj = cls.__new__(cls)
        obj.__dict__.update(loads(body, buffers))
        self._register_new(obj, oid, path, alias, body, buffers, streams)

    def construct(self, oid: str, path: str, alias: str | None, args: tuple, kwargs: dict) -> None:
        """A stub client asked for a new object: run the constructor here."""
        cls = self.load_class(path)
        obj = _invoke(cls, args, kwargs, f"{cls.__name__}()")
        self.adopt(obj, oid, alias)

    def _register_new(self, obj: ActiveObject, oid: str, path: str, alias: str | None, body: bytes,
                      buffers: list[Any], streams: list[Any] | None = None) -> None:
        if oid in self._entries or oid in self.store:
            raise ObjectExists(f"object {oid} already exists (a live object has that id)")
        if alias:
            self.meta.claim_alias(alias, oid)
        lsn = 0
        try:
            kept = self._watch_new(obj, path, buffers, streams)
            lsn = self.store.put(oid, {"class": path, "alias": alias}, body, buffers, streams)
            entry = self.new_entry(obj, oid, alias, "primary")
            entry.lsn, entry.kept = lsn, kept
            self.store.sync(lsn)
            # a caller may name the id (COMPSs' makePersistent(id)): it may be a deleted object's
            # (reused), or a live object's elsewhere (refused)
            _, verdicts = self.meta.register_objects(self.id, [(oid, path, alias)], new=True)
            if verdicts.get(oid) != "primary":
                raise ObjectExists(f"object {oid} already exists (a live object has that id)")
        except BaseException:
            if self._entries.pop(oid, None) is not None:
                self.store.sync(self.store.delete(oid))
            if alias:
                self.meta.release_alias(alias, oid)
            raise

    def _watch_new(self, obj: ActiveObject, path: str, buffers: list[Any], streams: list[Any] | None) -> list[Kept]:
        """What the first write of a new object may reuse of the record about to store ``buffers``:
        its live state's large buffers, watched from now on, if they are those very buffers (a
        persisted state's arrays are views of the received buffers), else nothing."""
        if not (self.watch_writes and type(obj)._sa_write_watch):
            return []
        if any(st is not None and memoryview(b).nbytes < BIG_BUFFER for b, st in zip(buffers, streams or ())):
            return []  # a DATA record for a small buffer would shift the slots (see _dirty.plan)
        _body, live = dump_state(state_of(obj), path)
        if _big_places(live) != _big_places(buffers):
            return []
        return plan([], live, BIG_BUFFER)[1]

    def _save(self, entry: Entry) -> int:
        return self._save_state(entry)[0]

    def _save_state(self, entry: Entry) -> tuple[int, bytes, list[Any]]:
        """Write an entry's state to the log (caller holds its write lock); on failure, undo.

        A state that could not be written must not stay in memory, where reads would see it and
        the next successful write would make it durable: the entry gets back its last written
        state (read from the log) before the caller releases the lock, then the error goes on.

        Large buffers that are the same, unwritten, as in the version before point at its DATA
        records instead of being written again (what is kept is forgotten first: a failed write
        must not leave behind a claim that the log holds a buffer as it is now).
        """
        kept, entry.kept = entry.kept, []
        try:
            body, buffers = dump_state(state_of(entry.obj), entry.cls._sa_class_path)
            meta = record_meta(entry)
            # A replica's writes are planned where it learns what the primary left unchanged
            # (Placement.replica_put); a state installed whole here is watched from its next one.
            watch = self.watch_writes and entry.role == "primary" and entry.cls._sa_write_watch
            reuse, now = plan(kept, buffers, BIG_BUFFER) if watch else ({}, [])
            base, entry.same = entry.lsn, (0, {})
            entry.lsn = self.store.put(entry.oid, meta, body, buffers, reuse=reuse, base=base)
            entry.kept, entry.same = now, (base, reuse)
        except BaseException:
            self._restore(entry)
            raise
        return entry.lsn, body, buffers

    def _restore(self, entry: Entry) -> None:
        """Put back an entry's state as the log has it; forget the entry if even that fails."""
        try:
            _meta, body, buffers = self.store.load(entry.oid)
            state = loads(body, buffers)
        except Exception as exc:
            log.warning("object %s: no state to go back to in the log (%s): dropped from memory", entry.oid, exc)
            self._entries.pop(entry.oid, None)
            entry.deleted = entry.moved = True  # waiting calls retry and load it from the log
            return
        replace_state(entry.obj, state)

    # ----------------------------------------------------------- execution
    def call(self, oid: str, name: str, args: tuple, kwargs: dict, rid: str | None = None) -> Any:
        entry = self.entry(oid)
        spec = entry.cls._sa_methods.get(name)
        if spec is None:
            raise MethodNotFound(f"{entry.cls._sa_class_path} has no active method {name!r}{self._stale(entry.cls)}")
        func = getattr(entry.cls, name)
        what = f"{entry.cls.__name__}.{name}()"
        lock = entry.lock
        if spec.readonly:
            self.check_readable(entry)
            with lock.reading(), self.task_locks.holding(entry):
                entry.check()
                result = _invoke(func, (entry.obj, *args), kwargs, what)
            self._durable(entry.lsn)
            return result
        self.check_primary(entry)
        with lock.writing():
            entry.check()
            if rid is not None and rid in entry.applied:
                # A retry of a call that was applied: answer as the first time, do not run it twice.
                prior = entry.applied[rid]
                if isinstance(prior, Failed):
                    raise prior.error
                if isinstance(prior, NotKept):
                    raise prior.error()
                return prior
            outcome: Any = None
            lsn: int | None = None
            try:
                with self.task_locks.holding(entry):
                    outcome = result = _invoke(func, (entry.obj, *args), kwargs, what)
            except BaseException as exc:  # SystemExit too: a method's exit is its caller's error
                outcome = Failed(exc)
                raise
            finally:
                if not entry.deleted:  # a method that deleted its own object leaves nothing to write
                    lsn, body, buffers = self._save_state(entry)
                    outcome = keepable(outcome) if rid is not None else None
                    if rid is not None:
                        remember(entry, rid, outcome)
                    if entry.replicas:
                        self.replicate_write(entry, body, buffers, rid, outcome)
        if lsn is not None:
            self._durable(lsn)
        return result

    def commit_mutation(self, oid: str) -> None:
        """Persist an object that code other than an active method mutated in place (a shipped task).

        The caller holds the entry's write lock while mutating and calling this; returns once the
        new state is durable.
        """
        entry = self.primary_entry(oid)
        lsn, body, buffers = self._save_state(entry)
        self.replicate_write(entry, body, buffers, None, None)
        self._durable(lsn)

    def _durable(self, lsn: int) -> None:
        """Make the reply of the current request wait until ``lsn`` is on disk."""
        if not self.store.is_synced(lsn) and not self.defer_sync(lsn):
            self.store.sync(lsn)

    def get_attr(self, oid: str, name: str) -> Any:
        if name.startswith(RESERVED_PREFIX):
            raise AttributeError(name)
        entry = self.readable_entry(oid)
        with entry.lock.reading():
            entry.check()
            value = getattr(entry.obj, name)
        if getattr(value, "__self__", None) is entry.obj:
            # A method that is not active, asked for by a stub (a handle runs it on its own
            # class): its pickle names the object, which the stub would ask for again, forever.
            raise AttributeError(f"{type(entry.obj).__qualname__}.{name} is not an @activemethod: it runs only "
                                 "in a process that can import the class (a stub cannot call it)")
        self._durable(entry.lsn)
        return value

    def set_attr(self, oid: str, name: str, value: Any) -> None:
        if name.startswith(RESERVED_PREFIX):
            raise AttributeError(f"{name} is reserved")
        entry = self.primary_entry(oid)
        with entry.lock.writing():
            entry.check()
            setattr(entry.obj, name, value)
            lsn, body, buffers = self._save_state(entry)
            self.replicate_write(entry, body, buffers, None, None)
        self._durable(lsn)

    def delete(self, oid: str, state: bool = False) -> dict[str, Any] | None:
        """Delete an object; return its last state when ``state`` (for the caller to keep).

        The live object becomes a plain transient one (code here may still hold it, and may make
        it persistent again). A shipped task that holds the object's lock may delete it: the lock
        is not taken twice.
        """
        entry = self.primary_entry(oid)
        with nullcontext() if self.task_locks.holds(entry) else entry.lock.writing():
            entry.check()
            self.store.sync(self.store.delete(oid))
            entry.deleted = True
            self._entries.pop(oid, None)
            last = state_of(entry.obj) if state else None
            become_transient(entry.obj, None)
            replicas = tuple(entry.replicas)
        self.meta.unregister_object(self.id, oid, entry.alias, replicas)
        for r in replicas:
            self._tell(r, ReplicaDrop(oid))
        return last

    # -------------------------------------------------------------- misc
    def stats(self) -> dict[str, Any]:
        return {"id": self.id, "name": self.name, "loaded": len(self._entries), **self.store.stats()}

    def registration_records(self) -> list[tuple[str, str, str | None]]:
        return [(oid, m["class"], m.get("alias")) for oid, m in self.store.objects().items()]

    def roles(self) -> dict[str, str]:
        """Each object's role here: the live entry's, else the one its log record was written with."""
        roles = {oid: m.get("role", "primary") for oid, m in self.store.objects().items()}
        roles.update((oid, e.role) for oid, e in list(self._entries.items()) if oid in roles)
        return roles

    def replica_lists(self) -> dict[str, list[str]]:
        """The in-sync replicas of the objects this backend is the primary of (live entries only:
        a replica list is kept in memory and Redis, not in the log)."""
        return {oid: list(e.replicas) for oid, e in list(self._entries.items()) if e.role == "primary" and e.replicas}

    def publish_classes(self) -> None:
        """Publish the metadata of every class loaded so far (again, after Redis lost it)."""
        for cls in list(self._classes.values()):
            self.meta.publish_class(describe_class(cls))

