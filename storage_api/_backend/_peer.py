"""The backend's own client: how code running on a backend reaches objects, here and elsewhere.

Active methods call other objects, placement code ships states to other backends, shipped tasks
fetch values: all of it goes through this process's runtime, a :class:`PeerClient`. It is a
:class:`~storage_api._client.Client` whose requests to this backend never touch a socket: a
:class:`LocalChannel` dispatches them in process (as dask's in-process comm does), with the same
copy semantics as over the network. Objects this backend holds resolve to the live objects, new
objects are made persistent here unless told otherwise, and reads prefer the local copy.
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import Future
from typing import TYPE_CHECKING, Any

from .. import _wire
from .._client import Client
from .._config import Settings
from .._object import ActiveObject, State
from .._rpc import ReplyFrame
from ._handlers import dispatch

if TYPE_CHECKING:
    from ._runtime import LocalBackend


class LocalChannel:
    """A channel to this process's backend: requests are served in the calling thread."""

    usable = True

    def __init__(self, backend: LocalBackend, decode: Callable[[ReplyFrame], Any]) -> None:
        self.backend = backend
        self._decode = decode

    def request(self, body: bytes, buffers: list[Any], *, wait: bool = True, flags: int = 0,
                on_event: Callable[[bytes], None] | None = None) -> Any:
        # Progress reports of in-process calls go straight to the thread's listener (see _progress).
        future: Future = Future()
        try:
            future.set_result(self._decode(dispatch(self.backend, body, buffers)))
        except BaseException as exc:  # the handler's error, rebuilt as a remote caller would see it
            future.set_exception(exc)
        return future.result() if wait else future


class PeerClient(Client):
    """A backend's client: requests to ``backend`` stay in process (see the module docstring)."""

    _role = _wire.ROLE_PEER
    _placeholders = False  # a backend imports the classes it serves: no placeholders
    closed_when_replaced = False  # the backend keeps using it if its code calls connect()

    def __init__(self, settings: Settings, backend: LocalBackend) -> None:
        super().__init__(settings)
        self.backend = backend
        self._local = LocalChannel(backend, self._decode)

    def _live(self, oid: str) -> ActiveObject | None:
        return self.backend.lookup(oid)

    def _persist_at(self, bid: str, obj: ActiveObject, oid: str, path: str, alias: str | None) -> None:
        if bid == self.backend.id:
            self.backend.adopt(obj, oid, alias)  # the object itself becomes resident: no copy
        else:
            super()._persist_at(bid, obj, oid, path, alias)

    def _delete(self, obj: ActiveObject, oid: str, keep_state: bool) -> dict[str, Any] | None:
        if obj._sa_state is State.RESIDENT:
            self.backend.delete(oid)  # the live object keeps its state itself
            return None
        return super()._delete(obj, oid, keep_state)

    def _default_backend(self) -> str:
        return self.backend.id

    def _read_from(self, choices: list[str]) -> str:
        return self.backend.id if self.backend.id in choices else super()._read_from(choices)

    def _channel(self, bid: str) -> Any:
        return self._local if bid == self.backend.id else super()._channel(bid)
