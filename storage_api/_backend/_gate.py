"""The backend's gate: accepting connections and authenticating them, with bounded work.

One thread accepts on every listening socket and drives every handshake as a non-blocking state
machine (:mod:`storage_api._handshake`), so a peer that has not authenticated costs a socket and a
few hundred bytes, never a thread. The work it can cause is bounded:

- one deadline for the whole handshake (``handshake_timeout``), however slowly bytes trickle in;
- at most ``max_pending`` unauthenticated connections, ``max_pending_per_host`` from one address:
  a new connection over a cap evicts the oldest one (from its own address first). Slow senders
  therefore cannot lock anyone out: a legitimate handshake takes milliseconds, and only a flood of
  more than the cap in that time could evict it;
- the descriptor table: when ``accept`` fails with ``EMFILE``/``ENFILE``, or an accepted socket
  lands within :data:`FD_RESERVE` of the limit, the oldest unauthenticated connection is evicted,
  which keeps descriptors for the log and for authenticated peers;
- when nothing can be evicted, or no thread can be started for an authenticated connection, the
  listeners pause (50 ms, doubling up to 1 s) instead of spinning; the gate logs it, reports
  the problem (:attr:`Gate.problem`, shown by ``storage-api status``) until it can accept again,
  and resumes by itself.

Authenticated connections go to ``admit``, which starts their serving thread.
"""

from __future__ import annotations

import errno
import logging
import os
import resource
import selectors
import socket
import struct
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ..errors import AuthenticationError

log = logging.getLogger("storage.server")

FD_RESERVE = 32  # descriptors kept free for everything but unauthenticated sockets
ACCEPT_BURST = 64  # connections accepted per wake-up before handshakes get their turn
PAUSE_MIN, PAUSE_MAX = 0.05, 1.0
REPORT_EVERY = 10.0  # seconds between summaries of evictions
_RESOURCE_ERRORS = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})

Handshake = Any  # see _accept: .sock, .step() -> events, .result() -> Accepted
Admit = Callable[[Any, str], bool]  # (Accepted, source address) -> whether a thread took it


@dataclass(frozen=True)
class Limits:
    handshake_timeout: float = 5.0
    max_pending: int = 256
    max_pending_per_host: int = 32


def _open_descriptors(at_least: int) -> int:
    try:
        return len(os.listdir("/proc/self/fd")) - 1  # minus the one listdir itself opened
    except OSError:  # no /proc: the highest descriptor seen is the best estimate
        return at_least + 1


def _local_peer(sock: socket.socket) -> str:
    """The per-address cap's key for a Unix-socket peer: its user, so that one local user's
    flood of handshakes evicts only that user's own (any local user may connect)."""
    try:
        _pid, uid, _gid = struct.unpack("3i", sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, 12))
    except (OSError, AttributeError, struct.error):  # no peer credentials on this platform
        return "local"
    return f"local:uid={uid}"


class _Pending:
    __slots__ = ("hs", "host", "deadline", "events")

    def __init__(self, hs: Handshake, host: str, deadline: float) -> None:
        self.hs = hs
        self.host = host
        self.deadline = deadline
        self.events = 0


class Gate:
    def __init__(self, listeners: list[tuple[socket.socket, Callable[[socket.socket], Handshake]]],
                 admit: Admit, limits: Limits) -> None:
        self._listeners = listeners
        self._admit = admit
        self.limits = limits
        self._sel = selectors.DefaultSelector()
        self._pending: OrderedDict[int, _Pending] = OrderedDict()  # oldest first
        self._by_host: dict[str, OrderedDict[int, _Pending]] = {}
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._stopping = False
        self._paused_until = 0.0
        self._pause = 0.0
        self._problem_kind = ""
        #: why the backend cannot take new connections now ("" when it can)
        self.problem = ""
        self._evicted: dict[str, int] = {}
        self._reported = 0.0
        self._thread: threading.Thread | None = None
        self._lifecycle = threading.Lock()

    # ------------------------------------------------------------ lifecycle
    def start(self) -> None:
        with self._lifecycle:  # a SIGTERM during start-up runs stop() in another thread
            if self._stopping:
                return
            for sock, factory in self._listeners:
                sock.setblocking(False)
            self._listen(True)
            self._sel.register(self._wake_r, selectors.EVENT_READ, None)
            self._thread = threading.Thread(target=self._run, name="storage-api-gate", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        with self._lifecycle:
            self._stopping = True
            thread = self._thread
        try:
            self._wake_w.send(b"x")
        except OSError:
            pass
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout=5)

    @property
    def pending(self) -> int:
        return len(self._pending)

    def _run(self) -> None:
        while not self._stopping:
            try:
                self._once()
            except Exception:  # the gate must outlive anything a peer can cause
                log.exception("gate: unexpected error (continuing)")
                time.sleep(PAUSE_MIN)
        for p in list(self._pending.values()):
            self._drop(p, None)
        self._sel.close()
        self._wake_r.close()
        self._wake_w.close()

    def _once(self) -> None:
        now = time.monotonic()
        timeout = 1.0
        if self._pending:
            timeout = min(timeout, next(iter(self._pending.values())).deadline - now)
        if self._paused_until:
            timeout = min(timeout, self._paused_until - now)
        for key, _mask in self._sel.select(max(timeout, 0.0)):
            if key.data is None:
                self._drain_wake()
            elif isinstance(key.data, _Pending):
                if self._pending.get(key.fd) is key.data:  # not dropped earlier in this batch
                    self._advance(key.data)
            else:
                self._accept(key.fileobj, key.data)  # type: ignore[arg-type]
            if self._stopping:
                return
        now = time.monotonic()
        while self._pending:
            oldest = next(iter(self._pending.values()))
            if oldest.deadline > now:
                break
            self._drop(oldest, "handshake timed out")
        if self._paused_until and now >= self._paused_until:
            self._paused_until = 0.0
            self._listen(True)
            self._probe()
        self._report(now)

    def _drain_wake(self) -> None:
        try:
            while self._wake_r.recv(64):
                pass
        except (BlockingIOError, InterruptedError):
            pass

    # ------------------------------------------------------------ accepting
    def _listen(self, on: bool) -> None:
        for sock, factory in self._listeners:
            try:
                if on:
                    self._sel.register(sock, selectors.EVENT_READ, factory)
                else:
                    self._sel.unregister(sock)
            except (KeyError, ValueError, OSError):  # already (un)registered, or closed by stop()
                pass

    def _accept(self, listener: socket.socket, factory: Callable[[socket.socket], Handshake]) -> None:
        for _ in range(ACCEPT_BURST):
            try:
                sock, addr = listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                if self._stopping:
                    return
                if exc.errno in _RESOURCE_ERRORS:
                    if self._evict_oldest(None, "descriptors"):
                        continue
                    self._pause_listening("accept", f"cannot accept connections: {exc.strerror}")
                    return
                continue  # ECONNABORTED and the like: that connection is gone, not the listener
            if self._problem_kind == "accept":
                self._healthy()
            host = addr[0] if isinstance(addr, tuple) and addr else _local_peer(sock)
            self._make_room(host, sock.fileno())
            try:
                hs = factory(sock)
            except Exception as exc:
                log.info("dropped connection from %s: %s", host, exc)
                sock.close()
                continue
            p = _Pending(hs, host, time.monotonic() + self.limits.handshake_timeout)
            fd = hs.sock.fileno()  # hs.sock may wrap sock (TLS), which then has no descriptor of its own
            self._pending[fd] = p
            self._by_host.setdefault(host, OrderedDict())[fd] = p
            self._advance(p)

    def _make_room(self, host: str, fd: int) -> None:
        mine = self._by_host.get(host)
        if mine and len(mine) >= self.limits.max_pending_per_host:
            self._evict_oldest(host, "per-address cap")
        if len(self._pending) >= self.limits.max_pending:
            self._evict_oldest(None, "total cap")
        soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]  # read each time: prlimit can change it
        if soft == resource.RLIM_INFINITY or fd < soft - FD_RESERVE:
            return
        # Near the line (descriptors are taken lowest first, so ``fd`` is a lower bound of the
        # count): count them, and free enough to get back under it.
        used = _open_descriptors(fd)
        while used >= soft - FD_RESERVE and self._evict_oldest(None, "descriptors"):
            used -= 1

    def _evict_oldest(self, host: str | None, why: str) -> bool:
        group = self._pending if host is None else self._by_host.get(host)
        if not group:
            return False
        self._drop(next(iter(group.values())), None)
        self._evicted[why] = self._evicted.get(why, 0) + 1
        return True

    # ------------------------------------------------------------ handshakes
    def _advance(self, p: _Pending) -> None:
        try:
            events = p.hs.step()
        except AuthenticationError as exc:
            log.warning("refused connection from %s: %s", p.host, exc)
            self._drop(p, None)
            return
        except Exception as exc:  # malformed, closed, timed out, TLS alerts: that connection only
            self._drop(p, f"dropped during handshake: {exc}")
            return
        sock = p.hs.sock
        if events:
            if p.events != events:
                if p.events:
                    self._sel.modify(sock, events, p)
                else:
                    self._sel.register(sock, events, p)
                p.events = events
            return
        self._forget(p)
        accepted = p.hs.result()
        if self._admit(accepted, p.host):
            if self._problem_kind == "threads":
                self._healthy()
        else:
            accepted.io.close()
            self._pause_listening("threads", "cannot start threads for new connections")

    def _forget(self, p: _Pending) -> None:
        sock = p.hs.sock
        fd = sock.fileno()
        self._pending.pop(fd, None)
        mine = self._by_host.get(p.host)
        if mine is not None:
            mine.pop(fd, None)
            if not mine:
                del self._by_host[p.host]
        if p.events:
            try:
                self._sel.unregister(sock)
            except (KeyError, ValueError):
                pass
            p.events = 0

    def _drop(self, p: _Pending, why: str | None) -> None:
        if why:
            log.debug("connection from %s: %s", p.host, why)
        self._forget(p)
        try:
            p.hs.sock.close()
        except OSError:
            pass

    # ------------------------------------------------------------ health
    def _pause_listening(self, kind: str, problem: str) -> None:
        if problem != self.problem:
            log.warning("%s; pausing new connections (resuming by itself)", problem)
        self._problem_kind, self.problem = kind, problem
        self._pause = min(max(self._pause * 2, PAUSE_MIN), PAUSE_MAX)
        self._paused_until = time.monotonic() + self._pause
        self._listen(False)

    def _healthy(self) -> None:
        log.info("accepting connections again (was: %s)", self.problem)
        self._problem_kind = self.problem = ""
        self._pause = 0.0

    def _probe(self) -> None:
        """After a pause: is the resource that was missing back? (Nobody may connect to tell us.)"""
        try:
            if self._problem_kind == "threads":
                t = threading.Thread(target=lambda: None, name="storage-api-probe", daemon=True)
                t.start()
            elif self._problem_kind == "accept":
                socket.socket(socket.AF_UNIX, socket.SOCK_STREAM).close()
            else:
                return
        except (RuntimeError, OSError):
            return
        self._healthy()

    def _report(self, now: float) -> None:
        if self._evicted and now - self._reported >= REPORT_EVERY:
            summary = ", ".join(f"{n} ({why})" for why, n in sorted(self._evicted.items()))
            log.warning("evicted unauthenticated connections: %s; %d pending", summary, len(self._pending))
            self._evicted = {}
            self._reported = now
