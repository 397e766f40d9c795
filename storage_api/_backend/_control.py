"""The backend's control queue: requests from processes that cannot speak the wire protocol.

COMPSs' Java side (``storage.StorageItf``) and ``storage_stop.sh`` talk to backends through Redis
only: our wire protocol needs the deployment secret and BLAKE2b MACs, which a small jar should not
reimplement. Each backend serves two lists::

    ns:ctl:<bid>   requests addressed to this backend (the owner of the object concerned)
    ns:ctl:any     requests any live backend may serve

A request is one JSON object (never pickle: anyone who can write to Redis could send one)::

    {"op": "new_version", "args": {"oid": ..., "preserve": true, "host": "node1-ib0"}, "reply": "<key>"}

and its reply, pushed to the list named by ``reply`` (which expires after a minute,
so a requester that gave up leaves nothing behind), is ``{"ok": true, "result": ...}`` or
``{"ok": false, "error": "<Type>: <message>"}``. The requester waits with ``BLPOP`` and a timeout.

Operations (the handler table :data:`OPS`):

* ``new_version`` (``oid``, ``preserve``, ``host``): copy the object to a fresh id on the backend
  whose COMPSs name is ``host`` (else on the object's own backend); drop the source unless
  ``preserve``; when preserved, remember that ``<new>`` derives from ``<old>`` for ``consolidate``.
* ``new_replica`` (``oid``, ``host``): replicate the object on ``host``'s backend.
* ``consolidate`` (``oid``): delete the versions ``oid`` was derived from (best effort).
* ``shutdown``: stop this backend gracefully (as SIGTERM does); ``storage_stop.sh`` uses it.
* ``ping``: answer with this backend's id.
"""

from __future__ import annotations

import json
import logging
import threading
import uuid
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from .._metadata import Metadata
from .._redis import Redis
from ..errors import CommunicationError, ObjectNotFound, StoreError

if TYPE_CHECKING:
    from ._main import BackendProcess

log = logging.getLogger("storage.backend.control")

POLL_S = 1  # BLPOP timeout: how often the loop notices that the backend is stopping


class ControlLoop:
    """Pops control requests for one backend and serves each in its own thread."""

    def __init__(self, proc: BackendProcess) -> None:
        self.proc = proc
        self.meta = proc.meta
        # Its own connection: a blocking pop must not hold up the backend's other Redis traffic.
        self.queue = Metadata(Redis(proc.settings.require_redis(), timeout=POLL_S + 5.0, pool_size=1),
                              proc.settings.namespace)

    def start(self) -> None:
        threading.Thread(target=self._loop, name="storage-api-control", daemon=True).start()

    def _loop(self) -> None:
        while not self.proc.stopping:
            try:
                raw = self.queue.next_control(self.proc.id, POLL_S)
            except CommunicationError as exc:
                log.warning("control queue unreachable: %s", exc)
                if self.proc.wait_stopped(POLL_S):
                    break
                continue
            if raw is None:
                continue
            threading.Thread(target=self.serve, args=(raw,), name="storage-api-control-op", daemon=True).start()
        self.queue.redis.close()

    def serve(self, raw: str) -> None:
        try:
            req = json.loads(raw)
            op, args, reply = req["op"], req.get("args") or {}, req.get("reply")
        except (ValueError, KeyError, TypeError):
            log.warning("malformed control request dropped: %.200s", raw)
            return
        try:
            handler = OPS[op]
        except (KeyError, TypeError):
            answer: dict[str, Any] = {"ok": False, "error": f"StoreError: unknown control operation {op!r}"}
        else:
            try:
                answer = {"ok": True, "result": handler(self.proc, **args)}
            except Exception as exc:  # every failure goes back to the requester
                log.info("control %s %s failed: %s", op, args, exc)
                answer = {"ok": False, "error": f"{type(exc).__name__}: {exc}"}
        if reply:
            try:
                self.meta.reply_control(reply, json.dumps(answer))
            except CommunicationError as exc:
                log.warning("control reply lost: %s", exc)
        if op == "shutdown" and answer["ok"]:
            self.proc.stop()


# ------------------------------------------------------------------ operations
def _backend_of_host(proc: BackendProcess, host: str) -> str | None:
    """The live backend whose COMPSs name is ``host`` (this one first when it matches)."""
    if not host:
        return None
    matches = [b.id for b in proc.client.backends() if b.alive and host in (b.compss_name, b.name, b.host)]
    if proc.id in matches:
        return proc.id
    return matches[0] if matches else None


def new_version(proc: BackendProcess, oid: str, preserve: bool = True, host: str = "") -> str:
    new_id = proc.client.copy(oid, _backend_of_host(proc, host), str(uuid.uuid4()))
    if preserve:
        proc.meta.link_version(new_id, oid)
    else:
        _delete(proc, oid)
    return new_id


def new_replica(proc: BackendProcess, oid: str, host: str) -> str:
    target = _backend_of_host(proc, host)
    if target is None:
        raise StoreError(f"no live backend runs on COMPSs node {host!r}")
    proc.client.new_replica(proc.client.get_by_id(oid), target)
    return target


def consolidate(proc: BackendProcess, oid: str) -> list[str]:
    """Delete every earlier version ``oid`` derives from; return their ids."""
    dropped: list[str] = []
    current = oid
    for _ in range(10_000):  # a chain, never a cycle; bounded anyway
        prev = proc.meta.pop_version_link(current)
        if prev is None:
            break
        _delete(proc, prev)
        dropped.append(prev)
        current = prev
    return dropped


def _delete(proc: BackendProcess, oid: str) -> None:
    try:
        proc.client.get_by_id(oid).delete_persistent()
    except ObjectNotFound:
        pass


def shutdown(proc: BackendProcess) -> str:
    return proc.id


def ping(proc: BackendProcess) -> str:
    return proc.id


OPS: dict[str, Callable[..., Any]] = {
    "new_version": new_version,
    "new_replica": new_replica,
    "consolidate": consolidate,
    "shutdown": shutdown,
    "ping": ping,
}
