"""The backend's network server: authenticated connections served by leader/follower threads.

Each connection has a small pool of threads. One of them, the *leader*, reads the next frame and
serves the request itself, in the thread that read it: no queue and no hand-off on its path.
Leadership passes to another thread (growing the pool when nobody is free) only when a request is
still running after :data:`PROMOTE_AFTER` seconds while more waits to be read on its connection:
the server's promoter thread hands it over. Short calls, even many of them pipelined by a
multi-threaded client, are served back to back by one thread with no thread switch (waking a
thread is the most expensive thing a request could do on a small VM, and the GIL lets only one
run anyway); a long call delays later requests on its connection by a couple of milliseconds (up
to :data:`PROMOTE_MAX` after a while without such delays). With ``max_workers`` requests running,
one more thread reads on and holds further requests back until a worker is free. ``PING`` frames
are answered by whoever reads, so liveness checks succeed while calls run.

Connections are accepted and authenticated by the :class:`~._gate.Gate` (one thread for every
handshake, bounded work before authentication); each authenticated connection then gets its
first thread. Anything that is not a valid frame from an authenticated peer closes that
connection only.
"""

from __future__ import annotations

import logging
import pickle
import socket
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from .. import _progress
from .. import _wire as w
from .._serial import dump_error
from .._transport import FrameSocket, Spin
from ..errors import CallCancelled, CommunicationError, ProtocolError, StoreError
from . import _imports
from ._accept import Accepted, HmacAccept, TlsAccept
from ._gate import Gate, Limits
from ._handlers import dispatch

if TYPE_CHECKING:
    from ._runtime import LocalBackend

log = logging.getLogger("storage.server")

PROMOTE_AFTER = 0.002  # a request running this long hands its connection's reading to another thread
PROMOTE_MAX = 0.016  # ... or up to this long, when the promoter found nothing to do for a while

_current = threading.local()  # what this thread is serving: .conn, and .lsn its reply waits for


def defer_sync(lsn: int) -> bool:
    """Let the committer make ``lsn`` durable for the current request, if that pays.

    It pays when more requests are already waiting on the connection: the reading thread goes on
    serving them instead of sleeping in fsync, and one fsync of the committer covers them all
    (group commit without thread switches). Alone, a request syncs itself: no hand-off at all.
    """
    conn = getattr(_current, "conn", None)
    if conn is None or not conn.fs.pending():
        return False
    _current.lsn = max(lsn, _current.lsn)
    return True


class Committer:
    """Sends replies that wait for durability once their LSN is on disk, one fsync per batch."""

    def __init__(self, store: Any) -> None:
        self.store = store
        self._cond = threading.Condition()
        self._waiting: list[tuple[int, Connection, int, int, bytes, list]] = []
        threading.Thread(target=self._run, name="storage-api-committer", daemon=True).start()

    def add(self, lsn: int, conn: Connection, rid: int, kind: int, body: bytes, buffers: list) -> None:
        with self._cond:
            self._waiting.append((lsn, conn, rid, kind, body, buffers))
            self._cond.notify()

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._waiting:
                    self._cond.wait()
                batch, self._waiting = self._waiting, []
            try:
                self.store.sync(max(item[0] for item in batch))
            except Exception as exc:  # the disk failed us: say so rather than acknowledge
                log.error("fsync failed: %s", exc)
                error = dump_error(StoreError(f"the backend could not make the result durable: {exc}"))
                batch = [(lsn, conn, rid, w.ERROR, error, []) for lsn, conn, rid, _k, _b, _bufs in batch]
            for _lsn, conn, rid, kind, body, buffers in batch:
                conn.send_reply(rid, kind, body, buffers)


class Server:
    """Serves the connections its :class:`~._gate.Gate` accepts (TCP, plus a local Unix socket on Linux)."""

    def __init__(self, backend: LocalBackend, socks: list[socket.socket], secret: bytes, max_workers: int,
                 tls: tuple[Any, bytes], spin: float = 0.0, limits: Limits = Limits()) -> None:
        """``socks[0]`` is the TCP listener (TLS: ``tls`` is the server context and the channel
        binding of its certificate); the others are Unix sockets."""
        self.backend = backend
        _imports.watch(self.announce_quiet)
        self.committer = Committer(backend.store)
        self.spin = spin  # seconds a leader polls for the next request before sleeping
        self.socks = socks
        self.max_workers = max_workers
        ctx, binding = tls
        listeners: list[tuple[socket.socket, Any]] = [(socks[0], lambda sock: TlsAccept(sock, ctx, secret, binding))]
        listeners += [(s, lambda sock: HmacAccept(sock, secret)) for s in socks[1:]]
        self.gate = Gate(listeners, self._admit, limits)
        self._stopping = threading.Event()
        self._conns: set[Connection] = set()
        self._lock = threading.Lock()
        self.on_quiet: Callable[[float], None] = lambda seconds: None  # the process's own part (heartbeat)
        self.busy = threading.Event()  # some leader is serving a request inline
        self.last_busy = 0.0

    @property
    def port(self) -> int:
        return self.socks[0].getsockname()[1]

    @property
    def problem(self) -> str:
        """Why new connections are not being taken ("" when they are); see :class:`~._gate.Gate`."""
        return self.gate.problem

    def serve_forever(self) -> None:
        """Serve until :meth:`stop` (the gate and the promoter are daemon threads); at once
        if it already ran."""
        if self._stopping.is_set():
            return
        threading.Thread(target=self._promoter, name="storage-api-promoter", daemon=True).start()
        self.gate.start()
        # Wake up now and then: a signal delivered to another thread only runs its Python handler
        # when the main thread executes bytecode, and an untimed wait would never return.
        while not self._stopping.wait(0.5):
            pass

    def _admit(self, accepted: Accepted, addr: str) -> bool:
        """Serve an authenticated connection in a thread of its own; False if none can be started."""
        try:
            threading.Thread(target=self._serve, args=(accepted, addr), name="storage-api-conn", daemon=True).start()
        except RuntimeError:  # out of threads: the gate closes the connection and backs off
            return False
        return True

    def _serve(self, accepted: Accepted, addr: str) -> None:
        fs = self._welcome(accepted, addr)
        if fs is None:
            return
        conn = Connection(fs, self, addr)
        with self._lock:
            self._conns.add(conn)
        try:
            conn.work()
        finally:
            with self._lock:
                self._conns.discard(conn)

    def _welcome(self, accepted: Accepted, addr: str) -> FrameSocket | None:
        """Complete the handshake (see _accept): refuse a credential that is no longer the current
        one of its name (revoked or replaced), else send WELCOME. None if the connection is over."""
        peer = accepted.peer
        welcome = accepted.welcome
        if peer.role == w.ROLE_CREDENTIAL:
            try:
                current = self.backend.meta.credential(peer.name)
            except CommunicationError as exc:  # cannot tell: no verdict, the client may retry
                log.warning("cannot check credential %r of %s: %s", peer.identity, addr, exc)
                accepted.io.close()
                return None
            if current is None or peer.identity != f"{peer.name}/{current}":
                log.warning("refused credential %r from %s: revoked or replaced", peer.identity, addr)
                welcome = w.WELCOME.pack(w.REVOKED, bytes(32))
        try:
            accepted.io.write([welcome])
        except OSError as exc:
            log.info("dropped connection from %s before it was served: %s", addr, exc)
            welcome = b""
        if welcome is not accepted.welcome:
            accepted.io.close()
            return None
        fs = FrameSocket(accepted.io, *(accepted.keys or (None, None)))
        fs.label = "served_peer" if peer.role == w.ROLE_PEER else "served_client"
        return fs

    def _promoter(self) -> None:
        """Give a connection a new reader when its leader has been serving for too long.

        It looks every :data:`PROMOTE_AFTER` seconds while that finds work, and backs off to
        :data:`PROMOTE_MAX` while it does not: each look takes the GIL, and on a busy machine the
        thread holding it can lose its CPU, stalling the request it looked at.
        """
        pause = PROMOTE_AFTER
        while not self._stopping.is_set():
            if not self.busy.wait(timeout=1.0):
                continue
            time.sleep(pause)
            now = time.monotonic()
            with self._lock:
                conns = list(self._conns)
            promoted = sum(conn.promote_if_slow(now) for conn in conns)
            pause = PROMOTE_AFTER if promoted else min(2 * pause, PROMOTE_MAX)
            # No request for a while: sleep until the next one, unless one still runs (a ping, a
            # request or the caller's close may come for it, and nobody else reads its connection).
            if now - self.last_busy > 1.0 and not any(conn.serving for conn in conns):
                self.busy.clear()

    def announce_quiet(self, seconds: float) -> None:
        """Tell every connection that this backend may not answer for ``seconds`` (0: it answers
        again), as a module loads (see :mod:`._imports`)."""
        self.on_quiet(seconds)
        with self._lock:
            conns = list(self._conns)
        for conn in conns:
            conn.send_quiet(seconds)

    def stop(self) -> None:
        self._stopping.set()
        self.gate.stop()
        for s in self.socks:
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            s.close()
        with self._lock:
            conns = list(self._conns)
        for conn in conns:
            conn.close()


class Connection:
    def __init__(self, fs: FrameSocket, server: Server, addr: str) -> None:
        self.fs = fs
        self.server = server
        self.addr = addr
        self._lead = threading.Lock()
        self._mutex = threading.Lock()
        self._idle = 0
        self._threads = 1
        self._running = 0  # requests being served
        self._backlog: deque[tuple[int, bytes, list, list]] = deque()  # read while every worker was busy
        self._closed = False
        self._inline = False  # the leader is serving a request and still holds the leadership
        fs.stream_sink = server.backend.store.open_stream
        fs.spin = Spin(server.spin) if server.spin else None  # its own: adapted to this client
        self._inline_since = 0.0

    def work(self) -> None:
        """Run one worker: lead (read and serve inline) until leadership passes, then wait for it."""
        while True:
            with self._mutex:
                self._idle += 1
            self._lead.acquire()
            with self._mutex:
                self._idle -= 1
            if not self._lead_and_serve():
                return

    def _lead_and_serve(self) -> bool:
        """Serve requests while this thread is the leader; False when the connection is finished.

        With ``max_workers`` requests running, the leader (one thread more) reads on, so pings are
        still answered, and holds requests back; workers serve them, in order, as they finish.
        """
        server = self.server
        while True:
            if self._closed:
                self._lead.release()
                return False
            job = self._held_back()
            if job is None:
                try:
                    job = self._next_request()
                except Exception as exc:
                    if not self._closed:
                        quiet = isinstance(exc, CommunicationError) and not isinstance(exc, ProtocolError)
                        log.log(logging.DEBUG if quiet else logging.WARNING, "closing connection from %s: %s",
                                self.addr, exc)
                    self.close()
                    self._lead.release()
                    return False
                with self._mutex:
                    if self._running >= server.max_workers:
                        self._backlog.append(job)
                        continue
                    self._running += 1
            self._inline_since = now = time.monotonic()
            self._inline = True
            server.last_busy = now
            if not server.busy.is_set():
                server.busy.set()
            self._serve(*job)
            with self._mutex:
                self._running -= 1
                if self._inline:  # still the leader: read the next request ourselves
                    self._inline = False
                    continue
            # The promoter passed leadership on while we were serving: serve what was held back.
            while (job := self._held_back()) is not None:
                self._serve(*job)
                with self._mutex:
                    self._running -= 1
            return True

    def _held_back(self) -> tuple[int, bytes, list, list] | None:
        """The oldest request held back, if a worker is free for it (counted as running)."""
        with self._mutex:
            if not self._backlog or self._running >= self.server.max_workers:
                return None
            self._running += 1
            return self._backlog.popleft()

    @property
    def serving(self) -> bool:
        """Whether its leader is serving a request (and nobody reads the connection meanwhile)."""
        return self._inline

    def promote_if_slow(self, now: float) -> bool:
        """Pass the reading on if the leader has been serving for long and something waits to be
        read (a request, a ping, the client's close). Nothing waiting, nobody is kept waiting: a
        new reader would only poll for bytes that come after the reply, on a CPU (and a GIL) that
        the running request needs."""
        if not (self._inline and now - self._inline_since >= PROMOTE_AFTER and self.fs.pending()):
            return False
        with self._mutex:
            if self._inline and now - self._inline_since >= PROMOTE_AFTER:
                self._inline = False
                self._pass_leadership()
                return True
        return False

    def _pass_leadership(self) -> None:
        """Release the leadership to a waiting thread, starting one if none waits (mutex held)."""
        if self._idle == 0 and self._threads <= self.server.max_workers:  # workers, and a reader
            try:
                threading.Thread(target=self.work, name="storage-api-worker", daemon=True).start()
                self._threads += 1
            except RuntimeError:  # out of threads: the current leader takes the lead back when done
                log.warning("connection from %s: no thread to read further requests while one runs", self.addr)
        self._lead.release()

    def _serve(self, rid: int, body: bytes, buffers: list, streams: list) -> None:
        _current.conn, _current.lsn = self, 0
        previous = _progress.serve(lambda value: self.send_event(rid, value))
        try:
            kind, rbody, rbuffers = dispatch(self.server.backend, body, buffers, streams or None)
        finally:
            _progress.serve(previous)
            _current.conn = None
        if _current.lsn and not self.server.backend.store.is_synced(_current.lsn):
            self.server.committer.add(_current.lsn, self, rid, kind, rbody, rbuffers)
        else:
            self.send_reply(rid, kind, rbody, rbuffers)

    def send_event(self, rid: int, value: Any) -> None:
        """A progress report for the request ``rid``. If its caller is gone (this connection
        closed), the call is cancelled: :class:`CallCancelled` is raised in the active method."""
        if self._closed:
            raise CallCancelled(f"the caller of this call ({self.addr}) is gone: the call is cancelled")
        try:
            self.fs.send(w.EVENT, rid, pickle.dumps(value, protocol=5))
        except CommunicationError as exc:
            self.close()
            raise CallCancelled(f"the caller of this call ({self.addr}) is gone: the call is cancelled") from exc

    def send_quiet(self, seconds: float) -> None:
        """Announce that this backend may not answer pings for ``seconds`` (see _wire.QUIET)."""
        try:
            self.fs.send(w.PONG, 0, w.QUIET.pack(seconds))
        except CommunicationError:
            self.close()

    def send_reply(self, rid: int, kind: int, body: bytes, buffers: list) -> None:
        try:
            self.fs.send(kind, rid, body, buffers)
        except CommunicationError:
            self.close()

    def _next_request(self) -> tuple[int, bytes, list, list]:
        while True:
            kind, _flags, rid, body, buffers = self.fs.recv()
            if kind == w.REQUEST:
                return rid, body, buffers, self.fs.streams
            if kind == w.PING:
                self.fs.send(w.PONG, rid, b"")
            elif kind != w.PONG:
                raise StoreError(f"unexpected frame kind {kind} from a client")

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self.fs.close()
