"""Compaction racing writes in flight: nothing reachable is ever dropped, the log stays bounded.

A large write is several steps (DATA record appended or streamed, synced, then the PUT that makes
it reachable). These tests force a compaction after *each* step the store takes, in turn, and
check that the acknowledged object is readable at once, after a reopen and after further
compactions; then they race writers against a compacting thread.
"""

from __future__ import annotations

import mmap
import os
import random
import threading
import uuid

import pytest

from storage_api._backend._store import BIG_BUFFER, DataStream, Store

STREAMED = 4 << 20  # a buffer the transport streams into the log as it arrives (at least 4 MiB)


def _id() -> str:
    return str(uuid.uuid4())


def _reopen(store: Store) -> Store:
    store.close()
    return Store(store.dir.parent, segment_bytes=store.segment_bytes, compact_min=store.compact_min)


class _Steps:
    """Counts the store's internal steps and starts a compaction (in a thread) after step ``at``.

    The steps are the store's own methods (appends, syncs, pin releases, a stream's progress),
    wrapped on the real objects: every boundary between them is a point where a compaction
    started by another writer could run.
    """

    def __init__(self, store: Store, at: int) -> None:
        self.store = store
        self.at = at
        self.count = 0
        self.thread: threading.Thread | None = None
        self._patches: list[tuple[object, str, object]] = []
        for name in ("_append", "sync", "_unpin", "_roll"):
            self._wrap(store, name)

    def wrap_stream(self, stream: DataStream) -> DataStream:
        for name in ("start", "advance", "done", "wait"):
            self._wrap(stream, name)
        return stream

    def _wrap(self, target: object, name: str) -> None:
        original = getattr(target, name, None)
        if original is None:
            return

        def step(*args, **kwargs):
            result = original(*args, **kwargs)
            self.count += 1
            if self.count == self.at and threading.current_thread() is not self.thread:
                self.thread = threading.Thread(target=self.store.compact)
                self.thread.start()
            return result

        setattr(target, name, step)

    def join(self) -> None:
        if self.thread is not None:
            self.thread.join(timeout=30)
            assert not self.thread.is_alive(), "compaction never finished"


def _stream(store: Store, steps: _Steps, data: bytes) -> tuple[DataStream, mmap.mmap]:
    """Receive ``data`` into a streamed DATA record in pieces, as the transport does."""
    stream = steps.wrap_stream(store.open_stream(len(data)))
    buf = mmap.mmap(-1, len(data))
    stream.start(buf)
    view = memoryview(buf)
    piece = len(data) // 3 + 1
    for start in range(0, len(data), piece):
        end = min(len(data), start + piece)
        view[start:end] = data[start:end]
        stream.advance(end)
    stream.done()
    return stream, buf


def _fill(store: Store) -> list[str]:
    """Garbage in older segments, so that every compaction has something to drop and rewrite."""
    ids = [_id() for _ in range(3)]
    for i in ids:
        for r in range(3):
            store.sync(store.put(i, {"class": "m.A"}, b"old%d" % r, [os.urandom(BIG_BUFFER + r)]))
    return ids


def _write_with_compaction_after_step(tmp_path, kind: str, at: int) -> int:
    """One large write with a compaction forced after its step ``at``; return how many steps it took."""
    store = Store(tmp_path, segment_bytes=8 << 20, compact_min=0)
    background = _fill(store)
    survivors = {i: bytes(store.load(i)[2][0]) for i in background}
    steps = _Steps(store, at)
    data = os.urandom(STREAMED + 12_345)
    oid = _id()
    if kind == "streamed":
        stream, buf = _stream(store, steps, data)
        lsn = store.put(oid, {"class": "m.A"}, b"state", [buf], [stream])
    else:
        lsn = store.put(oid, {"class": "m.A"}, b"state", [bytearray(data)])
    store.sync(lsn)  # acknowledged from here on
    steps.join()
    assert bytes(store.load(oid)[2][0]) == data
    store.compact()  # a later compaction copies it again: every reference must still resolve
    assert bytes(store.load(oid)[2][0]) == data
    reopened = _reopen(store)
    assert bytes(reopened.load(oid)[2][0]) == data
    for i, buf in survivors.items():
        assert bytes(reopened.load(i)[2][0]) == buf
    reopened.compact()
    st = reopened.stats()
    assert st["segments"] <= 2 and st["log_bytes"] <= 3 * st["live_bytes"], st
    assert bytes(_reopen(reopened).load(oid)[2][0]) == data
    return steps.count


@pytest.mark.parametrize("kind", ["two-phase", "streamed"])
def test_compaction_after_every_step_of_a_large_write_keeps_it(tmp_path, kind):
    at = 1
    while True:
        taken = _write_with_compaction_after_step(tmp_path / f"at{at}", kind, at)
        if at >= taken:
            break
        at += 1
    assert at >= (4 if kind == "two-phase" else 8)  # every step was tried


def test_concurrent_large_writers_racing_compactions_lose_nothing(tmp_path):
    """Two writers of large objects (streamed and two-phase), a third thread compacting without
    pause: every acknowledged version is the one read back, live and after a reopen."""
    store = Store(tmp_path, segment_bytes=16 << 20, compact_min=0)
    acked: dict[str, bytes] = {}
    lock = threading.Lock()
    errors: list[BaseException] = []
    stop = threading.Event()

    def writer(seed: int, streamed: bool) -> None:
        rng = random.Random(seed)
        ids = [_id() for _ in range(3)]
        try:
            for _ in range(25):
                oid = rng.choice(ids)
                data = rng.randbytes(rng.choice([BIG_BUFFER + 7, 3 * BIG_BUFFER, STREAMED + 99]))
                if streamed and len(data) >= STREAMED:
                    stream = store.open_stream(len(data))
                    buf = mmap.mmap(-1, len(data))
                    stream.start(buf)
                    buf[:] = data
                    stream.advance(len(data))
                    stream.done()
                    lsn = store.put(oid, {"class": "m.A"}, b"s", [buf], [stream])
                else:
                    lsn = store.put(oid, {"class": "m.A"}, b"s", [data])
                store.sync(lsn)
                with lock:
                    acked[oid] = data
        except BaseException as exc:
            errors.append(exc)

    def compactor() -> None:
        while not stop.is_set():
            try:
                store.compact()
            except BaseException as exc:
                errors.append(exc)
                return

    writers = [threading.Thread(target=writer, args=(s, s == 1)) for s in (1, 2)]
    comp = threading.Thread(target=compactor)
    comp.start()
    for t in writers:
        t.start()
    for t in writers:
        t.join()
    stop.set()
    comp.join()
    assert not errors
    for oid, data in acked.items():
        assert bytes(store.load(oid)[2][0]) == data
    store.compact()
    st = store.stats()
    assert st["log_bytes"] <= 3 * st["live_bytes"], st
    reopened = _reopen(store)
    for oid, data in acked.items():
        assert bytes(reopened.load(oid)[2][0]) == data
    reopened.close()


def test_a_stream_nobody_claims_stops_pinning_its_segment(tmp_path):
    """A streamed buffer whose request failed before it was stored must not block compaction."""
    import gc

    store = Store(tmp_path, segment_bytes=8 << 20, compact_min=0)
    _fill(store)
    stream = store.open_stream(STREAMED)
    buf = mmap.mmap(-1, STREAMED)
    stream.start(buf)
    stream.advance(1 << 20)
    stream.done(ok=False)  # the connection died mid-transfer
    with pytest.raises(OSError):
        stream.wait()
    del stream
    gc.collect()
    done = threading.Thread(target=store.compact)
    done.start()
    done.join(timeout=10)
    assert not done.is_alive()
    store.close()
