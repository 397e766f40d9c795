"""The client runtime: locating objects, talking to their backends, building handles.

A :class:`Client` is the process's runtime (see :mod:`storage_api._context`). Backends run one too
(``storage_api._backend._peer.PeerClient``, which serves requests to its own backend in process
through the hooks ``_live``, ``_persist_at``, ``_delete``, ``_default_backend``, ``_read_from`` and
``_channel``), so objects on one backend can call objects on another. Every operation is written
once: it builds a message (:mod:`storage_api._messages`) and hands it to a
:class:`~storage_api._rpc.Channel`, which returns either the result or a future of it.
:meth:`Client.send` sends any message to a backend: tools built on the store use it.
"""

from __future__ import annotations

import os
import random
import threading
import time
import uuid
from collections.abc import Callable
from typing import Any

from . import _handshake, _progress, _wire
from . import _messages as m
from ._config import Settings
from ._metadata import BackendInfo, Metadata, ObjectRecord
from ._object import (ActiveObject, RemoteMethod, State, become_handle, become_transient, canonical_id, import_class,
                      make_handle, state_of)
from ._redis import Redis
from ._retry import Backoff, Retry
from ._rpc import WATCH_FRACTION, Channel, ReplyFrame
from ._serial import dump_state, dumps, load_error, loads
from ._stub import is_stub, stub_class
from ._transport import Spin
from .errors import (BackendUnavailable, ClassNotFound, CommunicationError, ConfigError, InvalidArguments,
                     MetadataRebuilding, ObjectDeleted, ObjectMoved, ObjectNotFound, StoreError)

_BACKENDS_TTL = 2.0  # seconds the client trusts its cached list of backends
_REPLICAS_TTL = 2.0  # seconds it trusts an object's cached list of replicas (for reads)


class Client:
    """A connection to one deployment: its metadata and, lazily, its backends.

    With ``redis_url`` (backends, admin tools, the COMPSs adapter) metadata comes from Redis and
    the client proves the deployment secret; without it (``backends`` and a ``credential``) it
    asks the backends for metadata (:mod:`._remote_metadata`) and proves its own credential.
    """

    _role = _wire.ROLE_CLIENT  # what the handshake tells backends this connection is
    _placeholders = True  # values of classes this process cannot import arrive as Broken placeholders
    closed_when_replaced = True  # connect() closes the runtime it replaces

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.redis: Redis | None = None
        self.meta: Any
        if settings.redis_url or not settings.backends:
            self.redis = Redis(settings.require_redis(), timeout=max(settings.connect_timeout, 2.0))
            self.meta = Metadata(self.redis, settings.namespace)
        else:
            from ._remote_metadata import RemoteMetadata

            self.meta = RemoteMetadata(self, settings.backend_addresses())
        # Clients prove their credential when they have one; a backend's own client proves the secret.
        credential = settings.credential_parts() if self._role == _wire.ROLE_CLIENT else None
        if credential is not None:
            self._auth = _handshake.Auth(_wire.ROLE_CREDENTIAL, credential[1], credential[0])
        else:
            self._auth = _handshake.Auth.secret(settings.secret_bytes(), self._role)
        self._tls: Any = None  # the TLS client context, made on the first TCP connection
        self._lock = threading.Lock()
        self._channels: dict[str, Channel] = {}
        self._connecting: dict[str, threading.Lock] = {}
        self._locations: dict[str, str] = {}
        self._replicas: dict[str, tuple[float, tuple[str, ...]]] = {}
        self.retry = Retry(settings.retry_deadline, Backoff(settings.retry_backoff, 2.0, settings.retry_backoff_cap))
        self._backends: dict[str, BackendInfo] = {}
        self._backends_at = 0.0
        self._classes: dict[str, type[ActiveObject]] = {}
        self._closed = threading.Event()
        self._watchdog: threading.Thread | None = None

    # ============================================================ public ops
    def persist(self, obj: ActiveObject, *, oid: str | None = None, alias: str | None, backend: Any) -> str:
        cls = type(obj)
        path = cls._sa_class_path
        oid = oid or str(uuid.uuid4())
        if is_stub(cls):
            return self._new_from_stub(obj, oid, alias, backend)
        if path.startswith("__main__."):
            raise ClassNotFound(
                f"{cls.__qualname__} is defined in __main__, which backends cannot import: move it to a module"
            )
        self._persist_at(self._choose_backend(backend), obj, oid, path, alias)
        return oid

    def _persist_at(self, bid: str, obj: ActiveObject, oid: str, path: str, alias: str | None) -> None:
        """Ship the object's state to backend ``bid``; the object becomes a handle."""
        self._send(bid, *m.encode(m.Persist(oid, path, alias, m.Blob(*dump_state(state_of(obj), path)))))
        become_handle(obj, oid, bid)
        self._locations[oid] = bid

    def _new_from_stub(self, obj: ActiveObject, oid: str, alias: str | None, backend: Any) -> str:
        args, kwargs = obj.__dict__["_sa_init"]
        bid = self._choose_backend(backend)
        self.send(bid, m.New(oid, type(obj)._sa_class_path, alias, args, kwargs))
        become_handle(obj, oid, bid)
        self._locations[oid] = bid
        return oid

    def call(self, obj: ActiveObject, method: RemoteMethod, args: tuple, kwargs: dict, *, wait: bool = True) -> Any:
        listener = _progress.listener()
        on_event = None if listener is None else (lambda body: listener(loads(body, placeholders=self._placeholders)))
        rid = None if method.readonly else os.urandom(16).hex()  # lets a retried call run once
        return self._object_request(obj, m.Call(obj._sa_id, method.name, args, kwargs, rid), wait=wait,
                                    on_event=on_event, read=method.readonly)

    def get_attr(self, obj: ActiveObject, name: str) -> Any:
        return self._object_request(obj, m.GetAttr(obj._sa_id, name), read=True)

    def set_attr(self, obj: ActiveObject, name: str, value: Any) -> None:
        self._object_request(obj, m.SetAttr(obj._sa_id, name, value))

    def delete(self, obj: ActiveObject, keep_state: bool = True) -> None:
        """Delete the object from the store; ``obj`` becomes transient, holding its last state
        (without ``keep_state``, or for a stub, which has no class to hold it: spent)."""
        oid = obj._sa_id
        assert oid is not None
        state = self._delete(obj, oid, keep_state and not is_stub(type(obj)))
        self._locations.pop(oid, None)
        become_transient(obj, state)

    def _delete(self, obj: ActiveObject, oid: str, keep_state: bool) -> dict[str, Any] | None:
        return self._object_request(obj, m.Delete(oid, keep_state))

    # ------------------------------------------------------------ placement
    def move(self, obj: ActiveObject, backend: Any, recursive: bool = False) -> list[str]:
        """Make ``backend`` the object's primary; return the ids moved (with ``recursive``, the
        persistent objects it references that were on the same backend follow it)."""
        target = self._choose_backend(backend)
        moved = self._object_request(obj, m.Move(obj._sa_id, target, recursive))
        for oid in moved:
            self._locations[oid] = target
            self._replicas.pop(oid, None)
        if obj._sa_state is State.PROXY:
            obj.__dict__["_sa_backend"] = target
        return moved

    def new_replica(self, obj: ActiveObject, backend: Any) -> None:
        self._object_request(obj, m.Replicate(obj._sa_id, self._choose_backend(backend)))
        self._replicas.pop(obj._sa_id, None)  # type: ignore[arg-type]

    def drop_replica(self, obj: ActiveObject, backend: Any) -> None:
        self._object_request(obj, m.Unreplicate(obj._sa_id, self._choose_backend(backend)))
        self._replicas.pop(obj._sa_id, None)  # type: ignore[arg-type]

    def placement(self, oid: str) -> ObjectRecord:
        """The object's record: primary, replicas, epoch (read from Redis; retried while backends
        re-register their objects, like every lookup)."""
        return self._indexed(lambda: self._refresh(None, oid))

    def copy(self, oid: str, target: Any = None, new_id: str | None = None) -> str:
        """Copy an object into a new, independent one (a COMPSs *new version*); return its id.

        ``target`` is the backend (id, name or record) to hold the copy; default: the primary's.
        """
        rec = self._refresh(None, oid)
        bid = rec.backend if target is None else self._choose_backend(target)
        new_id = new_id or str(uuid.uuid4())
        return self._request(oid, m.Copy(oid, bid, new_id))

    def get_by_id(self, oid: str) -> ActiveObject:
        oid = canonical_id(oid)  # the spelling make_persistent(identifier) accepts and stores
        live = self._live(oid)
        if live is not None:
            return live
        rec = self._indexed(lambda: self.meta.object(oid))
        return make_handle(self.resolve_class(rec.class_path), oid, rec.backend)

    def get_by_alias(self, alias: str, cls: type[ActiveObject]) -> Any:
        if not isinstance(alias, str):
            raise InvalidArguments(f"an alias is a string, not {type(alias).__name__}")
        oid = self._indexed(lambda: self.meta.alias(alias))
        obj = self.get_by_id(oid)
        if cls is not ActiveObject and not _same_class(type(obj), cls):
            raise ObjectNotFound(f"alias {alias!r} names a {obj._sa_class_path}, not a {cls._sa_class_path}")
        return obj

    def resolve_ref(self, oid: str, path: str, backend: str | None) -> Any:
        live = self._live(oid)
        if live is not None:
            return live
        return make_handle(self.resolve_class(path), oid, backend)

    def _live(self, oid: str) -> ActiveObject | None:
        """The live object when this process holds ``oid`` (a backend's own objects), else None."""
        return None

    def backends(self, *, refresh: bool = True) -> list[BackendInfo]:
        if refresh or time.monotonic() - self._backends_at > _BACKENDS_TTL:
            infos = self.meta.backends()
            self._backends = {b.id: b for b in infos}
            self._backends_at = time.monotonic()
        return list(self._backends.values())

    def stub(self, path: str) -> type[ActiveObject]:
        return stub_class(self.class_metadata(path))

    def class_metadata(self, path: str) -> dict[str, Any]:
        meta = self.meta.class_meta(path)
        if meta is not None:
            return meta
        # No backend has loaded the class yet: ask one to (it imports and publishes it).
        alive = [b for b in self.backends() if b.alive]
        if not alive:
            raise BackendUnavailable("no backend is alive to load the class")
        return self.send(random.choice(alive).id, m.LoadClass(path))

    def resolve_class(self, path: str) -> type[ActiveObject]:
        """The class itself where it can be imported (and ``import_classes``), else its stub."""
        cls = self._classes.get(path)
        if cls is not None:
            return cls
        if self.settings.import_classes:
            try:
                cls = import_class(path)
            except ClassNotFound:
                cls = None
        if cls is None:
            cls = self.stub(path)
        self._classes[path] = cls
        return cls

    def send(self, backend: Any, message: m.Message, *, wait: bool = True,
             on_event: Callable[[bytes], None] | None = None) -> Any:
        """Send one message (:mod:`storage_api._messages`) to a backend: its id, name or record
        (``None``: any live one).

        Returns the handler's result, or raises its exception in this process; with ``wait=False``
        a :class:`concurrent.futures.Future` of it. One attempt: no retry, no failover (object
        operations of this class add those). ``on_event`` receives the pickled progress reports
        the request sends ahead of its reply.
        """
        bid = backend if isinstance(backend, str) and backend in self._backends else self._choose_backend(backend)
        return self._send(bid, *m.encode(message), wait=wait, on_event=on_event)

    def locate(self, oid: str) -> str:
        """The id of the backend holding ``oid``'s primary (as last seen by this client)."""
        return self._locate(oid)

    def close(self) -> None:
        self._closed.set()
        with self._lock:
            channels, self._channels = self._channels, {}
        for ch in channels.values():
            ch.close()
        if self.redis is not None:
            self.redis.close()

    # ============================================================ routing
    def _object_request(self, obj: ActiveObject, msg: m.Message, *, wait: bool = True,
                        on_event: Callable[[bytes], None] | None = None, read: bool = False) -> Any:
        state = obj._sa_state
        oid = obj._sa_id
        if state is State.DELETED:
            raise ObjectDeleted(f"object {obj.__dict__.get('_sa_deleted_id')} was deleted")
        if state not in (State.PROXY, State.RESIDENT, State.REPLICA):
            raise StoreError(f"object is {state.value}: make it persistent first")
        assert oid is not None
        return self._request(oid, msg, obj=obj, wait=wait, on_event=on_event, read=read)

    def _request(self, oid: str, msg: m.Message, *, obj: ActiveObject | None = None, wait: bool = True,
                 on_event: Callable[[bytes], None] | None = None, read: bool = False) -> Any:
        """Send a request about one object to its primary (or, for reads, any replica).

        Follows moves (``ObjectNotFound`` from a backend that no longer holds it), and retries
        transport faults under :attr:`retry`, promoting a replica when the primary is dead.
        """
        body, buffers, flags = m.encode(msg)
        bid = self._target(obj, oid, read)
        if not wait:  # a future: one attempt, its failure is the future's
            return self._send(bid, body, buffers, flags, wait=False, on_event=on_event)
        try:  # the common case, outside the retry machinery
            return self._send(bid, body, buffers, flags, on_event=on_event)
        except (ObjectNotFound, CommunicationError) as exc:
            self._recover(exc, obj, oid, bid)
            last: Exception = exc
        for _retry in self.retry.attempts():  # the first retry at once, then after pauses
            bid = self._target(obj, oid, read)
            try:
                return self._send(bid, body, buffers, flags, on_event=on_event)
            except (ObjectNotFound, CommunicationError) as exc:
                self._recover(exc, obj, oid, bid)
                last = exc
        raise last

    def _recover(self, exc: Exception, obj: ActiveObject | None, oid: str, bid: str) -> None:
        """Prepare the next attempt after ``bid`` failed us, or re-raise ``exc`` if there is none."""
        if isinstance(exc, ObjectNotFound):
            # Our idea of its location may be stale (moved, failed over): ask Redis (which raises
            # ObjectNotFound when the object is gone). A backend that says the object moved away
            # while Redis still names it saw it leave and come back: try again.
            try:
                rec = self._refresh(obj, oid)
            except MetadataRebuilding:
                return  # Redis lost the record for now: try again once it is back
            if rec.backend == bid and not isinstance(exc, ObjectMoved):
                raise exc
        elif not self._failover(obj, oid, bid):
            raise exc

    def _target(self, obj: ActiveObject | None, oid: str, read: bool) -> str:
        primary = (obj._sa_backend if obj is not None else None) or self._locate(oid)
        if not read:
            return primary
        cached = self._replicas.get(oid)
        if cached is None or cached[0] < time.monotonic():
            try:
                replicas = self._refresh(obj, oid).replicas
                primary = self._locations[oid]
            except CommunicationError:  # Redis cannot tell us now: read from the primary we know
                replicas = ()
        else:
            replicas = cached[1]
        if not replicas:
            return primary
        return self._read_from([primary, *replicas])

    def _read_from(self, choices: list[str]) -> str:
        """Which of the backends holding an object serves a read (any: they all hold every write)."""
        return random.choice(choices)

    def _indexed(self, read: Callable[[], Any]) -> Any:
        """``read()``, retried under the retry policy while Redis is being rebuilt."""
        try:
            return read()
        except MetadataRebuilding as exc:
            last = exc
        for _ in self.retry.attempts():
            try:
                return read()
            except MetadataRebuilding as exc:
                last = exc
        raise last

    def _refresh(self, obj: ActiveObject | None, oid: str) -> ObjectRecord:
        """Re-read an object's record; update the caches and the handle."""
        rec = self.meta.object(oid)
        self._locations[oid] = rec.backend
        self._replicas[oid] = (time.monotonic() + _REPLICAS_TTL, rec.replicas)
        if obj is not None and obj._sa_state is State.PROXY:
            obj.__dict__["_sa_backend"] = rec.backend
        return rec

    def _failover(self, obj: ActiveObject | None, oid: str, bid: str) -> bool:
        """``bid`` failed us: find where to go next, promoting a replica if ``bid`` was a dead
        primary. False when there is nowhere else to go: the object has no replica, so the
        fault is the caller's at once (a restart of its backend is an operator's decision)."""
        known = self._backends.get(bid)
        self._backends_at = 0.0
        try:
            rec = self._refresh(obj, oid)
        except CommunicationError:
            return True  # Redis itself is unreachable: back off and try again
        if rec.backend != bid:
            return True  # moved or failed over meanwhile
        if bid in rec.replicas:  # a read from a replica failed: read elsewhere for a while
            self._replicas[oid] = (time.monotonic() + _REPLICAS_TTL, tuple(r for r in rec.replicas if r != bid))
            return True
        if not rec.replicas:
            # Nowhere else to go; but if the backend restarted since we connected, a new
            # connection may work (our old one died with the old process).
            try:
                now = {b.id: b for b in self.backends()}.get(bid)
            except CommunicationError:
                return False
            return (known is not None and now is not None and now.alive
                    and (now.pid, now.port) != (known.pid, known.port))
        # The promotion only happens once bid's heartbeat has expired in Redis; until then the
        # retry loop backs off and asks again.
        try:
            answer = self.meta.promote(oid, bid)
            if answer.startswith("alive:") and 0 <= int(answer[6:]) <= 1000 * self.settings.retry_deadline:
                # Wait out the dead primary's heartbeat, then promote at once.
                self.retry.sleep(int(answer[6:]) / 1000 + 0.002)
                answer = self.meta.promote(oid, bid)
        except CommunicationError:
            return True
        if answer and not answer.startswith(("alive:", "none")):
            self._refresh(obj, oid)
        return answer != ""

    def _locate(self, oid: str) -> str:
        bid = self._locations.get(oid)
        if bid is None:
            bid = self.meta.object(oid).backend
            self._locations[oid] = bid
        return bid

    def _send(self, bid: str, body: bytes, buffers: list[Any], flags: int = 0, *, wait: bool = True,
              on_event: Callable[[bytes], None] | None = None) -> Any:
        return self._channel(bid).request(body, buffers, wait=wait, flags=flags, on_event=on_event)

    def _choose_backend(self, backend: Any) -> str:
        if backend is None:
            return self._default_backend()
        if isinstance(backend, BackendInfo):
            return backend.id
        if isinstance(backend, str):
            for refresh in (False, True):
                for b in self.backends(refresh=refresh):
                    if backend in (b.id, b.name):
                        return b.id
            raise StoreError(f"no backend named {backend!r}")
        raise TypeError(f"backend must be a BackendInfo record or a name, not {type(backend).__name__}")

    def _default_backend(self) -> str:
        """Where an object goes when the caller names no backend: a random live one."""
        alive = [b for b in self.backends(refresh=False) if b.alive] or [b for b in self.backends() if b.alive]
        if not alive and self.meta.rebuilding():  # an empty Redis: backends register again within seconds
            for _ in self.retry.attempts():
                alive = [b for b in self.backends() if b.alive]
                if alive or not self.meta.rebuilding():
                    break
        if not alive:
            raise BackendUnavailable("no backend is alive in this deployment")
        return random.choice(alive).id

    def _channel(self, bid: str) -> Channel:
        ch = self._channels.get(bid)
        if ch is not None and ch.usable:
            return ch
        with self._lock:
            gate = self._connecting.setdefault(bid, threading.Lock())
        with gate:  # one connection attempt per backend at a time
            ch = self._channels.get(bid)
            if ch is not None and ch.usable:
                return ch
            ch = self._connect(bid)
            self._adopt(bid, ch)
            return ch

    def _adopt(self, key: str, ch: Channel) -> None:
        """Keep ``ch`` among the channels the watchdog checks and :meth:`close` closes."""
        with self._lock:
            self._channels[key] = ch
            if self._watchdog is None:
                self._watchdog = threading.Thread(target=self._watch, name="storage-api-watchdog", daemon=True)
                self._watchdog.start()

    def _watch(self) -> None:
        """Liveness of every channel with calls pending (see :mod:`storage_api._rpc`)."""
        period = self.settings.liveness_timeout * WATCH_FRACTION
        planned = time.monotonic() + period
        while not self._closed.wait(period):
            now = time.monotonic()
            for ch in list(self._channels.values()):
                ch.check_liveness(now, late=now - planned)
            planned = time.monotonic() + period

    def _connect(self, bid: str) -> Channel:
        last: CommunicationError | None = None
        info: BackendInfo | None = None
        for attempt in range(2):
            info = self._backends.get(bid) if attempt == 0 else None
            if info is None:  # unknown, or it may have restarted elsewhere: re-read its record
                self.backends()
                info = self._backends.get(bid)
                if info is None:
                    raise BackendUnavailable(f"backend {bid} is not registered")
            try:
                return self._open(info.host, info.port, info.unix, info.id, info.name)
            except CommunicationError as exc:
                last = exc
        assert info is not None
        where = f"{info.address}, or its local socket" if info.unix else info.address
        again = f" on {info.storage_dir}" if info.storage_dir else ""
        raise BackendUnavailable(f"backend {info.name} ({where}) is unreachable: {last} (`storage-api status` shows "
                                 f"whether it is alive; one that died serves its objects again once started again"
                                 f"{again}: `storage-api backend --name {info.name} --storage-dir DIR` with the "
                                 f"deployment's settings)") from last

    def _open(self, host: str, port: int, unix: str, bid: str | None, name: str) -> Channel:
        """A new authenticated channel: over the backend's Unix socket when it runs on this host."""
        local = self.settings.local_socket and unix and _is_local(host)
        fs = _handshake.connect(host, port, self._auth, timeout=self.settings.connect_timeout,
                                unix="\0" + unix if local else None, tls=self._tls_context, expect_id=bid)
        ch = Channel(fs, name, self.settings.liveness_timeout, self._decode)
        seconds = self.settings.spin_seconds(self.settings.spin_us)
        ch.spin = Spin(seconds) if seconds else None
        return ch

    def _tls_context(self) -> Any:
        """The deployment CA to check backends against: ``tls_ca``, else the one they publish."""
        if self._tls is None:
            from . import _tls

            if self.settings.tls_ca:
                self._tls = _tls.client_context(cafile=self.settings.tls_ca)
            else:
                pem = self.meta.tls_ca()
                if not pem:
                    raise ConfigError("no deployment CA: set tls_ca (no backend has published one yet)")
                self._tls = _tls.client_context(cadata=pem)
        return self._tls

    def _decode(self, frame: ReplyFrame) -> Any:
        kind, body, buffers = frame
        if kind == _wire.REPLY:
            return loads(body, buffers, placeholders=self._placeholders)
        raise load_error(body)


def _is_local(host: str) -> bool:
    import socket

    return host in ("127.0.0.1", "::1", "localhost", socket.gethostname(), socket.getfqdn())


def _same_class(have: type, want: type) -> bool:
    if issubclass(have, want):
        return True
    return getattr(have, "_sa_class_path", None) == getattr(want, "_sa_class_path", "")
