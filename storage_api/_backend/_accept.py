"""The backend's side of the handshakes (:mod:`storage_api._wire`), as non-blocking state machines.

The :class:`~._gate.Gate` drives them: ``step()`` does whatever I/O is possible without blocking
and returns the selector events to wait for, or 0 once the peer has proven its key; ``result()``
then gives the :class:`Accepted` connection. The ``WELCOME`` that completes the handshake is sent
by the connection's own thread, after it has checked that the peer's credential is still valid
(a registry lookup that must not stall the gate). ``step`` raises :class:`AuthenticationError`
for a wrong key (after telling the peer) and :class:`ProtocolError` or
:class:`CommunicationError` for anything else that ends the connection.
"""

from __future__ import annotations

import os
import selectors
import socket
import ssl
from dataclasses import dataclass
from typing import Any

from .. import _wire as w
from .._handshake import Peer, tune
from .._tls import TlsIO
from .._transport import PlainIO
from ..errors import AuthenticationError, CommunicationError, ProtocolError

_PREFIX = 6  # magic, version, role: enough to reject a stranger without waiting for the rest


@dataclass
class Accepted:
    """An authenticated connection whose ``WELCOME`` (``welcome``) is still to be sent."""

    io: Any
    keys: tuple[bytes, bytes] | None  # (send, receive) frame MAC keys; None on TLS
    peer: Peer
    welcome: bytes


class HmacAccept:
    """The challenge-response of the handshake, on a plain socket or inside TLS (``tls``)."""

    def __init__(self, sock: socket.socket, secret: bytes, *, tls: bool = False, binding: bytes = b"") -> None:
        if not tls:
            tune(sock)
            sock.setblocking(False)
        self.sock = sock
        self._secret = secret
        self._tls = tls
        self._binding = binding
        self._nonce = os.urandom(w.NONCE_BYTES)
        self._out = memoryview(w.HELLO.pack(w.MAGIC, w.VERSION, 0, self._nonce))
        self._in = bytearray()
        self._need = w.AUTH.size
        self._refused = False
        self._result: Accepted | None = None

    def step(self) -> int:
        while True:
            if self._out:
                try:
                    sent = self.sock.send(self._out)
                except (BlockingIOError, InterruptedError, ssl.SSLWantWriteError):
                    return selectors.EVENT_WRITE
                except ssl.SSLWantReadError:
                    return selectors.EVENT_READ
                except OSError as exc:
                    raise CommunicationError(f"handshake failed: {exc}") from exc
                self._out = self._out[sent:]
                continue
            if self._refused:
                raise AuthenticationError("peer failed to authenticate (wrong key)")
            if self._result is not None:
                return 0
            try:
                chunk = self.sock.recv(self._need - len(self._in))
            except (BlockingIOError, InterruptedError, ssl.SSLWantReadError):
                return selectors.EVENT_READ
            except ssl.SSLWantWriteError:
                return selectors.EVENT_WRITE
            except OSError as exc:
                raise CommunicationError(f"handshake failed: {exc}") from exc
            if not chunk:
                raise CommunicationError("connection closed during handshake")
            self._in += chunk
            if len(self._in) >= _PREFIX and (self._in[:4] != w.MAGIC or self._in[4] != w.VERSION):
                raise ProtocolError("peer does not speak the storage_api protocol")
            if len(self._in) == w.AUTH.size:
                id_len = self._in[-1]
                if id_len > w.MAX_IDENTITY:
                    raise ProtocolError("identity too long")
                self._need += id_len
            if len(self._in) == self._need:
                self._authenticate(bytes(self._in))

    def _authenticate(self, data: bytes) -> None:
        role, client_nonce, proof, identity = w.parse_auth(data)
        key = self._secret if role != w.ROLE_CREDENTIAL else w.credential_key(self._secret, identity.decode())
        try:
            w.check_proof(key, role, identity, self._nonce, client_nonce, proof, self._binding)
        except AuthenticationError:
            self._refused = True
            self._out = memoryview(w.WELCOME.pack(w.REFUSED, bytes(32)))
            return
        welcome = w.WELCOME.pack(w.ACCEPTED, w.server_proof(key, self._nonce, client_nonce, self._binding))
        name = identity.decode().partition("/")[0] if identity else ""
        peer = Peer(role, name, identity.decode())
        if self._tls:
            self._result = Accepted(TlsIO(self.sock), None, peer, welcome)  # type: ignore[arg-type]
        else:
            c2s, s2c = w.session_keys(key, self._nonce, client_nonce)
            self._result = Accepted(PlainIO(self.sock), (s2c, c2s), peer, welcome)

    def result(self) -> Accepted:
        assert self._result is not None
        return self._result


class TlsAccept:
    """A TLS 1.3 handshake as the server, then :class:`HmacAccept` inside it."""

    def __init__(self, sock: socket.socket, ctx: ssl.SSLContext, secret: bytes, binding: bytes) -> None:
        tune(sock)
        sock.setblocking(False)
        self.sock = ctx.wrap_socket(sock, server_side=True, do_handshake_on_connect=False)
        self._secret = secret
        self._binding = binding
        self._inner: HmacAccept | None = None

    def step(self) -> int:
        if self._inner is None:
            try:
                self.sock.do_handshake()
            except ssl.SSLWantReadError:
                return selectors.EVENT_READ
            except ssl.SSLWantWriteError:
                return selectors.EVENT_WRITE
            except (ssl.SSLError, OSError) as exc:
                raise CommunicationError(f"TLS handshake failed: {exc}") from exc
            self._inner = HmacAccept(self.sock, self._secret, tls=True, binding=self._binding)
        return self._inner.step()

    def result(self) -> Accepted:
        assert self._inner is not None
        return self._inner.result()
