"""TLS on TCP: clients verify backends (CA, id, proof bound to the certificate); data intact."""

from __future__ import annotations

import dataclasses
import pickle
import socket
import ssl
import threading
from pathlib import Path

import numpy as np
import pytest

from storage_api import _context, _handshake, _pki, _tls, _wire
from storage_api._client import Client
from storage_api.errors import AuthenticationError
from tests.models import Counter, Holder


def _backend(client, name="b0"):
    return next(b for b in client.backends() if b.name == name)


def _auth(cluster) -> _handshake.Auth:
    return _handshake.Auth.secret(cluster.settings().secret_bytes())


def _tcp_client(cluster, **overrides) -> Client:
    return Client(dataclasses.replace(cluster.settings(), local_socket=False, **overrides))


def test_clients_use_tls_on_tcp_and_arrays_arrive_intact(cluster):
    tcp = _tcp_client(cluster)
    previous = _context.install(tcp)
    try:
        arr = np.random.default_rng(7).random(3 << 20)  # 24 MB: streamed to the log as it arrives
        h = Holder(arr)
        h.make_persistent(backend="b0")
        assert np.array_equal(h.take(), arr)
        channel = next(iter(tcp._channels.values()))
        assert type(channel.fs.io).__name__ == "TlsIO"
        assert channel.fs.sock.version() == "TLSv1.3"
    finally:
        _context.install(previous)
        tcp.close()


def test_a_client_with_the_secret_but_no_ca_file_uses_the_ca_the_backends_publish(cluster):
    tcp = _tcp_client(cluster, tls_ca="")
    previous = _context.install(tcp)
    try:
        c = Counter(4)
        c.make_persistent(backend="b1")
        assert c.inc() == 5
    finally:
        _context.install(previous)
        tcp.close()


def test_a_wrong_secret_is_refused_inside_tls(cluster):
    bad = _tcp_client(cluster, secret="not-the-secret", secret_file="")
    with pytest.raises(AuthenticationError, match="wrong deployment secret"):
        bad.persist(Counter(1), alias=None, backend="b0")
    bad.close()


@pytest.mark.parametrize("local_socket", [False, True])
def test_what_an_eavesdropper_sees(cluster, client, local_socket):
    """Over TCP the bytes on the wire are encrypted; over the Unix socket they are not (the
    README says so): a marker in an object's state crosses a recording relay."""
    from tests.test_security import Tamper

    info = _backend(client)
    marker = b"storage-api-eavesdropper-marker-" + bytes(range(48, 58))
    if local_socket:
        relay = Tamper(socket.AF_UNIX, "\0" + info.unix, 1 << 40)
        fs = _handshake.connect("", 0, _auth(cluster), timeout=5, unix=relay.address)
    else:
        relay = Tamper(socket.AF_INET, (info.host, info.port), 1 << 40)
        fs = _handshake.connect(*relay.address, _auth(cluster), timeout=5,
                                tls=_tls.client_context(cafile=cluster.settings().tls_ca))
    relay.record = bytearray()
    try:
        fs.send(_wire.REQUEST, 1, pickle.dumps(("ping", )) + marker)  # the marker rides in the body
        fs.recv()
    finally:
        fs.close()
        relay.close()
    assert (marker in relay.record) == local_socket


def test_a_backend_certificate_from_another_ca_is_refused(cluster, client, tmp_path):
    """A server whose certificate another CA signed never sees our proof."""
    other = tmp_path / "other"
    key = _pki.ca_key_file(other, b"another deployment")
    cert, cert_key = _pki.make_backend_cert(other, _pki.make_ca(other, key), key, _backend(client).id)
    got = _serve_tls_once(_tls.server_context(str(cert), str(cert_key)))
    with pytest.raises(AuthenticationError, match="not from the deployment CA"):
        _handshake.connect("127.0.0.1", got.port, _auth(cluster), timeout=5,
                           tls=_tls.client_context(cafile=cluster.settings().tls_ca))
    assert got.first_bytes == b""  # nothing of ours reached it


def test_a_ca_file_made_again_at_the_same_path_is_read_again(cluster, client, tmp_path):
    """A deployment made again in the same folder (down --purge, up) has a new CA in the same
    file: a process that talked to the old one must trust the new one, and only it."""
    ours = Path(cluster.settings().tls_ca).read_text()
    path = tmp_path / "ca.pem"
    other = tmp_path / "other"
    path.write_text(_pki.make_ca(other, _pki.ca_key_file(other, b"an older deployment")).read_text())
    info = _backend(client)
    with pytest.raises(AuthenticationError, match="not from the deployment CA"):
        _handshake.connect(info.host, info.port, _auth(cluster), timeout=5, tls=_tls.client_context(cafile=str(path)))
    path.write_text(ours)
    _handshake.connect(info.host, info.port, _auth(cluster), timeout=5,
                       tls=_tls.client_context(cafile=str(path)), expect_id=info.id).close()


def test_the_backend_id_in_the_certificate_is_checked(cluster, client):
    info = _backend(client)
    ctx = _tls.client_context(cafile=cluster.settings().tls_ca)
    with pytest.raises(AuthenticationError, match="not backend"):
        _handshake.connect(info.host, info.port, _auth(cluster), timeout=5, tls=ctx, expect_id=_backend(client, "b1").id)
    _handshake.connect(info.host, info.port, _auth(cluster), timeout=5, tls=ctx, expect_id=info.id).close()


def test_a_relay_with_a_valid_certificate_cannot_pass_the_proofs_on(cluster, client, tmp_path):
    """A man in the middle holding a certificate of the deployment CA (as a compromised CA key
    would give), relaying our handshake to the real backend: the proofs are bound to the
    certificate each side saw, so the backend refuses and the client learns nothing."""
    info = _backend(client)
    secret = cluster.settings().secret_bytes()
    ca = Path(cluster.settings().tls_ca)
    cert, key = _pki.make_backend_cert(tmp_path, ca, _pki.ca_key_file(tmp_path, secret), "relay")
    relay = _Relay(_tls.server_context(str(cert), str(key)), (info.host, info.port),
                   _tls.client_context(cafile=str(ca)))
    with pytest.raises(AuthenticationError, match="refused"):
        _handshake.connect("127.0.0.1", relay.port, _auth(cluster), timeout=5, tls=_tls.client_context(cafile=str(ca)))
    assert relay.relayed > 0  # the handshake did go through it


class _serve_tls_once:
    def __init__(self, ctx: ssl.SSLContext) -> None:
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.first_bytes = b""
        self.ctx = ctx
        threading.Thread(target=self._run, daemon=True).start()

    def _run(self) -> None:
        conn, _ = self.listener.accept()
        try:
            tls = self.ctx.wrap_socket(conn, server_side=True)
            tls.sendall(_wire.HELLO.pack(_wire.MAGIC, _wire.VERSION, 0, bytes(32)))
            tls.settimeout(5)
            self.first_bytes = tls.recv(100)
        except OSError:
            pass
        finally:
            conn.close()
            self.listener.close()


class _Relay:
    """Terminates the client's TLS with its own certificate and relays the plaintext over a TLS
    connection of its own to the backend."""

    def __init__(self, server_ctx: ssl.SSLContext, target: tuple[str, int], client_ctx: ssl.SSLContext) -> None:
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.relayed = 0
        self.server_ctx, self.target, self.client_ctx = server_ctx, target, client_ctx
        threading.Thread(target=self._run, daemon=True).start()

    def _run(self) -> None:
        """Relay both ways from this one thread: OpenSSL must not be entered from two threads at
        once on one connection (a reader and a writer thread on the same SSL socket crashed the
        interpreter)."""
        import select

        conn, _ = self.listener.accept()
        down = self.server_ctx.wrap_socket(conn, server_side=True)
        up = self.client_ctx.wrap_socket(socket.create_connection(self.target))
        other = {down: up, up: down}
        try:
            while True:
                ready = [s for s in other if s.pending()] or select.select(list(other), [], [], 60)[0]
                if not ready:
                    break
                for src in ready:
                    data = src.recv(65536)
                    if not data:
                        raise EOFError
                    self.relayed += len(data)
                    other[src].sendall(data)
        except (OSError, EOFError):
            pass
        for s in (down, up):
            try:
                socket.socket.shutdown(s, socket.SHUT_RDWR)
            except OSError:
                pass
