"""The backend's operations, one handler each, dispatched through :data:`HANDLERS`.

A request body unpickles to ``(op, *params)``; the handler returns the value to send back, or
raises, and the exception travels to the caller with its traceback.
"""

from __future__ import annotations

import pickle
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from .. import _wire
from .._serial import dump_error, dumps
from ..errors import ClassNotFound, InvalidArguments, StoreError

from ._tasks import TASK_HANDLERS

if TYPE_CHECKING:
    from ._runtime import LocalBackend

Handler = Callable[["LocalBackend", tuple, "Frame"], Any]


class Frame:
    """What a handler may need besides the message: the frame's buffers and their log streams."""

    __slots__ = ("buffers", "streams")

    def __init__(self, buffers: list, streams: list | None = None) -> None:
        self.buffers = buffers
        self.streams = streams


def _call(b: LocalBackend, msg: tuple, frame: Frame) -> Any:
    _op, oid, name, args, kwargs, rid = msg
    return b.call(oid, name, args, kwargs, rid)


def _getattr(b: LocalBackend, msg: tuple, frame: Frame) -> Any:
    _op, oid, name = msg
    return b.get_attr(oid, name)


def _setattr(b: LocalBackend, msg: tuple, frame: Frame) -> None:
    _op, oid, name, value = msg
    b.set_attr(oid, name, value)


def _persist(b: LocalBackend, msg: tuple, frame: Frame) -> None:
    _op, oid, path, alias, state_body = msg
    b.persist_state(oid, path, alias, state_body, frame.buffers, frame.streams)


def _new(b: LocalBackend, msg: tuple, frame: Frame) -> None:
    _op, oid, path, alias, args, kwargs = msg
    b.construct(oid, path, alias, args, kwargs)


def _delete(b: LocalBackend, msg: tuple, frame: Frame) -> None:
    _op, oid = msg
    b.delete(oid)


def _load_class(b: LocalBackend, msg: tuple, frame: Frame) -> dict:
    _op, path = msg
    return b.class_metadata(path)


# ---------------------------------------------------------------- placement (see _placement)
def _move(b: LocalBackend, msg: tuple, frame: Frame) -> list[str]:
    _op, oid, target, recursive = msg
    return b.move(oid, target, bool(recursive))


def _replicate(b: LocalBackend, msg: tuple, frame: Frame) -> None:
    _op, oid, target = msg
    b.new_replica(oid, target)


def _unreplicate(b: LocalBackend, msg: tuple, frame: Frame) -> None:
    _op, oid, target = msg
    b.drop_replica(oid, target)


def _copy(b: LocalBackend, msg: tuple, frame: Frame) -> str:
    _op, oid, target, new_id = msg
    return b.copy(oid, target, new_id)


def _install(b: LocalBackend, msg: tuple, frame: Frame) -> None:
    _op, oid, path, alias, role, replicas, state_body, applied, register = msg
    b.install(oid, path, alias, role, list(replicas), state_body, frame.buffers, list(applied), bool(register))


def _replica_put(b: LocalBackend, msg: tuple, frame: Frame) -> None:
    _op, oid, state_body, rid, result_blob = msg
    b.replica_put(oid, state_body, frame.buffers, rid, result_blob)


def _replica_drop(b: LocalBackend, msg: tuple, frame: Frame) -> None:
    _op, oid = msg
    b.replica_drop(oid)


def _stats(b: LocalBackend, msg: tuple, frame: Frame) -> dict:
    from .._transport import traffic

    return {**b.stats(), "traffic": traffic()}


def _ping(b: LocalBackend, msg: tuple, frame: Frame) -> str:
    return "pong"


# ---------------------------------------------- metadata, for clients without Redis (_remote_metadata)
def _meta_backends(b: LocalBackend, msg: tuple, frame: Frame) -> list:
    return b.meta.backends()


def _meta_object(b: LocalBackend, msg: tuple, frame: Frame) -> Any:
    _op, oid = msg
    return b.meta.object(_text(oid))


def _meta_alias(b: LocalBackend, msg: tuple, frame: Frame) -> str:
    _op, alias = msg
    return b.meta.alias(_text(alias))


def _meta_class(b: LocalBackend, msg: tuple, frame: Frame) -> dict | None:
    _op, path = msg
    return b.meta.class_meta(_text(path))


def _meta_promote(b: LocalBackend, msg: tuple, frame: Frame) -> str:
    _op, oid, dead = msg
    return b.meta.promote(_text(oid), _text(dead))


def _text(value: Any) -> str:
    if not isinstance(value, str):
        raise InvalidArguments(f"expected a string, got {type(value).__name__}")
    return value


#: operation -> (handler, number of elements in the request tuple)
HANDLERS: dict[str, tuple[Handler, int]] = {
    "call": (_call, 6),
    "getattr": (_getattr, 3),
    "setattr": (_setattr, 4),
    "persist": (_persist, 5),
    "new": (_new, 6),
    "delete": (_delete, 2),
    "load_class": (_load_class, 2),
    "move": (_move, 4),
    "replicate": (_replicate, 3),
    "unreplicate": (_unreplicate, 3),
    "copy": (_copy, 4),
    "install": (_install, 9),
    "replica_put": (_replica_put, 5),
    "replica_drop": (_replica_drop, 2),
    "stats": (_stats, 1),
    "ping": (_ping, 1),
    "meta_backends": (_meta_backends, 1),
    "meta_object": (_meta_object, 2),
    "meta_alias": (_meta_alias, 2),
    "meta_class": (_meta_class, 2),
    "meta_promote": (_meta_promote, 3),
    **TASK_HANDLERS,  # shipped PyCOMPSs tasks (workflows.executor): see _tasks
}


def _decode(body: bytes, buffers: list) -> tuple:
    try:
        msg = pickle.loads(body, buffers=buffers)
    except (ModuleNotFoundError, AttributeError) as exc:
        raise ClassNotFound(f"the request names something this backend cannot import: {exc}") from exc
    except StoreError:
        raise
    except Exception as exc:
        raise StoreError(f"undecodable request: {type(exc).__name__}: {exc}") from exc
    if not isinstance(msg, tuple) or not msg or not isinstance(msg[0], str):
        raise StoreError("malformed request")
    return msg


def dispatch(backend: LocalBackend, body: bytes, buffers: list, streams: list | None = None) -> tuple[int, bytes, list[Any]]:
    """Serve one request; return the reply frame's ``(kind, body, buffers)``."""
    try:
        msg = _decode(body, buffers)
        entry = HANDLERS.get(msg[0])
        if entry is None:
            raise StoreError(f"unknown operation {msg[0]!r}")
        handler, arity = entry
        if len(msg) != arity:
            raise StoreError(f"malformed {msg[0]!r} request")
        result = handler(backend, msg, Frame(buffers, streams))
        try:
            rbody, rbuffers = dumps(result)
        except Exception as exc:
            raise StoreError(f"the result ({type(result).__name__}) cannot be serialized: {exc}") from exc
        return _wire.REPLY, rbody, rbuffers
    except Exception as exc:
        return _wire.ERROR, dump_error(exc), []
