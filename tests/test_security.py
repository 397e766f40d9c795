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
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind("\0storage-api-test-fake-backend-%d" % os.getpid())
    listener.listen(1)

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
        _handshake.connect("", 0, _handshake.Auth.secret(b"the-real-secret"), timeout=2, unix=listener.getsockname())
    t.join()
    listener.close()


def _raw(cluster, client, transport: str = "unix"):
    """An unauthenticated connection: ``unix`` and ``tls`` have read the HELLO, ``tcp`` is bare TCP
    (where a backend expects a TLS ClientHello)."""
    if transport == "unix":
        info = next(b for b in client.backends() if b.name == "b0")
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(5)
        sock.connect("\0" + info.unix)
    else:
        sock = socket.create_connection(_address(client), timeout=5)
        if transport == "tcp":
            return sock
        sock = _tls(cluster).wrap_socket(sock)
    assert len(sock.recv(_wire.HELLO.size)) == _wire.HELLO.size
    return sock


def _tls(cluster):
    from storage_api import _tls

    return _tls.client_context(cafile=cluster.settings().tls_ca)


def _authenticated(cluster, client) -> _transport.FrameSocket:
    """A Unix-socket connection (frames with MACs: what these tests forge)."""
    info = next(b for b in client.backends() if b.name == "b0")
    return _handshake.connect("", 0, _handshake.Auth.secret(_secret(cluster)), timeout=5, unix="\0" + info.unix)


def _still_serving(client) -> None:
    c = Counter(1)
    c.make_persistent(backend="b0")
    assert c.inc() == 2


def _expect_closed(sock: socket.socket) -> None:
    sock.settimeout(15)  # the handshake timeout is 5 s
    try:
        while sock.recv(4096):
            pass
    except TimeoutError:
        raise
    except OSError:  # reset, broken pipe, a TLS alert or an unclean TLS close
        pass


@pytest.mark.parametrize("payload", [
    b"",
    b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",
    os.urandom(70),
    os.urandom(10_000),
    _wire.AUTH.pack(_wire.MAGIC, _wire.VERSION, 1, os.urandom(32), os.urandom(32), 0),  # forged proof
    _wire.AUTH.pack(_wire.MAGIC, 99, 1, os.urandom(32), os.urandom(32), 0),  # unknown version
    _wire.AUTH.pack(_wire.MAGIC, _wire.VERSION, 3, os.urandom(32), os.urandom(32), 9) + b"eve/00000",  # forged credential
    _wire.AUTH.pack(_wire.MAGIC, _wire.VERSION, 3, os.urandom(32), os.urandom(32), 255),  # absurd identity
])
@pytest.mark.parametrize("transport", ["unix", "tls", "tcp"])
def test_garbage_before_authentication_closes_only_that_connection(cluster, client, payload, transport):
    bystander = _authenticated(cluster, client)
    sock = _raw(cluster, client, transport)
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
    for i in range(60):
        sock = _raw(cluster, client, ("unix", "tls", "tcp")[i % 3])
        sock.sendall(bytes(rng.getrandbits(8) for _ in range(rng.randint(1, 300))))
        sock.close()
    for _ in range(40):
        fs = _authenticated(cluster, client)
        fs.sock.sendall(bytes(rng.getrandbits(8) for _ in range(rng.randint(1, 300))))
        fs.close()
    _still_serving(client)


@pytest.mark.parametrize("transport", ["unix", "tls", "tcp"])
def test_nothing_is_unpickled_before_authentication(cluster, client, tmp_path, transport):
    """A pickle that would create a file, sent instead of the handshake, never runs."""
    marker = tmp_path / "pwned"

    class Exploit:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    payload = __import__("pickle").dumps(Exploit())
    sock = _raw(cluster, client, transport)
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


class Tamper:
    """A man in the middle: relays one connection to ``target`` and flips the byte at offset
    ``flip_at`` of what the client sends (counted from the connection's first byte)."""

    def __init__(self, family: int, target: object, flip_at: int) -> None:
        import threading

        self.listener = socket.socket(family, socket.SOCK_STREAM)
        self.listener.bind("\0storage-api-test-tamper-%d" % os.getpid() if family == socket.AF_UNIX else ("127.0.0.1", 0))
        self.listener.listen(1)
        self.address = self.listener.getsockname()
        self.family, self.target, self.flip_at = family, target, flip_at
        self.flipped = False
        self.sent = 0  # bytes the client has sent so far
        self.record: bytearray | None = None  # set to a bytearray to keep what the client sends
        threading.Thread(target=self._run, daemon=True).start()

    def _run(self) -> None:
        import threading

        conn, _ = self.listener.accept()
        upstream = socket.socket(self.family, socket.SOCK_STREAM)
        upstream.connect(self.target)
        threading.Thread(target=self._pump, args=(upstream, conn, False), daemon=True).start()
        self._pump(conn, upstream, True)

    def _pump(self, src: socket.socket, dst: socket.socket, flip: bool) -> None:
        seen = 0
        try:
            while True:
                data = bytearray(src.recv(1 << 16))
                if not data:
                    break
                if flip and seen <= self.flip_at < seen + len(data):
                    data[self.flip_at - seen] ^= 0x40
                    self.flipped = True
                seen += len(data)
                if flip:
                    self.sent = seen
                    if self.record is not None:
                        self.record += data
                dst.sendall(data)
        except OSError:
            pass
        for s in (src, dst):
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def close(self) -> None:
        self.listener.close()


@pytest.mark.parametrize("part", ["nothing", "header", "lengths", "body", "body_mac", "buffer_start", "buffer_middle",
                                  "buffer_end", "buffers_mac"])
def test_a_tampered_byte_anywhere_closes_the_connection_and_stores_nothing(cluster, client, part):
    """A persist carrying a 1 MiB out-of-band buffer, one byte flipped in transit: the backend
    closes the connection and never serves the request (the object exists nowhere)."""
    import pickle
    import uuid

    from storage_api._serial import dumps
    from storage_api.errors import CommunicationError, ObjectNotFound
    from tests.models import Holder

    info = next(b for b in client.backends() if b.name == "b0")
    oid = str(uuid.uuid4())
    state_body, buffers = dumps({"data": pickle.PickleBuffer(bytearray(os.urandom(1 << 20))), "other": None})
    body = pickle.dumps(("persist", oid, Holder._sa_class_path, None, state_body), protocol=5)
    auth = _wire.AUTH.size
    frame_start = auth
    body_start = frame_start + _wire.HEADER_SIZE + 8 * len(buffers)
    buffer_start = body_start + len(body) + _wire.MAC_BYTES
    size = len(buffers[0])
    offsets = {"header": frame_start + 9, "lengths": frame_start + _wire.HEADER_SIZE + 2, "body": body_start + 7,
               "body_mac": buffer_start - 3, "buffer_start": buffer_start, "buffer_middle": buffer_start + size // 2,
               "buffer_end": buffer_start + size - 1, "buffers_mac": buffer_start + size + 5,
               "nothing": 1 << 40}
    mitm = Tamper(socket.AF_UNIX, "\0" + info.unix, offsets[part])
    try:
        fs = _handshake.connect("", 0, _handshake.Auth.secret(_secret(cluster)), timeout=5, unix=mitm.address)
        fs.sock.settimeout(10)
        if part == "nothing":  # the control: the same request, untouched, is stored
            fs.send(_wire.REQUEST, 1, body, buffers, _wire.FLAG_STREAM)
            assert fs.recv()[0] == _wire.REPLY
            assert bytes(client.get_by_id(oid).data) == bytes(buffers[0])
            fs.close()
            return
        with pytest.raises(CommunicationError):  # while sending the rest, or when waiting for a reply
            fs.send(_wire.REQUEST, 1, body, buffers, _wire.FLAG_STREAM)
            fs.recv()
        fs.close()
    finally:
        mitm.close()
    assert mitm.flipped
    with pytest.raises(ObjectNotFound):
        client.get_by_id(oid)
    _still_serving(client)


@pytest.mark.parametrize("part", ["nothing", "client_hello", "frame_header", "frame_body", "buffer"])
def test_tls_a_tampered_byte_closes_the_connection_and_stores_nothing(cluster, client, part):
    """The same over TCP: TLS records reject a byte flipped anywhere (``flip_at`` is set once the
    handshake is done, relative to the first frame's record: 5 bytes of record header, then the
    frame's 12-byte header, its lengths and body)."""
    import pickle
    import time
    import uuid

    from storage_api._serial import dumps
    from storage_api.errors import CommunicationError, ObjectNotFound
    from tests.models import Holder

    info = next(b for b in client.backends() if b.name == "b0")
    oid = str(uuid.uuid4())
    state_body, buffers = dumps({"data": pickle.PickleBuffer(bytearray(os.urandom(1 << 20))), "other": None})
    body = pickle.dumps(("persist", oid, Holder._sa_class_path, None, state_body), protocol=5)
    mitm = Tamper(socket.AF_INET, (info.host, info.port), 10 if part == "client_hello" else 1 << 40)
    try:
        host, port = mitm.address
        auth = _handshake.Auth.secret(_secret(cluster))
        if part == "client_hello":
            with pytest.raises((CommunicationError, AuthenticationError)):
                _handshake.connect(host, port, auth, timeout=5, tls=_tls(cluster))
            assert mitm.flipped
            return
        fs = _handshake.connect(host, port, auth, timeout=5, tls=_tls(cluster), expect_id=info.id)
        time.sleep(0.2)  # the client's last handshake bytes have passed the proxy
        frame = mitm.sent + 5
        mitm.flip_at = {"frame_header": frame + 9, "frame_body": frame + _wire.HEAD.size + 8 + 20,
                        "buffer": frame + (1 << 19), "nothing": 1 << 40}[part]
        if part == "nothing":
            fs.send(_wire.REQUEST, 1, body, buffers, _wire.FLAG_STREAM)
            assert fs.recv()[0] == _wire.REPLY
            assert bytes(client.get_by_id(oid).data) == bytes(buffers[0])
            fs.close()
            return
        with pytest.raises(CommunicationError):
            fs.send(_wire.REQUEST, 1, body, buffers, _wire.FLAG_STREAM)
            fs.recv()
        fs.close()
    finally:
        mitm.close()
    assert mitm.flipped
    with pytest.raises(ObjectNotFound):
        client.get_by_id(oid)
    _still_serving(client)


def test_a_forged_header_declaring_a_huge_body_allocates_nothing(cluster, client):
    """Eight headers declaring 1 GiB bodies, with a MAC that does not verify: each connection is
    closed at once and the backend's memory does not grow (it used to allocate 1 GiB for each)."""
    pid = next(b for b in client.backends() if b.name == "b0").pid

    def rss_mb() -> float:
        with open(f"/proc/{pid}/status") as fh:
            return int(fh.read().split("VmRSS:")[1].split()[0]) / 1024

    before = rss_mb()
    conns = [_authenticated(cluster, client) for _ in range(8)]
    for fs in conns:
        fs.sock.sendall(_wire.HEAD.pack(_wire.REQUEST, 0, 0, 1, _wire.MAX_BODY) + os.urandom(_wire.MAC_BYTES))
    for fs in conns:
        _expect_closed(fs.sock)
        fs.close()
    assert rss_mb() - before < 64
    _still_serving(client)
