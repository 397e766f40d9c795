"""Authenticated frame sockets: the frame I/O of :mod:`storage_api._wire` (handshakes: :mod:`._handshake`).

A :class:`FrameSocket` is shared by many threads: concurrent sends are combined into one write;
receives are done by one thread at a time (the caller arranges that). Large buffers are sent with ``sendmsg``
scatter-gather straight from their memory and received with ``recv_into`` straight into the
``bytearray`` that becomes the object's memory: the protocol makes no full-size copies.
"""

from __future__ import annotations

import hmac
import mmap
import socket
import struct
import threading
import weakref
import time
from collections.abc import Callable, Sequence
from typing import Any

from . import _wire as w
from .errors import CommunicationError, ProtocolError

_RBUF = 256 * 1024  # receive buffer for small frames
_SMALL = 64 * 1024  # below this, header, lengths and body go out in one send
_IOV_MAX = 512
_BIG = 16 << 20  # incoming buffers at least this large are mapped, not allocated
_STREAM_MIN = 4 << 20  # STREAM buffers at least this large go to the backend's log as they arrive
_MAC_CHUNK = 1 << 20  # buffers are hashed in chunks this large while the rest is in flight
_SEND_SLICE = 1 << 20  # most bytes per sendmsg: a large frame shows progress (last_tx) as it leaves
# A send shows that the peer reads only if it is larger than what socket buffers take without it:
# a ping or a small request to a frozen backend leaves too, and must not count as progress.
PROGRESS_MIN = 256 << 10

Buffer = Any  # bytes-like: bytes, bytearray, memoryview

# Bytes this process wrote to / read from its frame sockets (headers, MACs, bodies and buffers;
# not the handshake), per kind of connection: "client" (opened with the client role), "peer"
# (opened by a backend to another backend), "served_client" / "served_peer" (accepted by a backend).
# traffic() is their interface for tools that report the bytes their runs moved (a backend's Stats
# reply carries its own); nothing in the store depends on them.
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

    def __init__(self, io: Any, send_key: bytes | None = None, recv_key: bytes | None = None) -> None:
        """``io`` moves the bytes (:class:`PlainIO`, or ``_tls.TlsIO``); without keys the frames
        carry no MACs, which only a TLS connection allows (TLS authenticates every byte)."""
        self.io = io
        self.sock = io.sock
        self._send_key = send_key
        self._recv_key = recv_key
        self._send_macs = None if send_key is None else w.Macs(send_key)
        self._recv_macs = None if recv_key is None else w.Macs(recv_key)
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
        self.last_tx = 0.0  # when a send last made progress (the peer is taking our bytes)
        self.closed = False
        # Backends set this: called with a buffer's length for STREAM frames, it returns an object
        # with start(buffer), advance(received) and done(ok) that writes the buffer as it arrives.
        self.stream_sink: Callable[[int], Any] | None = None
        self.streams: list[Any] = []  # the sinks of the last frame received
        self.spin: Spin | None = None  # how long to poll before blocking in recv (see Spin)
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
        if buffers:
            views = [memoryview(b).cast("B") if not isinstance(b, (bytes, bytearray)) else b for b in buffers]
            lengths = struct.pack(f"<{len(views)}Q", *(len(v) for v in views))
        else:  # most frames: no buffers
            views, lengths = [], b""
        head = w.HEAD.pack(kind, flags, len(views), req_id & 0xFFFFFFFF, len(body))
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
                for frame in batch:
                    parts = self._frame_parts(frame, parts)
                self._write(parts)
        except OSError as exc:
            with self._queue_lock:
                self._sending = False
                self._queue.clear()
            self.closed = True
            raise CommunicationError(f"connection lost while sending: {exc}") from exc

    def _frame_parts(self, frame: tuple[bytes, bytes, bytes, list[Any]], parts: list[Any]) -> list[Any]:
        """Append a frame's parts to ``parts`` (MACs computed here, in sending order).

        Large buffers are written here, chunk by chunk as their MAC is computed, so the peer
        receives (and checks) one chunk while we hash the next; ``parts`` is flushed first.
        """
        head, lengths, body, views = frame
        key, seq = self._send_key, self._send_seq
        self._send_seq += 1
        if key is None:  # TLS: no MACs
            if len(body) + len(lengths) < _SMALL:
                parts.append(b"".join((head, lengths, body)))
            else:
                parts += (head, lengths, body)
            parts += views
            self.sent += len(head) + len(lengths) + len(body) + sum(memoryview(v).nbytes for v in views)
            return parts
        trailer = self._send_macs.body(seq, head, lengths, body)
        first = (head, self._send_macs.head(seq, head), lengths, body, trailer)
        if len(body) + len(lengths) < _SMALL:
            parts.append(b"".join(first))
        else:
            parts += first
        self.sent += w.HEADER_SIZE + len(lengths) + len(body) + w.MAC_BYTES
        if not views:
            return parts
        mac = w.buffers_mac(key, seq, head, lengths)
        for v in views:
            n = len(v) if isinstance(v, (bytes, bytearray)) else v.nbytes
            self.sent += n
            if n < 2 * _MAC_CHUNK:
                mac.update(v)
                parts.append(v)
                continue
            self._write(parts)
            parts = []
            whole = memoryview(v)
            for at in range(0, n, _MAC_CHUNK):
                chunk = whole[at : at + _MAC_CHUNK]
                mac.update(chunk)
                self._write([chunk])
        parts.append(mac.digest()[: w.MAC_BYTES])
        self.sent += w.MAC_BYTES
        return parts

    def _write(self, parts: list[Any]) -> None:
        if parts:
            self.io.write(parts, self._sent_some)

    def _sent_some(self) -> None:
        """Bytes left: the peer is taking them (liveness is judged by progress, see _rpc)."""
        self.last_tx = time.monotonic()

    # -------------------------------------------------------------- receiving
    def recv(self) -> tuple[int, int, int, bytes, list[Any]]:
        """Receive one frame: ``(kind, flags, req_id, body, buffers)``.

        Each part is authenticated before anything is allocated for the next (see :mod:`._wire`).
        """
        key, seq = self._recv_key, self._recv_seq
        if key is None:  # TLS: no MACs (see _wire)
            head = self._read(w.HEAD.size)
        else:
            header = self._read(w.HEADER_SIZE)
            head = header[: w.HEAD.size]
            if not hmac.compare_digest(self._recv_macs.head(seq, head), header[w.HEAD.size :]):
                raise ProtocolError("frame header failed authentication (bad MAC)")
        kind, flags, nbuf, req_id, body_len = w.HEAD.unpack(head)
        w.check_header(kind, nbuf, body_len)
        lengths_raw = self._read(8 * nbuf) if nbuf else b""
        body = self._read(body_len)
        if key is not None and not hmac.compare_digest(self._recv_macs.body(seq, head, lengths_raw, body),
                                                       self._read(w.MAC_BYTES)):
            raise ProtocolError("frame failed authentication (bad MAC)")
        buffers: list[Any] = []
        self.streams = []
        if nbuf:
            lengths = struct.unpack(f"<{nbuf}Q", lengths_raw)
            w.check_lengths(lengths)
            mac = None if key is None else w.buffers_mac(key, seq, head, lengths_raw)
            sink = self.stream_sink if flags & w.FLAG_STREAM else None
            for n in lengths:
                stream = sink(n) if sink is not None and n >= _STREAM_MIN else None
                buf = _allocate(n, aligned=stream is not None)
                self.streams.append(stream)
                if stream is None:
                    self._read_into(memoryview(buf), mac=mac)
                else:
                    stream.start(buf)
                    try:
                        self._read_into(memoryview(buf), stream.advance, mac)
                    except BaseException:
                        stream.done(ok=False)
                        raise
                    stream.done()
                buffers.append(buf)
            if mac is not None and not hmac.compare_digest(mac.digest()[: w.MAC_BYTES], self._read(w.MAC_BYTES)):
                # The streams above wrote unreachable log records at most: nothing refers to them.
                raise ProtocolError("frame buffers failed authentication (bad MAC)")
        self._recv_seq += 1
        if nbuf:
            self.received += len(lengths_raw) + sum(len(b) for b in buffers) + (0 if key is None else w.MAC_BYTES)
        self.received += w.HEAD.size + body_len + (0 if key is None else 2 * w.MAC_BYTES)
        return kind, flags, req_id, body, buffers

    def pending(self) -> bool:
        """Whether a read would not block: more bytes arrived (in our buffer or the socket's), or
        the peer closed."""
        return self._rend > self._rpos or self.io.pending()

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

    def _read_into(self, dest: memoryview, progress: Callable[[int], None] | None = None, mac: Any = None) -> None:
        avail = self._rend - self._rpos
        take = min(avail, len(dest))
        if take:
            dest[:take] = self._rview[self._rpos : self._rpos + take]
            self._rpos += take
        got, hashed = take, 0
        while got < len(dest):
            got += self._recv_some(dest[got:])
            if progress is not None:
                progress(got)
            if mac is not None and got - hashed >= _MAC_CHUNK:  # hash while the rest arrives
                mac.update(dest[hashed:got])
                hashed = got
        if mac is not None and hashed < got:
            mac.update(dest[hashed:got])

    def _recv_some(self, into: memoryview) -> int:
        try:
            n = self.io.recv_into(into, self.spin or _NO_SPIN)
        except OSError as exc:
            self.closed = True
            raise CommunicationError(f"connection lost: {exc}") from exc
        if n == 0:
            self.closed = True
            raise CommunicationError("connection closed by peer")
        self.last_rx = time.monotonic()
        return n

    def shutdown(self) -> None:
        """Unblock any thread reading or writing this socket; the connection is then dead."""
        self.closed = True
        try:
            self.io.shutdown()
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
            self.io.shutdown()
        except OSError:
            pass
        self.io.close()


class Spin:
    """How long one reader polls for its next bytes before it sleeps, adapted to what polling catches.

    Polling pays when the peer answers within the budget: the reader takes the bytes without the
    wake-up that a sleep costs (an inter-processor interrupt, which on a virtual machine costs more
    than a whole request). It costs when the answer is slow, above all on a busy machine, where the
    CPU we poll on is one the peer or other work needs. So a poll that ended in vain, with the bytes
    arriving later than even the full budget could have caught, halves the budget; below an eighth
    of the limit polling stops, and one full poll is tried again every :attr:`RETRY` seconds. Bytes
    that the full budget would have caught (or did catch) restore it. One reader uses a Spin at a
    time (no lock).
    """

    RETRY = 0.05
    __slots__ = ("limit", "_budget", "_retry_at")

    def __init__(self, limit: float) -> None:
        self.limit = limit  # seconds; 0: never poll
        self._budget = limit
        self._retry_at = 0.0

    def budget(self) -> float:
        """Seconds to poll before sleeping, for the receive about to start."""
        if self._budget or not self.limit:
            return self._budget
        if time.perf_counter() >= self._retry_at:  # backed off: try a full poll now and then
            return self.limit
        return 0.0

    def caught(self) -> None:
        self._budget = self.limit

    def missed(self, waited: float) -> None:
        """The poll ended without bytes; they came ``waited`` seconds after it started."""
        if waited <= self.limit:  # a budget cut earlier would have caught them: restore it
            self._budget = self.limit
            return
        budget = self._budget / 2
        if budget < self.limit / 8:
            budget = 0.0
            self._retry_at = time.perf_counter() + self.RETRY
        self._budget = budget


_NO_SPIN = Spin(0.0)


class PlainIO:
    """Frame I/O on a plain (Unix) socket: blocking calls, scatter-gather sends."""

    def __init__(self, sock: socket.socket) -> None:
        sock.setblocking(True)
        self.sock = sock

    def recv_into(self, into: memoryview, spin: Spin) -> int:
        """Bytes received into ``into`` (0: the peer closed); polls first as ``spin`` says."""
        sock = self.sock
        budget = spin.budget()
        if not budget:
            return sock.recv_into(into)
        start = time.perf_counter()
        deadline = start + budget
        while True:
            try:
                n = sock.recv_into(into, 0, socket.MSG_DONTWAIT)
            except BlockingIOError:
                if time.perf_counter() > deadline:
                    n = sock.recv_into(into)
                    spin.missed(time.perf_counter() - start)
                    return n
            else:
                spin.caught()
                return n

    def write(self, parts: list[Buffer], progress: Callable[[], None] = lambda: None) -> None:
        if len(parts) == 1:
            part = parts[0]
            n = len(part) if isinstance(part, bytes) else memoryview(part).nbytes
            if n <= _SEND_SLICE:
                self.sock.sendall(part)
                if n >= PROGRESS_MIN:  # a large buffer leaves as 1 MiB pieces
                    progress()
                return
        _sendmsg_all(self.sock, parts, progress)

    def pending(self) -> bool:
        """Whether a read would not block: bytes arrived, the peer closed, or the socket failed."""
        try:
            self.sock.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT)
        except (BlockingIOError, InterruptedError):
            return False
        except OSError:
            pass
        return True  # let the reader find out what it is

    def shutdown(self) -> None:
        self.sock.shutdown(socket.SHUT_RDWR)

    def close(self) -> None:
        self.sock.close()


def _allocate(n: int, aligned: bool = False) -> Any:
    """Memory for an incoming buffer, which becomes the object's memory (e.g. a numpy array's).

    Large buffers, and those written to disk with O_DIRECT (``aligned``), are anonymous mappings:
    page-aligned, not zero-filled by us (the kernel supplies zero pages as they are first written,
    outside the GIL), and eligible for huge pages. Private ones, as the allocator's memory is: a
    forked child gets a copy, and a backend can watch them for writes (see ``_backend._dirty``).
    Smaller ones come from the allocator, which recycles memory between calls.
    """
    if n < _BIG and not aligned:
        return bytearray(n)
    private = getattr(mmap, "MAP_PRIVATE", None)  # POSIX; Windows maps have no flags
    m = mmap.mmap(-1, n) if private is None else mmap.mmap(-1, n, flags=private | mmap.MAP_ANONYMOUS)
    if hasattr(m, "madvise") and hasattr(mmap, "MADV_HUGEPAGE"):
        try:
            m.madvise(mmap.MADV_HUGEPAGE)
        except OSError:
            pass
    return m


def _sendmsg_all(sock: socket.socket, parts: list[Buffer], progress: Callable[[], None]) -> None:
    """Send every part, at most :data:`_SEND_SLICE` bytes per call, calling ``progress`` after each."""
    views = [memoryview(p).cast("B") for p in parts if len(p)]
    while views:
        batch: list[memoryview] = []
        room = _SEND_SLICE
        for v in views[:_IOV_MAX]:
            batch.append(v[:room])
            room -= len(batch[-1])
            if room <= 0:
                break
        sent = sock.sendmsg(batch)
        if sent >= PROGRESS_MIN:
            progress()
        while sent:
            first = views[0]
            if sent >= len(first):
                sent -= len(first)
                views.pop(0)
            else:
                views[0] = first[sent:]
                sent = 0


