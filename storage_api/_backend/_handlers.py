"""The backend's operations, one handler each, dispatched through :data:`HANDLERS`.

A request decodes to one of the message types of :mod:`storage_api._messages`; the handler of its
type gets the backend runtime and the message, and returns the value to send back, or raises, and
the exception travels to the caller with its traceback. Adding an operation: a message type there,
a handler here (or in the module of its feature, as :mod:`._tasks` does).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from .. import _messages as m
from .. import _wire
from .._serial import dump_error, dumps
from ..errors import InvalidArguments, StoreError
from ._runtime import cannot_import
from ._tasks import TASK_HANDLERS

if TYPE_CHECKING:
    from ._runtime import LocalBackend

Handler = Callable[["LocalBackend", Any], Any]


def _call(b: LocalBackend, msg: m.Call) -> Any:
    return b.call(msg.oid, msg.method, msg.args, msg.kwargs, msg.rid)


def _getattr(b: LocalBackend, msg: m.GetAttr) -> Any:
    return b.get_attr(msg.oid, msg.name)


def _setattr(b: LocalBackend, msg: m.SetAttr) -> None:
    b.set_attr(msg.oid, msg.name, msg.value)


def _persist(b: LocalBackend, msg: m.Persist) -> None:
    state = msg.state
    b.persist_state(msg.oid, msg.class_path, msg.alias, state.body, state.buffers, state.streams)


def _new(b: LocalBackend, msg: m.New) -> None:
    b.construct(msg.oid, msg.class_path, msg.alias, msg.args, msg.kwargs)


def _delete(b: LocalBackend, msg: m.Delete) -> dict[str, Any] | None:
    return b.delete(msg.oid, msg.keep_state)


def _load_class(b: LocalBackend, msg: m.LoadClass) -> dict:
    return b.class_metadata(msg.class_path)


# ---------------------------------------------------------------- placement (see _placement)
def _move(b: LocalBackend, msg: m.Move) -> list[str]:
    return b.move(msg.oid, msg.target, bool(msg.recursive))


def _replicate(b: LocalBackend, msg: m.Replicate) -> None:
    b.new_replica(msg.oid, msg.target)


def _unreplicate(b: LocalBackend, msg: m.Unreplicate) -> None:
    b.drop_replica(msg.oid, msg.target)


def _copy(b: LocalBackend, msg: m.Copy) -> str:
    return b.copy(msg.oid, msg.target, msg.new_id)


def _install(b: LocalBackend, msg: m.Install) -> None:
    b.install(msg.oid, msg.class_path, msg.alias, msg.role, list(msg.replicas), msg.state.body, msg.state.buffers,
              list(msg.applied), bool(msg.register))


def _replica_put(b: LocalBackend, msg: m.ReplicaPut) -> None:
    b.replica_put(msg.oid, msg.state.body, msg.state.buffers, msg.rid, msg.result, msg.version, msg.base,
                  tuple(msg.same))


def _replica_drop(b: LocalBackend, msg: m.ReplicaDrop) -> None:
    b.replica_drop(msg.oid)


def _stats(b: LocalBackend, msg: m.Stats) -> dict:
    from .._transport import traffic

    return {**b.stats(), "traffic": traffic()}


def _ping(b: LocalBackend, msg: m.Ping) -> str:
    return "pong"


# ---------------------------------------------- metadata, for clients without Redis (_remote_metadata)
def _meta_backends(b: LocalBackend, msg: m.MetaBackends) -> list:
    return b.meta.backends()


def _meta_object(b: LocalBackend, msg: m.MetaObject) -> Any:
    return b.meta.object(_text(msg.oid))


def _meta_alias(b: LocalBackend, msg: m.MetaAlias) -> str:
    return b.meta.alias(_text(msg.alias))


def _meta_class(b: LocalBackend, msg: m.MetaClass) -> dict | None:
    return b.meta.class_meta(_text(msg.class_path))


def _meta_promote(b: LocalBackend, msg: m.MetaPromote) -> str:
    return b.meta.promote(_text(msg.oid), _text(msg.dead))


def _meta_rebuilding(b: LocalBackend, msg: m.MetaRebuilding) -> bool:
    return b.meta.rebuilding()


def _text(value: Any) -> str:
    if not isinstance(value, str):
        raise InvalidArguments(f"expected a string, got {type(value).__name__}")
    return value


#: message type -> handler
HANDLERS: dict[type, Handler] = {
    m.Call: _call,
    m.GetAttr: _getattr,
    m.SetAttr: _setattr,
    m.Persist: _persist,
    m.New: _new,
    m.Delete: _delete,
    m.LoadClass: _load_class,
    m.Move: _move,
    m.Replicate: _replicate,
    m.Unreplicate: _unreplicate,
    m.Copy: _copy,
    m.Install: _install,
    m.ReplicaPut: _replica_put,
    m.ReplicaDrop: _replica_drop,
    m.Stats: _stats,
    m.Ping: _ping,
    m.MetaBackends: _meta_backends,
    m.MetaObject: _meta_object,
    m.MetaAlias: _meta_alias,
    m.MetaClass: _meta_class,
    m.MetaPromote: _meta_promote,
    m.MetaRebuilding: _meta_rebuilding,
    **TASK_HANDLERS,  # shipped tasks: see _tasks
}


def _decode(backend: LocalBackend, body: bytes, buffers: list, streams: list | None) -> Any:
    try:
        return m.decode(body, buffers, streams)
    except (ModuleNotFoundError, AttributeError) as exc:
        raise cannot_import(backend.name, f"the request names something it cannot import: {exc}") from exc
    except StoreError:
        raise
    except Exception as exc:
        raise StoreError(f"undecodable request: {type(exc).__name__}: {exc}") from exc


def dispatch(backend: LocalBackend, body: bytes, buffers: list, streams: list | None = None) -> tuple[int, bytes, list[Any]]:
    """Serve one request; return the reply frame's ``(kind, body, buffers)``."""
    try:
        try:
            msg = _decode(backend, body, buffers, streams)
            handler = HANDLERS.get(type(msg))
            if handler is None:  # a message type without a handler on this backend
                raise StoreError(f"unknown operation {msg.op!r}")
            result = handler(backend, msg)
        finally:
            for stream in streams or ():  # a stream the handler did not store pins log space
                if stream is not None:
                    stream.release()
        try:
            rbody, rbuffers = dumps(result)
        except Exception as exc:
            raise StoreError(f"the result ({type(result).__name__}) cannot be serialized: {exc}") from exc
        _wire.check_payload(len(rbody), rbuffers)
        return _wire.REPLY, rbody, rbuffers
    except BaseException as exc:  # SystemExit, KeyboardInterrupt raised by user code: the caller's error
        return _wire.ERROR, dump_error(exc), []
