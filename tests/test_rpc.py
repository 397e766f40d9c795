"""The multiplexed request channel (storage_api._rpc.Channel), against a scripted peer.

The two ends are real frame sockets over a socket pair, with a session key per direction (what
the handshake would have agreed); the test plays the backend, frame by frame, so it decides the
order, the timing and the failures.
"""

from __future__ import annotations

import os
import random
import socket
import threading
import time
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor

import pytest

from storage_api import _wire as w
from storage_api._rpc import Channel
from storage_api._transport import FrameSocket, PlainIO, Spin
from storage_api.errors import BackendUnavailable
from tests.conftest import wait_for



def decode(frame: tuple[int, bytes, list]) -> tuple[str, list[bytes]]:
    """What the client makes of a reply here: its text and buffers; ERROR frames raise."""
    kind, body, buffers = frame
    if kind == w.ERROR:
        raise RuntimeError(bytes(body).decode())
    return bytes(body).decode(), [bytes(b) for b in buffers]


class Peer:
    """The backend's end, driven by the test."""

    def __init__(self, fs: FrameSocket, send_key: bytes) -> None:
        self.fs = fs
        self.send_key = send_key

    def recv(self) -> tuple[int, int, str, list[bytes]]:
        self.fs.sock.settimeout(10)  # a frame that never comes fails the test instead of hanging it
        try:
            kind, _flags, rid, body, buffers = self.fs.recv()
        finally:
            self.fs.sock.settimeout(None)
        return kind, rid, bytes(body).decode(), [bytes(b) for b in buffers]

    def requests(self, n: int) -> dict[str, int]:
        """Receive ``n`` requests; their bodies -> request ids."""
        out = {}
        for _ in range(n):
            kind, rid, body, _ = self.recv()
            assert kind == w.REQUEST
            out[body] = rid
        return out

    def send(self, kind: int, rid: int, body: str, buffers: list = ()) -> None:
        self.fs.send(kind, rid, body.encode(), list(buffers))

    def first_frame_bytes(self, kind: int, rid: int, body: bytes) -> bytes:
        """The bytes of a valid frame as this peer's first one (MAC sequence 0), unsent."""
        x, y = socket.socketpair()
        with x, y:
            FrameSocket(PlainIO(x), self.send_key, self.send_key).send(kind, rid, body)
            size = w.HEADER_SIZE + len(body) + w.MAC_BYTES
            data = b""
            while len(data) < size:
                data += y.recv(size - len(data))
        return data


@pytest.fixture
def callers() -> Iterator[ThreadPoolExecutor]:
    """Threads for blocking calls (the channel closes first at teardown, so none stays blocked)."""
    with ThreadPoolExecutor(16) as pool:
        yield pool


@pytest.fixture
def pair(callers: ThreadPoolExecutor) -> Iterator[tuple[Channel, Peer]]:
    a, b = socket.socketpair()
    c2s, s2c = os.urandom(32), os.urandom(32)
    peer_fs = FrameSocket(PlainIO(b), s2c, c2s)
    channel = Channel(FrameSocket(PlainIO(a), c2s, s2c), "scripted", liveness_timeout=2.0, decode=decode)
    yield channel, Peer(peer_fs, s2c)
    channel.close()
    peer_fs.close()


def test_a_call_gets_its_reply(pair, callers) -> None:
    channel, peer = pair
    call = callers.submit(channel.request, b"hello", [])
    (rid,) = peer.requests(1).values()
    peer.send(w.REPLY, rid, "hello back")
    assert call.result(10) == ("hello back", [])


def test_replies_in_any_order_reach_their_own_callers(pair, callers) -> None:
    channel, peer = pair
    calls = {f"q{i}": callers.submit(channel.request, f"q{i}".encode(), []) for i in range(12)}
    rids = peer.requests(12)
    assert len(set(rids.values())) == 12  # one id per request in flight
    order = list(rids)
    random.Random(7).shuffle(order)
    for body in order:  # one at a time: whoever reads must hand the others their replies
        peer.send(w.REPLY, rids[body], "answer to " + body)
        assert calls[body].result(10) == ("answer to " + body, [])
    assert channel.usable


def test_futures_and_blocking_calls_share_the_connection(pair, callers) -> None:
    channel, peer = pair
    futures = {f"f{i}": channel.request(f"f{i}".encode(), [], wait=False) for i in range(5)}
    blocking = {f"b{i}": callers.submit(channel.request, f"b{i}".encode(), []) for i in range(5)}
    assert all(isinstance(f, Future) for f in futures.values())
    rids = peer.requests(10)
    for body in reversed(list(rids)):
        peer.send(w.REPLY, rids[body], body.upper())
    for body, f in {**futures, **blocking}.items():
        assert f.result(10) == (body.upper(), [])


def test_an_error_reply_raises_in_its_caller_only(pair, callers) -> None:
    channel, peer = pair
    bad = callers.submit(channel.request, b"bad", [])
    good = callers.submit(channel.request, b"good", [])
    rids = peer.requests(2)
    peer.send(w.ERROR, rids["bad"], "it failed")
    peer.send(w.REPLY, rids["good"], "fine")
    with pytest.raises(RuntimeError, match="it failed"):
        bad.result(10)
    assert good.result(10) == ("fine", []) and channel.usable


def test_events_reach_their_callback_in_order_before_the_reply(pair, callers) -> None:
    channel, peer = pair
    seen: list[str] = []
    call = callers.submit(channel.request, b"long", [], on_event=lambda body: seen.append(bytes(body).decode()))
    failing = callers.submit(channel.request, b"other", [], on_event=lambda body: 1 / 0)
    rids = peer.requests(2)
    for i in range(5):
        peer.send(w.EVENT, rids["long"], f"step {i}")
    peer.send(w.EVENT, rids["other"], "breaks its callback")
    peer.send(w.REPLY, rids["long"], "done")
    assert call.result(10) == ("done", [])
    assert seen == [f"step {i}" for i in range(5)]
    peer.send(w.REPLY, rids["other"], "done too")  # a failing callback does not fail the call
    assert failing.result(10) == ("done too", [])


def test_buffers_travel_out_of_band_both_ways(pair, callers) -> None:
    channel, peer = pair
    payload = bytes(range(256)) * 8192  # 2 MB
    call = callers.submit(channel.request, b"store", [payload, b"small"])
    kind, rid, body, buffers = peer.recv()
    assert (kind, body, buffers) == (w.REQUEST, "store", [payload, b"small"])
    peer.send(w.REPLY, rid, "stored", [payload[::-1]])
    assert call.result(10) == ("stored", [payload[::-1]])


def test_a_peer_that_dies_mid_frame_fails_every_pending_call(pair, callers) -> None:
    channel, peer = pair
    blocking = [callers.submit(channel.request, f"b{i}".encode(), []) for i in range(3)]
    future = channel.request(b"f", [], wait=False)
    rids = peer.requests(4)
    # a genuine reply with a 100-byte body: its header and 20 bytes of the body, then the peer is gone
    frame = peer.first_frame_bytes(w.REPLY, rids["b0"], bytes(100))
    peer.fs.sock.sendall(frame[: w.HEADER_SIZE + 20])
    peer.fs.sock.shutdown(socket.SHUT_RDWR)
    for f in [*blocking, future]:
        with pytest.raises(BackendUnavailable):
            f.result(10)
    assert not channel.usable
    with pytest.raises(BackendUnavailable):  # later calls fail at once, nothing is sent
        channel.request(b"after", [])


def test_a_forged_reply_is_never_decoded_and_fails_the_channel(pair, callers) -> None:
    channel, peer = pair
    decoded: list = []
    channel._decode = decoded.append  # a spy: whatever reaches decoding
    call = callers.submit(channel.request, b"q", [])
    (rid,) = peer.requests(1).values()
    frame = bytearray(peer.first_frame_bytes(w.REPLY, rid, b"forged"))
    frame[-1] ^= 1  # one bit of the body's MAC
    peer.fs.sock.sendall(frame)
    with pytest.raises(BackendUnavailable):
        call.result(10)
    assert decoded == [] and not channel.usable


def test_the_channel_answers_the_peers_pings(pair, callers) -> None:
    channel, peer = pair
    call = callers.submit(channel.request, b"q", [])
    (rid,) = peer.requests(1).values()
    peer.send(w.PING, 77, "")
    kind, ping_rid, _body, _ = peer.recv()
    assert (kind, ping_rid) == (w.PONG, 77)
    peer.send(w.REPLY, rid, "r")
    assert call.result(10) == ("r", [])


# ---------------------------------------------------------------------------------- liveness
# The client's watchdog calls check_liveness(now) a few times per liveness timeout; the tests
# call it with chosen clocks. Silence is time since the last frame received.
def test_a_silent_peer_is_pinged_then_given_up(pair, callers) -> None:
    channel, peer = pair  # liveness timeout 2 s
    call = callers.submit(channel.request, b"q", [])
    peer.requests(1)
    start = channel.fs.last_rx
    channel.check_liveness(start + 0.2)  # not silent for long: nothing happens
    channel.check_liveness(start + 1.0)  # a quarter of the timeout: a ping
    kind, _rid, _body, _ = peer.recv()
    assert kind == w.PING and not call.done()
    channel.check_liveness(start + 1.9)  # the next look would be past the timeout: give up now
    with pytest.raises(BackendUnavailable, match="did not answer"):
        call.result(10)
    assert not channel.usable


def test_a_pong_keeps_a_long_call_alive(pair, callers) -> None:
    channel, peer = pair
    call = callers.submit(channel.request, b"slow", [])
    (rid,) = peer.requests(1).values()
    start = channel.fs.last_rx
    time.sleep(0.3)  # the peer stays silent for a while, then answers a ping
    channel.check_liveness(start + 1.0)
    kind, ping_rid, _body, _ = peer.recv()
    assert kind == w.PING
    answered = time.monotonic()
    peer.send(w.PONG, ping_rid, "")
    wait_for(lambda: channel.fs.last_rx >= answered, 10, "the pong to be read")
    # Silence counts from the pong: 1.7 s after it the call lives on, although at that time the
    # request itself is 2 s old (the sleep above) and would have been given up.
    channel.check_liveness(answered + 1.7)
    assert channel.usable and not call.done()
    peer.send(w.REPLY, rid, "finally")
    assert call.result(10) == ("finally", [])


def test_an_idle_channel_is_neither_pinged_nor_given_up(pair) -> None:
    channel, peer = pair
    channel.check_liveness(channel.fs.last_rx + 3600)
    assert channel.usable
    peer.fs.sock.settimeout(0.2)
    with pytest.raises(OSError):  # nothing was sent to the peer
        peer.fs.sock.recv(1)


def test_closing_the_channel_fails_what_is_pending(pair, callers) -> None:
    channel, peer = pair
    call = callers.submit(channel.request, b"q", [])
    future = channel.request(b"f", [], wait=False)
    peer.requests(2)
    channel.close()
    for f in (call, future):
        with pytest.raises(BackendUnavailable):
            f.result(10)


def test_many_threads_many_calls_one_connection(pair) -> None:
    """Sixteen threads, 50 calls each; the peer answers in batches, in shuffled order."""
    channel, peer = pair
    errors: list[BaseException] = []
    stop = threading.Event()

    def serve() -> None:
        rng = random.Random(3)
        try:
            while not stop.is_set():
                batch = [peer.recv()]
                while peer.fs.pending():
                    batch.append(peer.recv())
                rng.shuffle(batch)
                for _kind, rid, body, _ in batch:
                    peer.send(w.REPLY, rid, body[::-1])
        except Exception as exc:  # the peer's end closes at teardown
            if not stop.is_set():
                errors.append(exc)

    server = threading.Thread(target=serve, daemon=True)
    server.start()

    def work(t: int) -> list[bool]:
        return [channel.request(f"{t}-{i}".encode(), [])[0] == f"{t}-{i}"[::-1] for i in range(50)]

    with ThreadPoolExecutor(16) as pool:
        results = list(pool.map(work, range(16)))
    stop.set()
    assert not errors and all(all(r) for r in results)


def test_a_large_buffer_leaving_slowly_shows_progress_all_along(pair, callers) -> None:
    """Liveness is judged by progress: while a 16 MiB buffer leaves (the peer takes it slowly,
    over ~1 s), the time of the last progress keeps moving, so the watchdog sees no silence.
    (Sent over a Unix socket in 1 MiB pieces, these used to show no progress at all.)"""
    channel, peer = pair
    size = 16 << 20
    callers.submit(channel.request, b"big", [bytearray(size)])
    raw = peer.fs.io.sock
    raw.settimeout(10)
    got, seen = 0, set()
    while got < size:
        got += len(raw.recv(1 << 20))
        seen.add(channel.fs.last_tx)
        time.sleep(0.06)
    assert len(seen) >= 8, f"progress was recorded {len(seen)} times while 16 MiB left"


# ------------------------------------------------------------ polling before sleeping
def test_a_reader_stops_polling_when_replies_come_late_and_polls_again_when_they_come_fast() -> None:
    """Replies later than twice the polling budget halve it, down to no polling (a retry now and
    then); a reply caught while polling restores it. Real sockets: the peer answers late, then at once."""
    a, b = socket.socketpair()
    key = os.urandom(32)
    reader, peer = FrameSocket(PlainIO(a), key, key), FrameSocket(PlainIO(b), key, key)
    spin = Spin(0.002)
    reader.spin = spin
    try:
        budgets = []
        for _ in range(4):  # each reply comes 20 ms after the read starts: far beyond 2 x 2 ms
            timer = threading.Timer(0.02, peer.send, (w.REPLY, 1, b"late"))
            timer.start()
            budgets.append(spin.budget())
            assert reader.recv()[3] == b"late"
            timer.join()
        assert budgets[:3] == [0.002, 0.001, 0.0005]
        assert spin.budget() == 0.0  # polling stopped ...
        spin._retry_at = 0.0  # ... until its retry time comes (made now instead of in 50 ms)
        assert spin.budget() == 0.002
        peer.send(w.REPLY, 2, b"soon")  # bytes there when the poll starts: caught
        assert reader.recv()[3] == b"soon"
        assert spin._budget == 0.002  # the full budget again, without waiting for a retry
    finally:
        reader.close()
        peer.close()
