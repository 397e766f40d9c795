"""The backend's operations: one named message type per operation, and their encoding.

A request to a backend is one of the types below. On the wire (the body of a ``REQUEST`` frame,
see :mod:`storage_api._wire`) it is the pickled tuple ``(op, *fields)``: the operation's name, then
its fields in declaration order. Out-of-band buffers of the fields (numpy arrays and the like) are
the frame's buffers. The backend's handler table (``storage_api._backend._handlers``) is keyed by
message type; each handler gets the decoded message and reads it by field.

**State blobs.** :class:`Persist`, :class:`Install` and :class:`ReplicaPut` carry an object's state
already serialized (a :class:`Blob`): the backend appends exactly those bytes to its log, without
unpickling and pickling them again, and large buffers of a :class:`Persist` are written to the log
while they arrive (``FLAG_STREAM``). The blob's body travels in place of the field, its buffers
are the frame's buffers, and the message's other fields travel in band (so the buffers belong to
the blob alone).

**Adding an operation** takes one type here (a ``NamedTuple`` with an ``op`` name; listed in
:data:`MESSAGES`) and one handler in the backend's table.

**Sending one**: ``Client.send(backend, message)`` (see :mod:`storage_api._client`), which returns
the handler's result or raises its exception (``wait=False``: a ``concurrent.futures.Future``).
Tools built on the store (the PyCOMPSs executor in ``workflows/``) use it with the task messages.

**Shipped tasks** (:class:`Task`, :class:`TaskResult`, :class:`TaskDrop`): a function sent by
reference runs on a backend, next to its persistent arguments. ``ref`` is ``("module", module,
qualname)`` or, for functions of a script run as ``__main__``, ``("file", path, qualname)`` (the
backend imports the file under a synthetic name, so its ``__main__`` block does not run);
``paths`` are directories the function's module needs on ``sys.path``. The task's arguments may
contain :class:`Kept` markers (a value an earlier task kept on a backend, fetched from there once
and cached until dropped) and :class:`Stash` markers (a value the caller sends and wants kept here
too). The answer is ``[return value, *outputs]``, ``outputs`` being paths into ``(args, kwargs)``
(see :func:`value_at`) whose values after the call are results too; with ``keep`` (a key) it stays
on the backend and the reply is ``None``. ``writes`` are the persistent objects the task may
mutate: the backend write-locks those it holds and saves them durably after the call; other
persistent arguments it holds are read-locked.
"""

from __future__ import annotations

import functools
import os
import pickle
import threading
from typing import Any, NamedTuple

from . import _wire
from ._serial import dumps
from .errors import StoreError


class Blob(NamedTuple):
    """A value serialized by :func:`storage_api._serial.dumps`: body and out-of-band buffers.

    ``streams`` (received only): the log sinks the backend's transport already wrote large
    buffers to while they arrived (see ``Store.open_stream``), or ``None``.
    """

    body: bytes
    buffers: list[Any]
    streams: list[Any] | None = None


# ------------------------------------------------------------------ objects
class Call(NamedTuple):
    """Run an active method. ``rid``: request id of a mutating call (a retry then runs it once)."""

    oid: str
    method: str
    args: tuple
    kwargs: dict
    rid: str | None
    op = "call"


class GetAttr(NamedTuple):
    oid: str
    name: str
    op = "getattr"


class SetAttr(NamedTuple):
    oid: str
    name: str
    value: Any
    op = "setattr"


class Persist(NamedTuple):
    """Store a new object whose state the client serialized (``alias`` claimed first)."""

    oid: str
    class_path: str
    alias: str | None
    state: Blob
    op = "persist"


class New(NamedTuple):
    """Construct a new object on the backend (a stub client's ``make_persistent``)."""

    oid: str
    class_path: str
    alias: str | None
    args: tuple
    kwargs: dict
    op = "new"


class Delete(NamedTuple):
    """Delete an object; with ``keep_state``, the reply is its last state (COMPSs keeps it on the object)."""

    oid: str
    keep_state: bool = False
    op = "delete"


class LoadClass(NamedTuple):
    """Import a class and publish its metadata; the reply is that metadata (for stubs)."""

    class_path: str
    op = "load_class"


# ------------------------------------------------------------------ placement
class Move(NamedTuple):
    """Make ``target`` the primary; with ``recursive``, referenced objects on this backend follow.
    The reply lists the ids moved."""

    oid: str
    target: str
    recursive: bool
    op = "move"


class Replicate(NamedTuple):
    oid: str
    target: str
    op = "replicate"


class Unreplicate(NamedTuple):
    oid: str
    target: str
    op = "unreplicate"


class Copy(NamedTuple):
    """A new, independent object ``new_id`` on ``target`` with the object's state (a new version)."""

    oid: str
    target: str
    new_id: str
    op = "copy"


class Install(NamedTuple):
    """Between backends: take a copy as ``role`` (``primary``, ``replica`` or ``copy``), with the
    primary's replica list and its remembered call results; ``register``: a new object (a copy)."""

    oid: str
    class_path: str
    alias: str | None
    role: str
    replicas: list
    state: Blob
    applied: list
    register: bool
    op = "install"


class ReplicaPut(NamedTuple):
    """Between backends: a primary's write, applied by a replica. ``result``: the call's result,
    pickled (``None`` when it cannot be), remembered under ``rid`` for retries after a failover.

    ``version`` names this state (the primary's id and its log's LSN for it). ``same`` lists
    ``(buffer index, slot)`` pairs: that buffer is the large buffer ``slot`` (counting large
    buffers only) of the version ``base``, unchanged, and travels empty; a replica that does not
    hold ``base`` unchanged refuses the write (``ReplicaBehind``) and gets the whole state."""

    oid: str
    state: Blob
    rid: str | None
    result: bytes | None
    version: tuple | None = None
    base: tuple | None = None
    same: tuple = ()
    op = "replica_put"


class ReplicaDrop(NamedTuple):
    oid: str
    op = "replica_drop"


# ------------------------------------------------------------------ backend
class Stats(NamedTuple):
    """The backend's counters, with ``traffic``: its frame bytes by kind of connection
    (``storage_api._transport.traffic()``)."""

    op = "stats"


class Ping(NamedTuple):
    op = "ping"


# ------------------------------------------------------------------ metadata
# What a client without Redis access reads through a backend (see storage_api._remote_metadata).
class MetaBackends(NamedTuple):
    """The registered backends (``BackendInfo`` records)."""

    op = "meta_backends"


class MetaObject(NamedTuple):
    """An object's ``ObjectRecord``."""

    oid: str
    op = "meta_object"


class MetaAlias(NamedTuple):
    """The id registered under an alias."""

    alias: str
    op = "meta_alias"


class MetaClass(NamedTuple):
    """A class's published metadata, or ``None``."""

    class_path: str
    op = "meta_class"


class MetaPromote(NamedTuple):
    """Fail over from the dead primary ``dead`` (``Metadata.promote``'s answer)."""

    oid: str
    dead: str
    op = "meta_promote"


class MetaRebuilding(NamedTuple):
    """Whether the backends are registering their objects again into a Redis that lost them."""

    op = "meta_rebuilding"


# ------------------------------------------------------------------ shipped tasks
class Task(NamedTuple):
    ref: tuple
    paths: list
    args: list
    kwargs: dict
    writes: list
    outputs: list
    keep: str | None
    op = "task"


def script_module(path: str) -> str:
    """The module name a backend imports the script of a ``("file", path, qualname)`` task
    reference under; the launcher gives its app the same name, so that values of the script's
    classes that come back from backends, errors included, are of the app's own classes. The
    name covers the file's content: a backend that imported an earlier version of the script (a
    previous run, before an edit) imports the new one afresh instead of running the old code."""
    try:
        st = os.stat(path)
    except OSError:
        return _script_name(path, None)  # the import that follows says what is wrong with the path
    return _script_name(path, (st.st_mtime_ns, st.st_size))


@functools.lru_cache(maxsize=64)
def _script_name(path: str, version: tuple | None) -> str:
    """The name for ``path`` at ``version`` (its mtime and size): its content is read once per
    version, not at every task that names the script."""
    import hashlib

    digest = hashlib.sha1(path.encode() + b"\0")
    if version is not None:
        try:
            with open(path, "rb") as fh:
                digest.update(fh.read())
        except OSError:
            pass
    return "_sa_script_" + digest.hexdigest()[:12]


_script_lock = threading.RLock()


def import_script(path: str) -> Any:
    """The app script at ``path`` as the module :func:`script_module` names, imported once per
    process (its ``__main__`` block does not run). Concurrent callers (a backend's task slots) wait
    for the one importing it instead of seeing the module half-run; a failed import leaves nothing."""
    import importlib.util
    import sys

    name = script_module(path)
    with _script_lock:
        module = sys.modules.get(name)
        if module is not None:
            return module
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


class TaskResult(NamedTuple):
    """A kept answer, or the value at ``index`` (a path of indices) in it."""

    key: str
    index: tuple | None
    op = "task_result"


class TaskDrop(NamedTuple):
    """Forget kept answers (and the copies fetched from other backends); the reply counts them."""

    keys: list
    op = "task_drop"


class Kept:
    """In a task's arguments: the value an earlier task kept on backend ``bid`` under ``key``
    (``index``: a path into its answer)."""

    __slots__ = ("bid", "key", "index")

    def __init__(self, bid: str, key: str, index: tuple | None) -> None:
        self.bid, self.key, self.index = bid, key, index

    def __reduce__(self) -> Any:
        return (Kept, (self.bid, self.key, self.index))

    def __repr__(self) -> str:
        return f"<Kept {self.key}[{self.index}] on {self.bid}>"


class Stash:
    """In a task's arguments: a value that the backend also keeps under ``key`` (the caller names it
    with a :class:`Kept` next time instead of sending it again)."""

    __slots__ = ("key", "value")

    def __init__(self, key: str, value: Any) -> None:
        self.key, self.value = key, value

    def __reduce__(self) -> Any:
        return (Stash, (self.key, self.value))


def value_at(args: list, kwargs: dict, path: tuple) -> Any:
    """The value at ``path`` in a call's arguments: a positional index or a keyword, then indices."""
    where: Any = args if isinstance(path[0], int) else kwargs
    for step in path:
        where = where[step]
    return where


# ------------------------------------------------------------------ encoding
Message = Any  # one of the NamedTuple types of MESSAGES

#: every operation, by the name that travels on the wire
MESSAGES: dict[str, type] = {cls.op: cls for cls in (  # type: ignore[attr-defined]
    Call, GetAttr, SetAttr, Persist, New, Delete, LoadClass,
    Move, Replicate, Unreplicate, Copy, Install, ReplicaPut, ReplicaDrop,
    Stats, Ping, MetaBackends, MetaObject, MetaAlias, MetaClass, MetaPromote, MetaRebuilding, Task, TaskResult,
    TaskDrop,
)}
# the field holding a Blob, per type that has one
_BLOB = {cls: cls._fields.index("state") for cls in MESSAGES.values() if "state" in cls._fields}
# op -> (type, length of the wire tuple, index of its Blob field or None): one lookup per request
_SPECS = {op: (cls, len(cls._fields) + 1, _BLOB.get(cls)) for op, cls in MESSAGES.items()}
_new = tuple.__new__  # builds a message from its fields without the NamedTuple's Python-level __new__


def encode(msg: Message) -> tuple[bytes, list[Any], int]:
    """The frame ``(body, buffers, flags)`` of a message."""
    i = _BLOB.get(type(msg))
    if i is None:
        body, buffers = dumps((msg.op,) + msg)
        return body, buffers, 0
    blob: Blob = msg[i]
    fields = (msg.op,) + msg[:i] + (blob.body,) + msg[i + 1:]
    flags = _wire.FLAG_STREAM if type(msg) is Persist else 0
    return pickle.dumps(fields, protocol=5), list(blob.buffers), flags


def decode(body: bytes, buffers: list[Any], streams: list[Any] | None = None) -> Message:
    """The message of a request frame. Raises what unpickling raises, or :class:`StoreError` for a
    request that is not ``(op, *fields)`` of a known operation."""
    raw = pickle.loads(body, buffers=buffers)
    try:  # the common case first: one lookup, no type checks ahead of it
        cls, size, i = _SPECS[raw[0]]
    except Exception:  # not subscriptable, empty, unhashable or unknown first element
        raise StoreError(_malformed(raw)) from None
    if len(raw) != size or not isinstance(raw, tuple):
        raise StoreError(_malformed(raw))
    if i is None:
        return _new(cls, raw[1:])
    fields = list(raw[1:])
    fields[i] = Blob(fields[i], buffers, streams)
    return _new(cls, fields)


def _malformed(raw: Any) -> str:
    if not isinstance(raw, tuple) or not raw or not isinstance(raw[0], str):
        return "malformed request"
    if raw[0] not in MESSAGES:
        return f"unknown operation {raw[0]!r}"
    return f"malformed {raw[0]!r} request"
