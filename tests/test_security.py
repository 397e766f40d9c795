"""Authentication before unpickling, and robustness against malformed traffic."""

from __future__ import annotations

import os
import random
import socket
import struct

import pytest

from storage_api import _handshake, _transport, _wire
from storage_api.errors import AuthenticationError, ProtocolError
from tests.models import Counter


def _address(client, name="b0"):
    info = next(b for b in client.backends() if b.name == name)
    return info.host, info.port


def _secret(cluster) -> bytes:
    return cluster.settings().secret_bytes()


def test_wrong_secret_is_refused(cluster, client):
    bad = cluster.client(secret="not-the-secret")
    try:
        c = Counter(1)
        with pytest.raises(AuthenticationError):
            bad.persist(c, alias=None, backend="b0")
    finally:
        bad.close()


def test_client_refuses_a_backend_that_lacks_the_secret(cluster):
    """A fake backend that cannot prove the secret never gets to send us a pickle."""
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]

    import threading

    def fake_backend() -> None:
        conn, _ = listener.accept()
        conn.sendall(_wire.HELLO.pack(_wire.MAGIC, _wire.VERSION, 0, os.urandom(32)))
        conn.recv(_wire.AUTH.size)
        conn.sendall(_wire.WELCOME.pack(0, os.urandom(32)))  # a made-up proof
        conn.close()

    t = threading.Thread(target=fake_backend)
    t.start()
    with pytest.raises(AuthenticationError):
        _handshake.connect("127.0.0.1", port, b"the-real-secret", timeout=2)
    t.join()
    listener.close()


def _raw(client):
    return socket.create_connection(_address(client), timeout=5)


def _authenticated(cluster, client) -> _transport.FrameSocket:
    host, port = _address(client)
    return _handshake.connect(host, port, _secret(cluster), timeout=5)


def _still_serving(client) -> None:
    c = Counter(1)
    c.make_persistent(backend="b0")
    assert c.inc() == 2


def _expect_closed(sock: socket.socket) -> None:
    sock.settimeout(15)  # the handshake timeout is 5 s
    try:
        while sock.recv(4096):
            pass
    except (ConnectionResetError, BrokenPipeError):
        pass


@pytest.mark.parametrize("payload", [
    b"",
    b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",
    os.urandom(70),
    os.urandom(10_000),
    _wire.AUTH.pack(_wire.MAGIC, _wire.VERSION, 1, os.urandom(32), os.urandom(32)),  # forged proof
    _wire.AUTH.pack(_wire.MAGIC, 99, 1, os.urandom(32), os.urandom(32)),  # unknown version
])
def test_garbage_before_authentication_closes_only_that_connection(cluster, client, payload):
    bystander = _authenticated(cluster, client)
    sock = _raw(client)
    sock.recv(_wire.HELLO.size)
    sock.sendall(payload)
    if not payload:
        sock.shutdown(socket.SHUT_WR)
    _expect_closed(sock)
    sock.close()
    _still_serving(client)
    # an unrelated authenticated connection is unaffected
    bystander.send(_wire.REQUEST, 1, __import__("pickle").dumps(("ping",)))
    kind, _f, rid, body, _b = bystander.recv()
    assert (kind, rid) == (_wire.REPLY, 1)
    bystander.close()


def _send_raw_frame(fs: _transport.FrameSocket, head: bytes, rest: bytes) -> None:
    fs.sock.sendall(head + rest)


def _frame(fs: _transport.FrameSocket, body: bytes, *, kind: int = _wire.REQUEST, seq: int = 0,
           nbuf: int = 0, body_len: int | None = None, lengths: bytes = b"") -> bytes:
    """A frame as ``fs`` would send it as its ``seq``-th (MACs included), with the fields given."""
    head = _wire.HEAD.pack(kind, 0, nbuf, 1, len(body) if body_len is None else body_len)
    key = fs._send_key
    return (head + _wire.head_mac(key, seq, head) + lengths + body
            + _wire.body_mac(key, seq, head, lengths, body))


@pytest.mark.parametrize("case", ["bad_head_mac", "bad_body_mac", "random_after_auth", "absurd_body",
                                  "absurd_buffers", "absurd_buffer_len", "truncated", "unknown_kind",
                                  "replayed"])
def test_malformed_frames_after_authentication(cluster, client, case):
    fs = _authenticated(cluster, client)
    body = __import__("pickle").dumps(("ping",))
    if case == "bad_head_mac":
        head = _wire.HEAD.pack(_wire.REQUEST, 0, 0, 1, len(body))
        fs.sock.sendall(head + os.urandom(16) + body)
    elif case == "bad_body_mac":
        frame = _frame(fs, body)
        fs.sock.sendall(frame[:-1] + bytes([frame[-1] ^ 1]))
    elif case == "random_after_auth":
        fs.sock.sendall(os.urandom(4096))
    elif case == "absurd_body":
        fs.sock.sendall(_frame(fs, b"", body_len=0xFFFFFFFF)[: _wire.HEADER_SIZE])
    elif case == "absurd_buffers":
        fs.sock.sendall(_frame(fs, b"", nbuf=0xFFFF)[: _wire.HEADER_SIZE])
    elif case == "absurd_buffer_len":
        fs.sock.sendall(_frame(fs, body, nbuf=1, lengths=struct.pack("<Q", 1 << 62)))
    elif case == "truncated":
        fs.sock.sendall(_frame(fs, body)[: _wire.HEADER_SIZE + len(body) // 2])
        fs.sock.shutdown(socket.SHUT_WR)
    elif case == "unknown_kind":
        fs.sock.sendall(_frame(fs, body, kind=77))
    elif case == "replayed":
        frame = _frame(fs, body)
        fs.sock.sendall(frame + frame)  # the second copy has the wrong sequence number
        kind, _f, rid, _body, _b = fs.recv()
        assert (kind, rid) == (_wire.REPLY, 1)  # the genuine frame was served
    _expect_closed(fs.sock)
    fs.close()
    _still_serving(client)


def test_random_frames_fuzz(cluster, client):
    rng = random.Random(1234)
    for _ in range(40):
        sock = _raw(client)
        sock.recv(_wire.HELLO.size)
        sock.sendall(bytes(rng.getrandbits(8) for _ in range(rng.randint(1, 300))))
        sock.close()
    for _ in range(40):
        fs = _authenticated(cluster, client)
        fs.sock.sendall(bytes(rng.getrandbits(8) for _ in range(rng.randint(1, 300))))
        fs.close()
    _still_serving(client)


def test_nothing_is_unpickled_before_authentication(cluster, client, tmp_path):
    """A pickle that would create a file, sent instead of the handshake, never runs."""
    marker = tmp_path / "pwned"

    class Exploit:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    payload = __import__("pickle").dumps(Exploit())
    sock = _raw(client)
    sock.recv(_wire.HELLO.size)
    sock.sendall(payload + bytes(max(0, _wire.AUTH.size - len(payload))))
    _expect_closed(sock)
    sock.close()
    _still_serving(client)
    assert not marker.exists()


def test_frame_macs_detect_tampering():
    key = os.urandom(32)
    head = _wire.HEAD.pack(1, 0, 0, 7, 5)
    mac = _wire.body_mac(key, 3, head, b"", b"hello")
    assert mac == _wire.body_mac(key, 3, head, b"", b"hello")
    assert mac != _wire.body_mac(key, 4, head, b"", b"hello")  # other position in the stream
    assert mac != _wire.body_mac(key, 3, head, b"", b"hellp")
    assert _wire.head_mac(key, 3, head) != _wire.head_mac(key, 3, _wire.HEAD.pack(1, 0, 0, 7, 6))
    buffers = _wire.buffers_mac(key, 3, head, b"")
    buffers.update(b"array")
    other = _wire.buffers_mac(key, 3, head, b"")
    other.update(b"arrax")
    assert buffers.digest() != other.digest()
    with pytest.raises(ProtocolError):
        _wire.check_header(99, 0, 0)
