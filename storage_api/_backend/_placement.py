"""Where an object lives: move, copy, replicas and the primary's authority over them.

Consistency model (primary-backup, synchronous):

* Each object has one **primary** (``backend`` in its Redis record) and any number of
  **replicas**. Mutating calls and attribute writes run on the primary only. Before the reply
  leaves, the primary ships the object's new state to every replica, which applies it and writes
  it to its own log; a replica that fails to take it is removed from the record (atomically, in
  Redis) before the reply. So every backend listed as a replica holds every acknowledged write.
* Read-only methods (``@activemethod(readonly=True)``) and attribute reads may be served by any
  replica. Since writes reach the replicas before they are acknowledged, a read that starts after
  a write's reply sees that write, wherever it is served.
* State is shipped, not operations: replicas never re-run user code, so methods need not be
  deterministic. The price is one state transfer per write, proportional to what it changed: large
  buffers the write left as they were travel empty and the replica takes its own copies (see
  :meth:`replicate_write`).
* Mutating calls carry a request id. The primary remembers the ids (and results) of recent calls
  and ships them with the state, so a call retried after a failover or a move that had in fact
  been applied returns its first result instead of running twice.

Authority: a backend may act as primary while its heartbeat *lease* holds (the heartbeat key in
Redis cannot have expired, so no client can have promoted a replica). When the lease lapsed (the
process was frozen, Redis unreachable), it checks the object's record in Redis before serving, and
drops copies that another backend took over. A restarted backend does the same for every object
in its log before it serves, so an old primary never serves stale state.

What counts as "taken over": a record naming another primary that does not list this backend as
a replica, or a tombstone (the object was deleted). A *missing* record never does: Redis is an
index the backends rebuild, and a missing record means Redis lost it. The backend registers the
object again under its own role (a primary with its in-sync replicas); a replica whose object has
no record keeps its copy unregistered (an *orphan*, answering with a retryable error) until its
primary registers the object again and lists it, or names another primary.
"""

from __future__ import annotations

import logging
import pickle
import time
from collections import OrderedDict
from typing import TYPE_CHECKING, Any

from .. import _messages as m
from .._object import RESERVED_PREFIX, VOLATILE_PREFIX, ActiveObject, State, state_of
from .._serial import dumps, loads
from ..errors import CommunicationError, MetadataRebuilding, ObjectMoved, ObjectNotFound, StoreError
from ._dirty import plan
from ._store import BIG_BUFFER

if TYPE_CHECKING:
    from .._client import Client
    from ._runtime import Entry, LocalBackend

log = logging.getLogger("storage.backend")

APPLIED_KEPT = 1024  # request ids remembered per object (for exactly-once retries)
RESULT_KEPT_MAX = 64 << 10  # bytes: larger results are not kept with them (they travel on moves and replicas)


class NotPrimary(ObjectMoved):
    """This backend holds the object, but not as its primary: ask Redis where the primary is."""


def record_meta(entry: Entry) -> dict[str, Any]:
    """What the log records beside an entry's state: its class, alias and (if not primary) role."""
    meta: dict[str, Any] = {"class": entry.cls._sa_class_path, "alias": entry.alias}
    if entry.role != "primary":
        meta["role"] = entry.role
    return meta


class ReplicaBehind(StoreError):
    """A replica cannot apply a write that sends only what changed: it needs the whole state."""


class Failed:
    """The outcome of an applied call that raised (a retry raises the same error again)."""

    __slots__ = ("error",)

    def __init__(self, error: BaseException) -> None:
        self.error = error


class NotKept:
    """The outcome of an applied call whose result was too large to keep for a retry."""

    __slots__ = ("nbytes",)

    def __init__(self, nbytes: int) -> None:
        self.nbytes = nbytes

    def __reduce__(self) -> tuple:
        return NotKept, (self.nbytes,)

    def error(self) -> StoreError:
        return StoreError(f"this call was applied, but its result ({self.nbytes} bytes) was too large to keep for a "
                          f"retry (at most {RESULT_KEPT_MAX} bytes are): it is not run twice; read what it changed "
                          "with another call")


def keepable(outcome: Any) -> Any:
    """``outcome`` itself if it is small enough to keep for retries, else a :class:`NotKept`
    (measured without copying: large buffers are counted, not pickled)."""
    if outcome is None or isinstance(outcome, (bool, int, float, Failed)):
        return outcome
    # Mutating calls are a hot path: sized without pickling where the size is at hand.
    if isinstance(outcome, (str, bytes, bytearray)):
        nbytes = len(outcome)
    elif isinstance(getattr(outcome, "nbytes", None), int):  # numpy arrays, memoryviews
        nbytes = outcome.nbytes
    else:
        try:
            body, buffers = dumps(outcome)
        except Exception:  # its reply fails the same way: keep it as it is, as before
            return outcome
        nbytes = len(body) + sum(memoryview(b).nbytes for b in buffers)
    return outcome if nbytes <= RESULT_KEPT_MAX else NotKept(nbytes)


def remember(entry: Entry, rid: str | None, result: Any) -> None:
    if rid is None:
        return
    entry.applied[rid] = result
    while len(entry.applied) > APPLIED_KEPT:
        entry.applied.popitem(last=False)


def references(obj: ActiveObject, depth: int = 3) -> list[ActiveObject]:
    """Persistent objects referenced by ``obj``'s state (through lists, tuples, sets, dicts)."""
    found: list[ActiveObject] = []

    def walk(v: Any, d: int) -> None:
        if isinstance(v, ActiveObject):
            if v._sa_id is not None and v is not obj:
                found.append(v)
        elif d > 0 and isinstance(v, (list, tuple, set, frozenset)):
            for x in v:
                walk(x, d - 1)
        elif d > 0 and isinstance(v, dict):
            for x in v.values():
                walk(x, d - 1)

    for k, v in obj.__dict__.items():
        if not k.startswith((RESERVED_PREFIX, VOLATILE_PREFIX)):
            walk(v, depth)
    return found


class Placement:
    """The placement operations of :class:`~._runtime.LocalBackend` (a mixin)."""

    # ---------------------------------------------------------- authority
    def lease_ok(self: LocalBackend) -> bool:
        return time.monotonic() < self.lease_until

    def primary_entry(self: LocalBackend, oid: str) -> Entry:
        """The entry of an object this backend is the primary of, or :class:`NotPrimary`."""
        entry = self.entry(oid)
        self.check_primary(entry)
        return entry

    def check_primary(self: LocalBackend, entry: Entry) -> None:
        if entry.role != "primary" or not self.lease_ok():
            self.verify(entry)
            if entry.role != "primary":
                raise NotPrimary(f"backend {self.name} holds a replica of {entry.oid}, not its primary")

    def readable_entry(self: LocalBackend, oid: str) -> Entry:
        """The entry of an object this backend may serve reads of (primary or replica)."""
        entry = self.entry(oid)
        self.check_readable(entry)
        return entry

    def check_readable(self: LocalBackend, entry: Entry) -> None:
        if not self.lease_ok():
            self.verify(entry)

    def verify(self: LocalBackend, entry: Entry) -> None:
        """Align an entry's role with its Redis record; drop it if another backend took it over."""
        rec = self.meta.lookup(entry.oid)
        if rec is None:  # Redis lost it: register everything again (see the module's docstring)
            self.reregister()
            rec = self.meta.lookup(entry.oid)
        if rec is None:  # a replica whose primary has not registered the object again (yet)
            self.orphans.add(entry.oid)
            raise MetadataRebuilding(f"object {entry.oid} is not in Redis yet: its primary has not registered it again")
        if rec.backend == self.id:
            role = "primary"
            entry.replicas = [r for r in rec.replicas if r != self.id]
        else:
            role = "replica" if rec.backend and self.id in rec.replicas else "stale"
        self.orphans.discard(entry.oid)
        if role == "primary":
            entry.role = "primary"
            entry.obj.__dict__.update(_sa_state=State.RESIDENT, _sa_backend=self.id)
        elif role == "replica":
            entry.role, entry.replicas = "replica", []
            entry.obj.__dict__.update(_sa_state=State.REPLICA, _sa_backend=None)
        else:
            self.drop_local(entry.oid)
            raise ObjectMoved(f"object {entry.oid} is no longer on backend {self.name}")

    def apply_verdicts(self: LocalBackend, verdicts: dict[str, str]) -> None:
        """Act on the answers of a (re-)registration (see ``Metadata.register_objects``)."""
        for oid, verdict in verdicts.items():
            entry = self._entries.get(oid)
            if verdict == "orphan":
                self.orphans.add(oid)
                continue
            self.orphans.discard(oid)
            self.role_hints[oid] = verdict
            if verdict == "stale":
                log.warning("object %s was taken over by another backend or deleted: dropping this copy", oid)
                self.drop_local(oid)
            elif entry is not None:
                try:
                    self.verify(entry)
                except ObjectNotFound:
                    pass  # dropped meanwhile

    def drop_local(self: LocalBackend, oid: str) -> None:
        """Forget a copy without touching Redis (it belongs to another backend now)."""
        entry = self._entries.pop(oid, None)
        if entry is not None:
            entry.deleted = entry.moved = True
            entry.obj.__dict__["_sa_state"] = State.DELETED
        if oid in self.store:
            self.store.sync(self.store.delete(oid))

    # ---------------------------------------------------------- shipping
    def peer_client(self: LocalBackend) -> Client:
        """This process's client, through which the backend reaches other backends."""
        if self.peer is None:
            raise StoreError("this backend has no client to reach its peers")
        return self.peer

    def _ship(self: LocalBackend, target: str, entry: Entry, oid: str, role: str, replicas: list[str],
              register: bool) -> None:
        """Send an entry's current state to ``target`` to install as ``oid`` (caller holds a lock)."""
        state = m.Blob(*dumps(state_of(entry.obj)))
        applied = list(entry.applied.items()) if role != "copy" else []
        alias = None if register else entry.alias  # a new version is a new object: no alias
        self.peer_client().send(target, m.Install(oid, entry.cls._sa_class_path, alias, role, replicas, state,
                                                  applied, register))

    def replicate_write(self: LocalBackend, entry: Entry, state_body: bytes, buffers: list[Any],
                        rid: str | None, result: Any) -> None:
        """Apply a write to every replica before it is acknowledged (caller holds the write lock).

        Large buffers that the write left as they were (the log reused them, see _dirty) travel
        empty: a replica holding the version before takes them from its own copy. One that cannot
        (it restarted, joined since, or the copy was written there) refuses, and gets them all.
        """
        if not entry.replicas:
            return
        try:
            result_blob = pickle.dumps(result, protocol=5)
        except Exception:
            result_blob = None
        version = (self.id, entry.lsn)
        base, same = entry.same
        whole = m.ReplicaPut(entry.oid, m.Blob(state_body, buffers), rid, result_blob, version)
        msg = whole
        if same and base:
            slim = [b"" if i in same else b for i, b in enumerate(buffers)]
            msg = whole._replace(state=m.Blob(state_body, slim), base=(self.id, base), same=tuple(same.items()))
        peer = self.peer_client()
        pending = []
        for r in list(entry.replicas):
            try:
                pending.append((r, peer.send(r, msg, wait=False)))
            except Exception as exc:
                pending.append((r, exc))
        for r, fut in pending:
            try:
                if isinstance(fut, BaseException):
                    raise fut
                try:
                    fut.result()
                except ReplicaBehind:
                    peer.send(r, whole)
                except CommunicationError:  # perhaps only our connection, to a process that restarted:
                    peer.send(r, whole)  # a new one, the whole state (applying it twice is harmless)
            except Exception as exc:
                log.warning("replica %s of %s missed a write (%s): removing it", r, entry.oid, exc)
                self.meta.drop_replica(entry.oid, r)
                entry.replicas.remove(r)
                self._tell(r, m.ReplicaDrop(entry.oid))

    def _tell(self: LocalBackend, target: str, msg: m.Message) -> None:
        """Best effort: a peer that cannot be told will find out from Redis when it checks."""
        try:
            self.peer_client().send(target, msg, wait=False)
        except (CommunicationError, StoreError):
            pass

    # ------------------------------------------------------------ receive
    def install(self: LocalBackend, oid: str, path: str, alias: str | None, role: str, replicas: list[str],
                state_body: bytes, buffers: list[Any], applied: list, register: bool) -> None:
        """Take a copy shipped by another backend: a moved primary, a new replica or a new version."""
        cls = self.load_class(path)
        state = loads(state_body, buffers)
        existing = self._entries.get(oid)
        if existing is not None or oid in self.store:
            entry = self.entry(oid)
            if register:
                raise StoreError(f"object {oid} already exists")
            with entry.lock.writing():
                replace_state(entry.obj, state)
                entry.alias = alias
                self._set_role(entry, role, replicas)
                entry.applied = OrderedDict(applied)
                self.store.sync(self._save(entry))
            return
        obj = cls.__new__(cls)
        obj.__dict__.update(state)
        if register:
            self.adopt(obj, oid, alias)
            return
        entry = self.new_entry(obj, oid, alias, role)
        entry.replicas = [r for r in replicas if r != self.id]
        entry.applied = OrderedDict(applied)
        self.store.sync(self._save(entry))

    def replica_put(self: LocalBackend, oid: str, state_body: bytes, buffers: list[Any], rid: str | None,
                    result_blob: bytes | None, version: tuple | None = None, base: tuple | None = None,
                    same: tuple = ()) -> None:
        """Apply a primary's write (see :meth:`replicate_write`): the state as received is stored,
        pointing at the log's copies of the buffers that arrived empty."""
        entry = self.entry(oid)
        with entry.lock.writing():
            entry.check()
            if entry.role != "replica":
                raise StoreError(f"backend {self.name} is not a replica of {oid}")
            buffers = list(buffers)
            held = {k.slot: k.exporter() for k in entry.kept}
            if same and (base is None or base != entry.source
                         or any(not 0 <= i < len(buffers) or held.get(s) is None for i, s in same)):
                raise ReplicaBehind(f"backend {self.name} does not hold version {base} of {oid}")
            for i, s in same:
                buffers[i] = held[s]
            watch = self.watch_writes and entry.cls._sa_write_watch
            kept, entry.kept, entry.source = entry.kept, [], None
            reuse, now = plan(kept, buffers, BIG_BUFFER) if watch else ({}, [])
            if any(i not in reuse for i, _s in same):  # written here since it was stored
                raise ReplicaBehind(f"backend {self.name}: its copy of {oid} changed")
            state = loads(state_body, buffers)
            entry.lsn = self.store.put(oid, record_meta(entry), state_body, buffers, reuse=reuse, base=entry.lsn)
            replace_state(entry.obj, state)
            entry.kept, entry.source = now, version
            if rid is not None:
                remember(entry, rid, pickle.loads(result_blob) if result_blob is not None else None)
        self.store.sync(entry.lsn)

    def replica_drop(self: LocalBackend, oid: str) -> None:
        entry = self._entries.get(oid)
        if (entry is not None and entry.role == "replica") or (entry is None and oid in self.store):
            self.drop_local(oid)

    # ------------------------------------------------------------ actions
    def move(self: LocalBackend, oid: str, target: str, recursive: bool) -> list[str]:
        """Make ``target`` the primary (and drop this copy); return the ids moved."""
        entry = self.primary_entry(oid)
        if target == self.id:
            return []
        moved = [oid]
        with entry.lock.writing():
            entry.check()
            children = references(entry.obj) if recursive else []
            self._ship(target, entry, oid, "primary", [r for r in entry.replicas if r != target], False)
            if self.meta.move_primary(oid, self.id, target) < 0:
                raise StoreError(f"object {oid} changed primary during the move")
            self.drop_local(oid)  # waiting calls fail with ObjectMoved and find it on target
        for child in children:
            cid = child._sa_id
            if cid is not None and cid not in moved and child._sa_state is State.RESIDENT:
                try:
                    moved += self.move(cid, target, True)
                except ObjectNotFound:
                    pass  # deleted or moved meanwhile
        return moved

    def new_replica(self: LocalBackend, oid: str, target: str) -> None:
        entry = self.primary_entry(oid)
        if target == self.id or target in entry.replicas:
            return
        with entry.lock.writing():  # no write may slip between the copy and the listing
            entry.check()
            self._ship(target, entry, oid, "replica", [], False)
            if not self.meta.add_replica(oid, self.id, target):
                self._tell(target, m.ReplicaDrop(oid))
                raise StoreError(f"object {oid} changed primary while being replicated")
            entry.replicas.append(target)

    def drop_replica(self: LocalBackend, oid: str, target: str) -> None:
        entry = self.primary_entry(oid)
        with entry.lock.writing():
            self.meta.drop_replica(oid, target)
            if target in entry.replicas:
                entry.replicas.remove(target)
        self._tell(target, m.ReplicaDrop(oid))

    def copy(self: LocalBackend, oid: str, target: str, new_id: str) -> str:
        """A new, independent object with this one's class and current state (a new version)."""
        entry = self.readable_entry(oid)
        with entry.lock.reading():
            entry.check()
            if target == self.id:
                cls = entry.cls
                obj = cls.__new__(cls)
                obj.__dict__.update(loads(*dumps(state_of(entry.obj))))
                self.adopt(obj, new_id, None)
            else:
                self._ship(target, entry, new_id, "primary", [], True)
        return new_id


def replace_state(obj: ActiveObject, state: dict[str, Any]) -> None:
    d = obj.__dict__
    for k in [k for k in d if not k.startswith(RESERVED_PREFIX)]:
        del d[k]
    d.update(state)
