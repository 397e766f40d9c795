"""TLS 1.3 for TCP connections (see :mod:`storage_api._wire`, *Transports*): contexts, the client's
check of a backend's certificate, and frame I/O over an ``SSLSocket``.

OpenSSL forbids using one SSL object from two threads at once, and our connections are read by
one thread while others send. :class:`TlsIO` therefore keeps the socket non-blocking and calls
OpenSSL under a lock, waiting for the socket (``poll``) outside it: a reader waiting for data never
holds up a sender. Imported only when a TCP connection is made, so ``import storage_api`` does not
load OpenSSL's TLS library.
"""

from __future__ import annotations

import hashlib
import select
import socket
import ssl
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from ._transport import PROGRESS_MIN, Spin
from .errors import AuthenticationError, CommunicationError, ConfigError

_COALESCE = 16 * 1024  # small parts are joined into one TLS record (at most 16 KiB of plaintext)
_MAX_IO = 64 << 20  # bytes per OpenSSL call: Python's ssl refuses more than INT_MAX at once
_contexts: dict[str, ssl.SSLContext] = {}  # by the CA certificates' PEM text
_contexts_lock = threading.Lock()


def client_context(*, cafile: str = "", cadata: str = "") -> ssl.SSLContext:
    """A context that accepts only TLS 1.3 servers with a certificate from the given CA."""
    if cafile:
        # Contexts are kept by the CA's content, not its path: a deployment made again in the
        # same folder (`down --purge`, then `up`) has a new CA in the same file.
        try:
            cadata = Path(cafile).read_text()
        except OSError as exc:
            raise ConfigError(f"cannot load the deployment CA ({cafile}): {exc}") from exc
    with _contexts_lock:
        ctx = _contexts.get(cadata)
        if ctx is None:
            ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
            ctx.minimum_version = ssl.TLSVersion.TLSv1_3
            ctx.check_hostname = False  # backends are checked by CA and id (see check_backend), not by name
            try:
                ctx.load_verify_locations(cadata=cadata or None)
            except (ssl.SSLError, ValueError, TypeError) as exc:
                raise ConfigError(f"cannot load the deployment CA ({cafile or 'from the deployment'}): {exc}") from exc
            _contexts[cadata] = ctx
    return ctx


def server_context(certfile: str, keyfile: str) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    ctx.num_tickets = 0  # no session resumption: nothing to send after the handshake
    try:
        ctx.load_cert_chain(certfile, keyfile)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(f"cannot load the backend's TLS certificate {certfile}: {exc}") from exc
    return ctx


def binding(cert_der: bytes) -> bytes:
    """What the handshake's proofs are bound to: the hash of the backend's certificate."""
    return hashlib.sha256(cert_der).digest()


def wrap_client(sock: socket.socket, ctx: ssl.SSLContext, deadline: float, expect_id: str | None) -> tuple[ssl.SSLSocket, bytes]:
    """TLS handshake as a client within ``deadline``; return the socket and the channel binding."""
    ssock = ctx.wrap_socket(sock, server_side=False, do_handshake_on_connect=False)
    try:
        ssock.settimeout(max(deadline - time.monotonic(), 1e-3))
        ssock.do_handshake()
    except ssl.SSLCertVerificationError as exc:
        ssock.close()
        raise AuthenticationError(f"backend's TLS certificate is not from the deployment CA: {exc.verify_message}") from exc
    except (OSError, ValueError) as exc:  # TimeoutError, SSLError, resets
        ssock.close()
        raise CommunicationError(f"TLS handshake failed: {exc}") from exc
    if expect_id is not None and common_name(ssock.getpeercert()) != expect_id:
        ssock.close()
        raise AuthenticationError(f"the backend's certificate is not backend {expect_id}'s")
    der = ssock.getpeercert(binary_form=True)
    assert der is not None
    return ssock, binding(der)


def common_name(cert: dict[str, Any] | None) -> str:
    for rdn in (cert or {}).get("subject", ()):
        for name, value in rdn:
            if name == "commonName":
                return value
    return ""


class TlsIO:
    """Frame I/O on a TLS socket, safe with one reader and any number of senders (see above)."""

    def __init__(self, sock: ssl.SSLSocket) -> None:
        sock.setblocking(False)
        self.sock = sock
        self._fd = sock.fileno()
        self._lock = threading.Lock()
        self._readable = select.poll()  # used by the one reading thread only
        self._readable.register(self._fd, select.POLLIN)

    def recv_into(self, into: memoryview, spin: Spin) -> int:
        """Bytes received into ``into`` (0: the peer closed), waiting as long as it takes.

        Before sleeping it polls the socket as ``spin`` says (see :class:`._transport.Spin`).
        """
        start = 0.0
        while True:
            with self._lock:
                try:
                    n = self.sock.recv_into(into, min(len(into), _MAX_IO))
                except ssl.SSLWantReadError:
                    want_write = False
                except ssl.SSLWantWriteError:
                    want_write = True
                except ssl.SSLZeroReturnError:
                    return 0
                else:
                    if start:
                        spin.missed(time.perf_counter() - start)
                    return n
            if want_write:
                self._wait(select.POLLOUT)
                continue
            budget = spin.budget() if not start else 0.0
            if budget:
                poll = self._readable.poll
                now = time.perf_counter()
                deadline = now + budget
                while not poll(0):
                    if time.perf_counter() > deadline:
                        break
                else:
                    spin.caught()
                    continue
                start = now
            self._readable.poll()  # returns at once if readable; shutdown() wakes it

    def write(self, parts: Sequence[Any], progress: Callable[[], None] = lambda: None) -> None:
        """Send ``parts``; ``progress()`` whenever some of it has left (liveness, see _rpc)."""
        for part in _coalesce(parts):
            whole = memoryview(part).cast("B")
            for at in range(0, len(whole), _MAX_IO):
                view = whole[at : at + _MAX_IO]
                while True:  # a write that would block is retried with the same buffer, as OpenSSL requires
                    with self._lock:
                        try:
                            self.sock.send(view)
                            break
                        except ssl.SSLWantWriteError:
                            wait = select.POLLOUT
                        except ssl.SSLWantReadError:
                            wait = select.POLLIN
                    self._wait(wait)
                    progress()  # writable again: the peer took bytes
                if len(view) >= PROGRESS_MIN:  # small sends (pings) leave even to a frozen peer
                    progress()

    def _wait(self, events: int) -> None:
        poller = select.poll()
        poller.register(self._fd, events)
        poller.poll()  # shutdown() wakes it (POLLHUP)

    def pending(self) -> bool:
        with self._lock:
            if self.sock.pending():
                return True
        try:
            socket.socket.recv(self.sock, 1, socket.MSG_PEEK | socket.MSG_DONTWAIT)
        except (BlockingIOError, InterruptedError):
            return False
        except OSError:
            pass
        return True  # bytes, the peer's close or an error: let the reader find out which

    def shutdown(self) -> None:
        # On the descriptor itself: SSLSocket.shutdown would drop the SSL object under a reader.
        socket.socket.shutdown(self.sock, socket.SHUT_RDWR)

    def close(self) -> None:
        with self._lock:
            self.sock.close()


def _coalesce(parts: Sequence[Any]) -> list[Any]:
    """Join runs of small parts, so that a frame (or a batch of them) goes out as one record."""
    out: list[Any] = []
    small: list[Any] = []
    size = 0
    for p in parts:
        n = memoryview(p).nbytes
        if not n:
            continue
        if n < _COALESCE and size + n <= _COALESCE:
            small.append(p)
            size += n
            continue
        if small:
            out.append(b"".join(small))
            small, size = [], 0
        if n < _COALESCE:
            small, size = [p], n
        else:
            out.append(p)
    if small:
        out.append(b"".join(small))
    return out
