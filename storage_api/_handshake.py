"""Handshakes (see :mod:`storage_api._wire`): the client's, blocking under one deadline, and the
backend's, as non-blocking state machines that one thread drives for every pending connection.

A server-side handshake is an object with ``sock`` (what to poll), ``step()`` (do whatever I/O is
possible without blocking; return the selector events to wait for, or 0 once authenticated) and
``result()`` (the :class:`~storage_api._transport.FrameSocket` and the :class:`Peer`). ``step``
raises :class:`AuthenticationError` for a peer with the wrong credentials and
:class:`ProtocolError` or :class:`CommunicationError` for anything else that ends the connection.
"""

from __future__ import annotations

import hmac
import os
import selectors
import socket
import struct
import time
from dataclasses import dataclass

from . import _wire as w
from ._transport import FrameSocket
from .errors import AuthenticationError, CommunicationError, ProtocolError


@dataclass(frozen=True)
class Peer:
    """Who authenticated: ``role`` (``ROLE_CLIENT`` or ``ROLE_PEER``) and how."""

    role: int
    name: str = ""  # a client credential's name; "" for the deployment secret


# ------------------------------------------------------------------ client side
def _recv_exact(sock: socket.socket, n: int, deadline: float) -> bytes:
    data = bytearray()
    while len(data) < n:
        sock.settimeout(max(deadline - time.monotonic(), 1e-3))
        chunk = sock.recv(n - len(data))
        if not chunk:
            raise CommunicationError("connection closed during handshake")
        data += chunk
    return bytes(data)


def tune(sock: socket.socket) -> None:
    if sock.family in (socket.AF_INET, socket.AF_INET6):
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)


def client_handshake(sock: socket.socket, secret: bytes, role: int, timeout: float) -> FrameSocket:
    """Authenticate to a backend over a connected socket (both ways), within ``timeout`` in all."""
    tune(sock)
    deadline = time.monotonic() + timeout
    try:
        server_nonce = w.check_hello(_recv_exact(sock, w.HELLO.size, deadline))
        client_nonce = os.urandom(w.NONCE_BYTES)
        proof = w.client_proof(secret, role, server_nonce, client_nonce)
        sock.sendall(w.AUTH.pack(w.MAGIC, w.VERSION, role, client_nonce, proof))
        status, their_proof = w.WELCOME.unpack(_recv_exact(sock, w.WELCOME.size, deadline))
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


# ------------------------------------------------------------------ server side
_PREFIX = 6  # magic, version, role: enough to reject a stranger without waiting for the rest


class HmacAccept:
    """The backend's side of the HMAC handshake on a non-blocking socket."""

    def __init__(self, sock: socket.socket, secret: bytes) -> None:
        tune(sock)
        sock.setblocking(False)
        self.sock = sock
        self._secret = secret
        self._nonce = os.urandom(w.NONCE_BYTES)
        self._out = memoryview(w.HELLO.pack(w.MAGIC, w.VERSION, 0, self._nonce))
        self._in = bytearray()
        self._refused = False
        self._done = False
        self._result: tuple[FrameSocket, Peer] | None = None

    def step(self) -> int:
        while True:
            if self._out:
                try:
                    sent = self.sock.send(self._out)
                except (BlockingIOError, InterruptedError):
                    return selectors.EVENT_WRITE
                except OSError as exc:
                    raise CommunicationError(f"handshake failed: {exc}") from exc
                self._out = self._out[sent:]
                continue
            if self._refused:
                raise AuthenticationError("peer failed to authenticate (wrong deployment secret)")
            if self._done:
                return 0
            try:
                chunk = self.sock.recv(w.AUTH.size - len(self._in))
            except (BlockingIOError, InterruptedError):
                return selectors.EVENT_READ
            except OSError as exc:
                raise CommunicationError(f"handshake failed: {exc}") from exc
            if not chunk:
                raise CommunicationError("connection closed during handshake")
            self._in += chunk
            if len(self._in) >= _PREFIX and (self._in[:4] != w.MAGIC or self._in[4] != w.VERSION):
                raise ProtocolError("peer does not speak the storage_api protocol")
            if len(self._in) == w.AUTH.size:
                self._authenticate(bytes(self._in))

    def _authenticate(self, data: bytes) -> None:
        try:
            role, client_nonce = w.check_auth(data, self._secret, self._nonce)
        except AuthenticationError:
            self._refused = True
            self._out = memoryview(w.WELCOME.pack(1, bytes(32)))
            return
        self._out = memoryview(w.WELCOME.pack(0, w.server_proof(self._secret, self._nonce, client_nonce)))
        self._done = True
        c2s, s2c = w.session_keys(self._secret, self._nonce, client_nonce)
        fs = FrameSocket(self.sock, s2c, c2s)
        fs.label = "served_client" if role == w.ROLE_CLIENT else "served_peer"
        self._result = (fs, Peer(role))

    def result(self) -> tuple[FrameSocket, Peer]:
        assert self._result is not None
        self.sock.setblocking(True)  # frames are read with blocking calls (see _transport)
        return self._result
