"""Client side of a connection: many threads multiplex their requests on one socket.

No dedicated reader thread sits between the socket and the caller. A calling thread sends its
request, then either becomes the *leader* and reads frames itself until its own reply arrives
(handing other threads their replies on the way), or, if another thread is already reading, waits
to be handed its reply or the leadership. A single-threaded caller therefore pays one send and one
receive per call and no thread switch. Calls started with ``wait=False`` (futures) are completed by
a small pump thread that reads whenever such calls are outstanding.

Liveness is judged by progress, not by a deadline on the whole call: sockets are blocking (a
timeout would cost a ``poll`` per receive). A watchdog thread per client looks at channels with
requests pending a few times per ``liveness_timeout``: it pings a silent backend, and gives up on
one before it has been silent for ``liveness_timeout`` seconds: its socket is shut down, which
fails every pending request with :class:`BackendUnavailable`. A frame still arriving, or still
leaving (the backend is taking our bytes: a 2 GiB argument on a slow link), is not silence. A call
to a dead or frozen backend never hangs; a long transfer to a live one is never cut. A backend
about to load modules for the first time (seconds with the interpreter lock held, for torch)
announces the silence (a ``PONG`` carrying its length, :data:`~._wire.QUIET`, at most
:data:`MAX_QUIET` taken), and its end (the same with 0): the channel does not give up between.

Payloads over the wire limits (:mod:`storage_api._wire`) are refused before anything is sent,
with :class:`~storage_api.errors.PayloadTooLarge`.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any

from . import _wire as w
from ._transport import FrameSocket, Spin
from .errors import BackendUnavailable, CommunicationError, StoreError

ReplyFrame = tuple[int, bytes, list[bytearray]]  # kind, body, buffers of a reply (REPLY or ERROR)

WATCH_FRACTION = 1 / 8  # the watchdog looks every liveness_timeout / 8: calls fail within the timeout
MAX_QUIET = 300.0  # the longest announced silence a channel waits out (seconds)


class _Slot:
    __slots__ = ("frame", "error", "gate", "signaled", "future", "on_event")

    def __init__(self, future: Future | None, on_event: Callable[[bytes], None] | None) -> None:
        self.frame: ReplyFrame | None = None
        self.error: BaseException | None = None
        self.gate = threading.Lock()
        self.gate.acquire()
        self.signaled = False
        self.future = future
        self.on_event = on_event


class Channel:
    """A multiplexed request/reply channel to one backend."""

    def __init__(self, fs: FrameSocket, name: str, liveness_timeout: float,
                 decode: Callable[[ReplyFrame], Any]) -> None:
        self.fs = fs
        self.name = name
        self._liveness = liveness_timeout
        self._decode = decode  # turns a reply frame into a value or raises
        self._mutex = threading.Lock()
        self._reader = threading.RLock()
        self._pending: dict[int, _Slot] = {}
        self._next_id = 1
        self._ping_sent: float | None = None
        self._quiet_until = 0.0  # the backend announced it may not answer until then
        self._broken: BaseException | None = None
        self._async = 0
        self._pump: threading.Thread | None = None
        self._abort: BaseException | None = None
        self.spin: Spin | None = None  # polling for replies (see _transport.Spin)

    @property
    def usable(self) -> bool:
        return self._broken is None and not self.fs.closed

    # ------------------------------------------------------------ requests
    def request(self, body: bytes, buffers: list[Any], *, wait: bool = True, flags: int = 0,
                on_event: Callable[[bytes], None] | None = None) -> Any:
        """Send a request; return its decoded result (``wait``) or a Future of it."""
        w.check_payload(len(body), buffers)
        future: Future | None = None if wait else Future()
        slot = _Slot(future, on_event)
        with self._mutex:
            if self._broken is not None:
                raise self._broken
            rid = self._next_id
            self._next_id = (rid + 1) & 0xFFFFFFFF or 1
            if not self._pending:
                self.fs.last_rx = time.monotonic()  # silence is measured from now on
            self._pending[rid] = slot
            if future is not None:
                self._async += 1
        try:
            self.fs.send(w.REQUEST, rid, body, buffers, flags)
        except CommunicationError as exc:
            self._fail(exc)
        if future is not None:
            self._ensure_pump()
            return future
        try:
            self._wait(slot)
        except BaseException:
            # Interrupted (Ctrl-C) while waiting: the call is abandoned, and the connection may
            # stop in the middle of a frame. Closing it also tells the backend, which cancels the
            # call at its next progress report (CallCancelled). The next call reconnects.
            self._fail(CommunicationError("a call on this connection was interrupted"))
            raise
        if slot.error is not None:
            raise slot.error
        assert slot.frame is not None
        return self._decode(slot.frame)

    def _wait(self, slot: _Slot) -> None:
        while slot.frame is None and slot.error is None:
            if self._reader.acquire(blocking=False):
                try:
                    self._read_until(lambda: slot.frame is not None or slot.error is not None)
                finally:
                    self._reader.release()
                    self._handoff()
            elif slot.gate.acquire(timeout=0.05):  # woken: by our reply, or to take over reading
                with self._mutex:
                    slot.signaled = False

    def _handoff(self) -> None:
        """Wake one waiting thread so that someone reads while replies are outstanding."""
        with self._mutex:
            for s in self._pending.values():
                if s.future is None and not s.signaled:
                    s.signaled = True
                    s.gate.release()
                    return

    def _signal(self, slot: _Slot) -> None:
        if slot.future is not None:
            return
        with self._mutex:
            if not slot.signaled:
                slot.signaled = True
                slot.gate.release()

    # ------------------------------------------------------------- reading
    def _read_until(self, done: Callable[[], bool]) -> None:
        fs = self.fs
        while not done():
            # Poll before sleeping only when ours is the one call in flight: with several, replies
            # keep coming anyway and the other callers need the interpreter to send theirs.
            fs.spin = self.spin if len(self._pending) <= 1 else None
            try:
                kind, _flags, rid, body, buffers = fs.recv()
            except BaseException as exc:  # the connection is unusable for everyone
                self._fail(self._abort or (exc if isinstance(exc, StoreError) else CommunicationError(repr(exc))))
                if not isinstance(exc, Exception):  # KeyboardInterrupt and friends still propagate
                    raise
                return
            if kind == w.PONG:
                self._ping_sent = None
                if len(body) == w.QUIET.size:  # a silence announced (0: over)
                    quiet = w.QUIET.unpack(body)[0]
                    self._quiet_until = time.monotonic() + min(quiet, MAX_QUIET) if quiet > 0 else 0.0
                continue
            if kind == w.PING:
                self.fs.send(w.PONG, rid, b"")
                continue
            with self._mutex:
                slot = self._pending.get(rid) if kind == w.EVENT else self._pending.pop(rid, None)
            if slot is None:
                continue
            if kind == w.EVENT:
                if slot.on_event is not None:
                    try:
                        slot.on_event(body)
                    except Exception:  # a failing progress callback must not kill the call
                        pass
                continue
            self._complete(slot, (kind, body, buffers))

    def _complete(self, slot: _Slot, frame: ReplyFrame) -> None:
        if slot.future is None:
            slot.frame = frame
            self._signal(slot)
            return
        with self._mutex:
            self._async -= 1
        try:
            value = self._decode(frame)
        except BaseException as exc:
            slot.future.set_exception(exc)
        else:
            slot.future.set_result(value)

    def check_liveness(self, now: float, late: float = 0.0) -> None:
        """Called by the watchdog: ping a silent backend, give up on one silent for too long.

        ``late`` is how much later than planned the watchdog runs: a client process starved of
        CPU measures a silence of its own making, so it looks again before giving up. Bytes that
        arrived but that our reader has not taken yet are not silence either.
        """
        with self._mutex:
            if not self._pending or self._broken is not None:
                return
        silence = now - max(self.fs.last_rx, self.fs.last_tx)
        if (silence >= self._liveness * (1 - WATCH_FRACTION)  # the next check would be too late
                and late < self._liveness * WATCH_FRACTION and now >= self._quiet_until and not self._unread()):
            self._abort = BackendUnavailable(f"backend {self.name} did not answer for {silence:.1f}s")
            self.fs.shutdown()  # wakes the reader, which fails every pending request
            if not self._reader.acquire(blocking=False):
                return
            try:  # nobody was reading (only futures pending without a pump yet): fail them here
                self._fail(self._abort)
            finally:
                self._reader.release()
            return
        if silence >= self._liveness / 4 and (self._ping_sent is None or now - self._ping_sent > self._liveness / 4):
            self._ping_sent = now
            try:
                self.fs.send(w.PING, 0, b"")
            except CommunicationError:
                pass

    def _unread(self) -> bool:
        """Whether a reader is at work and bytes wait for it (the peer is alive, we are slow)."""
        if self._reader.acquire(blocking=False):
            self._reader.release()
            return False
        return self.fs.pending()

    def _fail(self, exc: BaseException) -> None:
        if not isinstance(exc, CommunicationError):
            exc = CommunicationError(str(exc))
        if isinstance(exc, CommunicationError) and not isinstance(exc, BackendUnavailable):
            exc = BackendUnavailable(f"lost connection to backend {self.name}: {exc} (`storage-api status` shows "
                                     "whether it is alive)")
        with self._mutex:
            if self._broken is None:
                self._broken = exc
            pending, self._pending = self._pending, {}
            self._async = 0
        self.fs.close()
        for slot in pending.values():
            if slot.future is not None:
                if not slot.future.done():
                    slot.future.set_exception(exc)
            else:
                slot.error = exc
                self._signal(slot)

    # ---------------------------------------------------------------- pump
    def _ensure_pump(self) -> None:
        with self._mutex:
            if self._pump is not None and self._pump.is_alive():
                return
            self._pump = threading.Thread(target=self._run_pump, name=f"storage-api-pump-{self.name}", daemon=True)
            self._pump.start()

    def _run_pump(self) -> None:
        while True:
            with self._mutex:
                if self._async <= 0 or self._broken is not None:
                    self._pump = None
                    return
            if not self._reader.acquire(timeout=0.05):
                continue
            try:
                self._read_until(lambda: self._async <= 0 or self._broken is not None)
            finally:
                self._reader.release()
                self._handoff()

    def close(self) -> None:
        self._fail(CommunicationError("channel closed"))
