"""The client's side of the handshakes (:mod:`storage_api._wire`), blocking, under one deadline.

The backend's side is in :mod:`storage_api._backend._accept`. TLS (TCP connections) comes from
:mod:`storage_api._tls`, imported only when a TCP connection is made.
"""

from __future__ import annotations

import hmac
import os
import socket
import struct
import time
from dataclasses import dataclass
from typing import Any

from . import _wire as w
from ._transport import FrameSocket, PlainIO
from .errors import AuthenticationError, CommunicationError, ProtocolError


@dataclass(frozen=True)
class Peer:
    """Who authenticated: ``role`` (``ROLE_CLIENT`` or ``ROLE_PEER``) and how."""

    role: int
    name: str = ""  # a client credential's name; "" for the deployment secret
    identity: str = ""  # the credential's id, name/generation


@dataclass(frozen=True)
class Auth:
    """What a client proves in the handshake: the deployment secret (``ROLE_CLIENT``,
    ``ROLE_PEER``) or a credential's key and id (``ROLE_CREDENTIAL``)."""

    role: int
    key: bytes
    identity: str = ""

    @classmethod
    def secret(cls, secret: bytes, role: int = w.ROLE_CLIENT) -> Auth:
        return cls(role, secret)


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


def client_handshake(sock: Any, auth: Auth, deadline: float, binding: bytes = b"") -> tuple[bytes, bytes]:
    """Authenticate to a backend over a connected socket (both ways); return ``(key_c2s, key_s2c)``."""
    identity = auth.identity.encode()
    try:
        server_nonce = w.check_hello(_recv_exact(sock, w.HELLO.size, deadline))
        client_nonce = os.urandom(w.NONCE_BYTES)
        sock.sendall(w.auth_message(auth.key, auth.role, identity, server_nonce, client_nonce, binding))
        status, their_proof = w.WELCOME.unpack(_recv_exact(sock, w.WELCOME.size, deadline))
    except TimeoutError as exc:
        raise CommunicationError("backend did not complete the handshake in time") from exc
    except OSError as exc:
        raise CommunicationError(f"handshake failed: {exc}") from exc
    except struct.error as exc:
        raise ProtocolError("malformed handshake") from exc
    if status == w.REVOKED:
        raise AuthenticationError(f"backend refused credential {auth.identity!r}: it was revoked (or replaced)")
    if status != w.ACCEPTED:
        what = "wrong deployment secret" if auth.role != w.ROLE_CREDENTIAL else f"bad credential {auth.identity!r}"
        raise AuthenticationError(f"backend refused our credentials ({what})")
    if not hmac.compare_digest(their_proof, w.server_proof(auth.key, server_nonce, client_nonce, binding)):
        raise AuthenticationError("backend failed to prove it knows the deployment secret")
    return w.session_keys(auth.key, server_nonce, client_nonce)


def local_socket_name(backend_id: str) -> str:
    """The abstract Unix socket a backend also listens on (Linux): same-host clients skip TCP."""
    return f"\0storage-api.{backend_id}"


def connect(host: str, port: int, auth: Auth, *, timeout: float = 2.0, unix: str | None = None,
            tls: Any = None, expect_id: str | None = None) -> FrameSocket:
    """Open and authenticate a connection to a backend: over ``unix`` when given and reachable,
    else over TCP with TLS (``tls``: an ``ssl.SSLContext`` trusting the deployment CA, or a
    callable returning one; ``expect_id``: the backend's id, checked against its certificate)."""
    deadline = time.monotonic() + timeout
    if unix and hasattr(socket, "AF_UNIX"):
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(timeout)
        try:
            sock.connect(unix)
        except OSError:  # not on the backend's host (or namespace): use TCP
            sock.close()
        else:
            try:
                c2s, s2c = client_handshake(sock, auth, deadline)
            except BaseException:
                sock.close()
                raise
            return _framed(FrameSocket(PlainIO(sock), c2s, s2c), auth)
    if tls is None:
        raise AuthenticationError(f"backend {host}:{port} is reachable over TCP only, which needs TLS: "
                                  "configure tls_ca (the deployment CA certificate)")
    from . import _tls

    ctx = tls() if callable(tls) else tls
    try:
        raw = socket.create_connection((host, port), timeout=timeout)
    except OSError as exc:
        raise CommunicationError(f"cannot reach backend at {host}:{port}: {exc}") from exc
    tune(raw)
    ssock, binding = _tls.wrap_client(raw, ctx, deadline, expect_id)
    try:
        client_handshake(ssock, auth, deadline, binding)
    except BaseException:
        ssock.close()
        raise
    return _framed(FrameSocket(_tls.TlsIO(ssock)), auth)


def _framed(fs: FrameSocket, auth: Auth) -> FrameSocket:
    fs.label = "peer" if auth.role == w.ROLE_PEER else "client"
    return fs
