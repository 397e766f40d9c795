"""Authenticated frame sockets: the handshake and frame I/O of :mod:`storage_api._wire`.

A :class:`FrameSocket` is shared by many threads: concurrent sends are combined into one write;
receives are done by one thread at a time (the caller arranges that). Large buffers are sent with ``sendmsg``
scatter-gather straight from their memory and received with ``recv_into`` straight into the
``bytearray`` that becomes the object's memory: the protocol makes no full-size copies.
"""

from __future__ import annotations

import hmac
import mmap
import os
import socket
import struct
import threading
import weakref
import time
from collections.abc import Callable, Sequence
from typing import Any

from . import _wire as w
from .errors import AuthenticationError, CommunicationError, ProtocolError

_RBUF = 256 * 1024  # receive buffer for small frames
_SMALL = 64 * 1024  # below this, header, lengths and body go out in one send
_IOV_MAX = 512
_BIG = 16 << 20  # incoming buffers at least this large are mapped, not allocated
_STREAM_MIN = 4 << 20  # STREAM buffers at least this large go to the backend's log as they arrive

Buffer = Any  # bytes-like: bytes, bytearray, memoryview

# Bytes this process wrote to / read from its frame sockets (headers, MACs, bodies and buffers;
# not the handshake), per kind of connection: "client" (opened with the client role), "peer"
# (opened by a backend to another backend), "served_client" / "served_peer" (accepted by a backend).
# workflows.executor reads them to report the bytes its runs moved between processes.
# Each socket counts its own bytes (no lock on the hot path: one thread sends at a time, one
# reads); closed sockets fold their counts into _closed.
_closed: dict[str, list[int]] = {}
_live: weakref.WeakSet[FrameSocket] = weakref.WeakSet()
_traffic_lock = threading.Lock()


def traffic() -> dict[str, tuple[int, int]]:
    """``label -> (bytes sent, bytes received)`` over this process's frame sockets so far."""
    with _traffic_lock:
        out = {k: [v[0], v[1]] for k, v in _closed.items()}
        for fs in list(_live):
            slot = out.setdefault(fs.label, [0, 0])
            slot[0] += fs.sent
            slot[1] += fs.received
    return {k: (v[0], v[1]) for k, v in out.items()}


class FrameSocket:
    """One authenticated connection carrying frames in both directions."""

    def __init__(self, sock: socket.socket, send_key: bytes, recv_key: bytes) -> None:
        self.sock = sock
        self._send_key = send_key
        self._recv_key = recv_key
        self._queue_lock = threading.Lock()
        self._queue: list[tuple[bytes, bytes, bytes, list[Any]]] = []
        self._sending = False
        self._send_seq = 0
        self._recv_seq = 0
        self._rbuf = bytearray(_RBUF)
        self._rview = memoryview(self._rbuf)
        self._rpos = 0
        self._rend = 0
        self.last_rx = time.monotonic()
        self.closed = False
        # Backends set this: called with a buffer's length for STREAM frames, it returns an object
        # with start(buffer), advance(received) and done(ok) that writes the buffer as it arrives.
        self.stream_sink: Callable[[int], Any] | None = None
        self.streams: list[Any] = []  # the sinks of the last frame received
        self.spin = 0.0  # seconds to poll before blocking in recv (see _spin_recv)
        self.label = "other"  # which traffic counter its bytes go to (see traffic())
        self.sent = 0
        self.received = 0
        with _traffic_lock:
            _live.add(self)

    # ---------------------------------------------------------------- sending
    def send(self, kind: int, req_id: int, body: bytes, buffers: Sequence[Buffer] = (), flags: int = 0) -> None:
        """Send one frame; raises :class:`CommunicationError` if the connection is gone.

        Threads sending at the same time combine: whoever finds another thread sending queues its
        frame and returns, and the sending thread writes every queued frame with one ``sendmsg``.
        Frames keep the order in which they were queued (the MAC sequence is assigned then).
        """
        views = [memoryview(b).cast("B") if not isinstance(b, (bytes, bytearray)) else b for b in buffers]
        lengths = struct.pack(f"<{len(views)}Q", *(len(v) for v in views)) if views else b""
        head = struct.pack("<BBHII", kind, flags, len(views), req_id & 0xFFFFFFFF, len(body))
        frame = (head, lengths, body, views)
        with self._queue_lock:
            if self.closed:
                raise CommunicationError("connection is closed")
            self._queue.append(frame)
            if self._sending:
                return
            self._sending = True
        try:
            while True:
                with self._queue_lock:
                    batch, self._queue = self._queue, []
                    if not batch:
                        self._sending = False
                        return
                parts: list[Any] = []
                nbytes = 0
                for head, lengths, body, views in batch:
                    mac = w.frame_mac(self._send_key, self._send_seq, head, lengths, body)
                    self._send_seq += 1
                    if len(body) + len(lengths) < _SMALL:
                        parts.append(b"".join((head, mac, lengths, body)))
                    else:
                        parts += [head + mac, lengths, body]
                    nbytes += len(head) + len(mac) + len(lengths) + len(body)
                    if views:
                        parts += views
                        nbytes += sum(len(v) if isinstance(v, (bytes, bytearray)) else v.nbytes for v in views)
                self.sent += nbytes
                if len(parts) == 1:
                    self.sock.sendall(parts[0])
                else:
                    _sendmsg_all(self.sock, parts)
        except OSError as exc:
            with self._queue_lock:
                self._sending = False
                self._queue.clear()
            self.closed = True
            raise CommunicationError(f"connection lost while sending: {exc}") from exc

    # -------------------------------------------------------------- receiving
    def recv(self) -> tuple[int, int, int, bytes, list[Any]]:
        """Receive one frame: ``(kind, flags, req_id, body, buffers)``."""
        head = self._read(w.HEADER.size)
        kind, flags, nbuf, req_id, body_len, mac = w.HEADER.unpack(head)
        w.check_header(kind, nbuf, body_len)
        lengths_raw = self._read(8 * nbuf) if nbuf else b""
        body = self._read(body_len)
        expected = w.frame_mac(self._recv_key, self._recv_seq, head[: w.HEADER_SIGNED], lengths_raw, body)
        if not hmac.compare_digest(expected, mac):
            raise ProtocolError("frame failed authentication (bad MAC)")
        self._recv_seq += 1
        buffers: list[Any] = []
        self.streams = []
        if nbuf:
            lengths = struct.unpack(f"<{nbuf}Q", lengths_raw)
            w.check_lengths(lengths)
            sink = self.stream_sink if flags & w.FLAG_STREAM else None
            for n in lengths:
                stream = sink(n) if sink is not None and n >= _STREAM_MIN else None
                buf = _allocate(n, aligned=stream is not None)
                self.streams.append(stream)
                if stream is None:
                    self._read_into(memoryview(buf))
                else:
                    stream.start(buf)
                    try:
                        self._read_into(memoryview(buf), stream.advance)
                    except BaseException:
                        stream.done(ok=False)
                        raise
                    stream.done()
                buffers.append(buf)
        self.received += len(head) + len(lengths_raw) + body_len + (sum(len(b) for b in buffers) if nbuf else 0)
        return kind, flags, req_id, body, buffers

    def pending(self) -> bool:
        """Whether more bytes have arrived (in our buffer or in the socket's)."""
        if self._rend > self._rpos:
            return True
        try:
            return bool(self.sock.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT))
        except (BlockingIOError, InterruptedError):
            return False
        except OSError:
            return True  # let the reader find out what is wrong

    def _read(self, n: int) -> bytes:
        avail = self._rend - self._rpos
        if avail >= n:
            out = bytes(self._rview[self._rpos : self._rpos + n])
            self._rpos += n
            return out
        if n > _RBUF // 2:  # a large body: receive it where it stays, no second copy
            buf = bytearray(n)
            self._read_into(memoryview(buf))
            return buf  # type: ignore[return-value]  # bytes-like is all callers need
        if self._rpos:  # compact
            self._rbuf[:avail] = self._rview[self._rpos : self._rend]
            self._rpos, self._rend = 0, avail
        while self._rend < n:
            self._rend += self._recv_some(self._rview[self._rend :])
        out = bytes(self._rview[:n])
        self._rpos = n
        return out

    def _read_into(self, dest: memoryview, progress: Callable[[int], None] | None = None) -> None:
        avail = self._rend - self._rpos
        take = min(avail, len(dest))
        if take:
            dest[:take] = self._rview[self._rpos : self._rpos + take]
            self._rpos += take
        got = take
        while got < len(dest):
            got += self._recv_some(dest[got:])
            if progress is not None:
                progress(got)

    def _recv_some(self, into: memoryview) -> int:
        try:
            if self.spin:
                n = self._spin_recv(into)
            else:
                n = self.sock.recv_into(into)
        except OSError as exc:
            self.closed = True
            raise CommunicationError(f"connection lost: {exc}") from exc
        if n == 0:
            self.closed = True
            raise CommunicationError("connection closed by peer")
        self.last_rx = time.monotonic()
        return n

    def _spin_recv(self, into: memoryview) -> int:
        """Poll without blocking for up to ``spin`` seconds before sleeping in ``recv``.

        A reply (or the next request) usually arrives within tens of microseconds. Catching it
        while still running spares the peer the cost of waking us, an inter-processor interrupt
        that on a virtual machine costs more than the whole request.
        """
        sock = self.sock
        deadline = time.perf_counter() + self.spin
        while True:
            try:
                return sock.recv_into(into, 0, socket.MSG_DONTWAIT)
            except BlockingIOError:
                if time.perf_counter() > deadline:
                    return sock.recv_into(into)

    def shutdown(self) -> None:
        """Unblock any thread reading or writing this socket; the connection is then dead."""
        self.closed = True
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass

    def close(self) -> None:
        self.closed = True
        with _traffic_lock:
            if self in _live:
                _live.discard(self)
                slot = _closed.setdefault(self.label, [0, 0])
                slot[0] += self.sent
                slot[1] += self.received
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.sock.close()


def _allocate(n: int, aligned: bool = False) -> Any:
    """Memory for an incoming buffer, which becomes the object's memory (e.g. a numpy array's).

    Large buffers, and those written to disk with O_DIRECT (``aligned``), are anonymous mappings:
    page-aligned, not zero-filled by us (the kernel supplies zero pages as they are first written,
    outside the GIL), and eligible for huge pages. Smaller ones come from the allocator, which
    recycles memory between calls.
    """
    if n < _BIG and not aligned:
        return bytearray(n)
    m = mmap.mmap(-1, n)
    if hasattr(m, "madvise") and hasattr(mmap, "MADV_HUGEPAGE"):
        try:
            m.madvise(mmap.MADV_HUGEPAGE)
        except OSError:
            pass
    return m


def _sendmsg_all(sock: socket.socket, parts: list[Buffer]) -> None:
    views = [memoryview(p).cast("B") for p in parts if len(p)]
    while views:
        sent = sock.sendmsg(views[:_IOV_MAX])
        while sent:
            first = views[0]
            if sent >= len(first):
                sent -= len(first)
                views.pop(0)
            else:
                views[0] = first[sent:]
                sent = 0


def _recv_exact(sock: socket.socket, n: int) -> bytes:
    data = bytearray()
    while len(data) < n:
        chunk = sock.recv(n - len(data))
        if not chunk:
            raise CommunicationError("connection closed during handshake")
        data += chunk
    return bytes(data)


def _tune(sock: socket.socket) -> None:
    if sock.family in (socket.AF_INET, socket.AF_INET6):
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)


def client_handshake(sock: socket.socket, secret: bytes, role: int, timeout: float) -> FrameSocket:
    """Authenticate to a backend over a connected socket (both ways)."""
    _tune(sock)
    sock.settimeout(timeout)
    try:
        server_nonce = w.check_hello(_recv_exact(sock, w.HELLO.size))
        client_nonce = os.urandom(w.NONCE_BYTES)
        proof = w.client_proof(secret, role, server_nonce, client_nonce)
        sock.sendall(w.AUTH.pack(w.MAGIC, w.VERSION, role, client_nonce, proof))
        status, their_proof = w.WELCOME.unpack(_recv_exact(sock, w.WELCOME.size))
    except TimeoutError as exc:
        raise CommunicationError("backend did not complete the handshake in time") from exc
    except OSError as exc:
        raise CommunicationError(f"handshake failed: {exc}") from exc
    except struct.error as exc:
        raise ProtocolError("malformed handshake") from exc
    if status != 0:
        raise AuthenticationError("backend refused our credentials (wrong deployment secret)")
    if not hmac.compare_digest(their_proof, w.server_proof(secret, server_nonce, client_nonce)):
        raise AuthenticationError("backend failed to prove it knows the deployment secret")
    c2s, s2c = w.session_keys(secret, server_nonce, client_nonce)
    sock.settimeout(None)
    fs = FrameSocket(sock, c2s, s2c)
    fs.label = "client" if role == w.ROLE_CLIENT else "peer"
    return fs


def server_handshake(sock: socket.socket, secret: bytes, timeout: float) -> tuple[FrameSocket, int]:
    """Authenticate a freshly accepted connection; return the frame socket and the peer's role."""
    _tune(sock)
    sock.settimeout(timeout)
    server_nonce = os.urandom(w.NONCE_BYTES)
    try:
        sock.sendall(w.HELLO.pack(w.MAGIC, w.VERSION, 0, server_nonce))
        prefix = _recv_exact(sock, 6)  # magic, version, role: reject strangers without waiting
        if prefix[:4] != w.MAGIC or prefix[4] != w.VERSION:
            raise ProtocolError("peer does not speak the storage_api protocol")
        data = prefix + _recv_exact(sock, w.AUTH.size - 6)
        try:
            role, client_nonce = w.check_auth(data, secret, server_nonce)
        except AuthenticationError:
            sock.sendall(w.WELCOME.pack(1, bytes(32)))
            raise
        sock.sendall(w.WELCOME.pack(0, w.server_proof(secret, server_nonce, client_nonce)))
    except TimeoutError as exc:
        raise ProtocolError("handshake timed out") from exc
    except struct.error as exc:
        raise ProtocolError("malformed handshake") from exc
    c2s, s2c = w.session_keys(secret, server_nonce, client_nonce)
    sock.settimeout(None)
    fs = FrameSocket(sock, s2c, c2s)
    fs.label = "served_client" if role == w.ROLE_CLIENT else "served_peer"
    return fs, role


def local_socket_name(backend_id: str) -> str:
    """The abstract Unix socket a backend also listens on (Linux): same-host clients skip TCP."""
    return f"\0storage-api.{backend_id}"


def connect(host: str, port: int, secret: bytes, *, role: int = w.ROLE_CLIENT, timeout: float = 2.0,
            unix: str | None = None) -> FrameSocket:
    """Open and authenticate a connection to a backend (over ``unix`` first when given)."""
    sock: socket.socket | None = None
    if unix and hasattr(socket, "AF_UNIX"):
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(timeout)
        try:
            sock.connect(unix)
        except OSError:  # not on the backend's host (or namespace): use TCP
            sock.close()
            sock = None
    if sock is None:
        try:
            sock = socket.create_connection((host, port), timeout=timeout)
        except OSError as exc:
            raise CommunicationError(f"cannot reach backend at {host}:{port}: {exc}") from exc
    try:
        return client_handshake(sock, secret, role, timeout)
    except BaseException:
        sock.close()
        raise
