"""The backend's network server: authenticated connections served by leader/follower threads.

Each connection has a small pool of threads. One of them, the *leader*, reads the next frame; as
soon as it has a whole request it passes the leadership on (growing the pool when nobody is free,
up to ``max_workers``) and serves the request itself. A request therefore runs in the thread that
read it, with no queue or hand-off on its path, while later requests on the same connection are
read and served concurrently. ``PING`` frames are answered by the leader at once, so liveness
checks succeed even while every worker is busy.

Anything that is not a valid frame from an authenticated peer closes that connection only.
"""

from __future__ import annotations

import logging
import socket
import threading
from typing import TYPE_CHECKING

from .. import _wire as w
from .._transport import FrameSocket, server_handshake
from ..errors import AuthenticationError, CommunicationError, ProtocolError, StoreError
from ._handlers import dispatch

if TYPE_CHECKING:
    from ._runtime import LocalBackend

log = logging.getLogger("storage.server")

HANDSHAKE_TIMEOUT = 5.0


class Server:
    """Accepts connections on its listening sockets (TCP, plus a local Unix socket on Linux)."""

    def __init__(self, backend: LocalBackend, socks: list[socket.socket], secret: bytes, max_workers: int) -> None:
        self.backend = backend
        self.socks = socks
        self._secret = secret
        self.max_workers = max_workers
        self._stopping = threading.Event()
        self._conns: set[Connection] = set()
        self._lock = threading.Lock()

    @property
    def port(self) -> int:
        return self.socks[0].getsockname()[1]

    def serve_forever(self) -> None:
        threads = [threading.Thread(target=self._accept, args=(s,), name="storage-api-accept", daemon=True)
                   for s in self.socks]
        for t in threads:
            t.start()
        for t in threads:
            t.join()

    def _accept(self, listener: socket.socket) -> None:
        while not self._stopping.is_set():
            try:
                sock, addr = listener.accept()
            except OSError:
                if self._stopping.is_set():
                    return
                continue
            threading.Thread(target=self._admit, args=(sock, addr or "local"), name="storage-api-conn",
                             daemon=True).start()

    def _admit(self, sock: socket.socket, addr: tuple) -> None:
        try:
            fs, _role = server_handshake(sock, self._secret, HANDSHAKE_TIMEOUT)
        except AuthenticationError:
            log.warning("refused connection from %s: wrong deployment secret", addr)
            sock.close()
            return
        except (StoreError, OSError) as exc:
            log.info("dropped connection from %s during handshake: %s", addr, exc)
            sock.close()
            return
        conn = Connection(fs, self, addr)
        with self._lock:
            self._conns.add(conn)
        try:
            conn.work()
        finally:
            with self._lock:
                self._conns.discard(conn)

    def stop(self) -> None:
        self._stopping.set()
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
    def __init__(self, fs: FrameSocket, server: Server, addr: tuple) -> None:
        self.fs = fs
        self.server = server
        self.addr = addr
        self._lead = threading.Lock()
        self._mutex = threading.Lock()
        self._idle = 0
        self._threads = 1
        self._closed = False

    def work(self) -> None:
        """Run one worker: alternate between leading (reading) and serving."""
        while True:
            with self._mutex:
                self._idle += 1
            self._lead.acquire()
            with self._mutex:
                self._idle -= 1
            if self._closed:
                self._lead.release()
                return
            try:
                rid, body, buffers = self._next_request()
            except Exception as exc:
                if not self._closed:
                    quiet = isinstance(exc, CommunicationError) and not isinstance(exc, ProtocolError)
                    log.log(logging.DEBUG if quiet else logging.WARNING, "closing connection from %s: %s", self.addr, exc)
                self.close()
                self._lead.release()
                return
            with self._mutex:
                grow = self._idle == 0 and self._threads < self.server.max_workers
                if grow:
                    self._threads += 1
            if grow:
                threading.Thread(target=self.work, name="storage-api-worker", daemon=True).start()
            self._lead.release()
            kind, rbody, rbuffers = dispatch(self.server.backend, body, buffers)
            try:
                self.fs.send(kind, rid, rbody, rbuffers)
            except CommunicationError:
                self.close()

    def _next_request(self) -> tuple[int, bytes, list[bytearray]]:
        while True:
            kind, _flags, rid, body, buffers = self.fs.recv()
            if kind == w.REQUEST:
                return rid, body, buffers
            if kind == w.PING:
                self.fs.send(w.PONG, rid, b"")
            elif kind != w.PONG:
                raise StoreError(f"unexpected frame kind {kind} from a client")

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self.fs.close()
