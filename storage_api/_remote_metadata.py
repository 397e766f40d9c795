"""Metadata for clients without Redis access, asked of the backends over the authenticated channel.

A client configured with ``backends`` (addresses) and a credential, and no ``redis_url``, reads
through this class what a client reads from Redis: the backend list, an object's record, aliases,
class metadata for stubs, and the failover of a dead primary (which a backend runs for it). It
keeps one connection for these questions, to any backend that answers: those it learnt of first,
then the configured addresses. Registering new objects needs nothing here: backends register what
they store.
"""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING, Any

from . import _messages as m
from ._metadata import BackendInfo, ObjectRecord
from .errors import BackendUnavailable, CommunicationError

if TYPE_CHECKING:
    from ._client import Client
    from ._rpc import Channel


class RemoteMetadata:
    def __init__(self, client: Client, addresses: list[tuple[str, int]]) -> None:
        self._client = client
        self._addresses = addresses
        self._known: list[BackendInfo] = []
        self._channel: Channel | None = None
        self._lock = threading.Lock()

    def backends(self) -> list[BackendInfo]:
        infos = self._ask(m.MetaBackends())
        self._known = infos
        return infos

    def object(self, oid: str) -> ObjectRecord:
        return self._ask(m.MetaObject(oid))

    def alias(self, alias: str) -> str:
        return self._ask(m.MetaAlias(alias))

    def class_meta(self, path: str) -> dict[str, Any] | None:
        return self._ask(m.MetaClass(path))

    def promote(self, oid: str, dead: str) -> str:
        return self._ask(m.MetaPromote(oid, dead))

    def rebuilding(self) -> bool:
        return self._ask(m.MetaRebuilding())

    def tls_ca(self) -> str | None:
        return None  # such a client has the CA in its settings (tls_ca)

    def close(self) -> None:
        pass  # the channel is one of the client's, closed with them

    def _ask(self, msg: m.Message) -> Any:
        body, buffers, _flags = m.encode(msg)
        last: CommunicationError | None = None
        for _attempt in range(2):  # a connection that died since the last question: one more try
            channel = self._connected()
            try:
                return channel.request(body, buffers)
            except CommunicationError as exc:
                last = exc
        raise BackendUnavailable(f"no backend answered a metadata request: {last}") from last

    def _connected(self) -> Channel:
        with self._lock:
            if self._channel is not None and self._channel.usable:
                return self._channel
            candidates = [(b.host, b.port, b.unix, b.id, b.name) for b in self._known if b.alive]
            candidates += [(host, port, "", None, f"{host}:{port}") for host, port in self._addresses]
            errors = []
            for host, port, unix, bid, name in candidates:
                try:
                    self._channel = self._client._open(host, port, unix, bid, name)
                except CommunicationError as exc:
                    errors.append(f"{host}:{port}: {exc}")
                    continue
                self._client._adopt(f"metadata {name}", self._channel)
                return self._channel
            if not errors:
                raise BackendUnavailable("no backend of the deployment is reachable (no addresses configured)")
            # The addresses come from the credential's settings file: ports of the deployment that
            # issued it, which a deployment started again no longer listens on.
            raise BackendUnavailable(f"no backend of the deployment is reachable ({'; '.join(errors)}): the backend "
                                     "addresses configured (setting backends) may be out of date, as a deployment "
                                     "started again listens on new ports: have the credential issued again "
                                     "(`storage-api credential issue NAME`) after the deployment's latest start")
