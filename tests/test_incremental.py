"""A mutating call stores what it changed: large buffers it did not write are not written again.

Real backends; the growth of a backend's log (its ``Stats``) shows what a call wrote.
"""

from __future__ import annotations

import signal
import threading
import uuid

import numpy as np
import pytest

from storage_api import _context
from storage_api import _messages as m
from storage_api._backend import _dirty
from storage_api._backend._store import BIG_BUFFER, Store
from tests.conftest import _start, wait_for
from tests.models import Dataset, UnwatchedDataset

MB = 1 << 20
watching = pytest.mark.skipif(not _dirty.available(), reason="no userfaultfd write protection here")


def _log_bytes(client, backend: str) -> int:
    return client.send(backend, m.Stats())["log_bytes"]


def _settled(client, backend: str) -> None:
    """Wait until a compaction that the writes so far started is over (a new version written
    meanwhile cannot share the records being moved: it is written whole)."""

    def idle() -> bool:
        st = client.send(backend, m.Stats())
        return st["log_bytes"] - st["live_bytes"] <= max(64 * MB, st["live_bytes"])

    wait_for(idle, 30, "the end of the compaction")


@watching
def test_unchanged_large_buffer_is_not_written_again(client):
    ds = Dataset(128 * MB)
    ds.make_persistent(backend="b0")
    assert ds.inc() == 1
    _settled(client, "b0")
    before = _log_bytes(client, "b0")
    assert [ds.inc() for _ in range(5)] == [2, 3, 4, 5, 6]
    assert _log_bytes(client, "b0") - before < MB  # five small records, not 5 x 128 MB
    # a method not declared read-only that returns the array: answered, and not written again
    before = _log_bytes(client, "b0")
    assert ds.whole().nbytes == 128 * MB
    assert _log_bytes(client, "b0") - before < MB


@watching
@pytest.mark.parametrize("where", ["client", "backend"])
def test_first_call_after_persisting_does_not_write_the_array_again(client, where):
    """Persisted from a client (the array arrives, streamed to the log) or made on the backend."""
    if where == "client":
        ds = Dataset(32 * MB)
        ds.make_persistent(backend="b1")
    else:
        maker = Dataset(0)
        maker.make_persistent(backend="b1")
        ds = maker.spawn(32 * MB)
    assert client.meta.lookup(ds.getID()).backend == next(b.id for b in client.backends() if b.name == "b1")
    _settled(client, "b1")
    before = _log_bytes(client, "b1")
    assert ds.inc() == 1
    assert _log_bytes(client, "b1") - before < MB
    ds.poke(3, 3)
    assert ds.at(3) == 3


@watching
def test_written_and_replaced_buffers_are_written(client):
    ds = Dataset(8 * MB)
    ds.make_persistent(backend="b1")
    ds.inc()
    _settled(client, "b1")
    before = _log_bytes(client, "b1")
    ds.poke(5 * MB + 3, 7)  # in place: the same array object, one page written
    grown = _log_bytes(client, "b1") - before
    assert grown >= 8 * MB
    assert ds.at(5 * MB + 3) == 7
    before = _log_bytes(client, "b1")
    ds.renew(123, 9)  # a new array, possibly at the old one's address
    assert _log_bytes(client, "b1") - before >= 8 * MB
    _settled(client, "b1")
    before = _log_bytes(client, "b1")
    ds.inc()
    assert _log_bytes(client, "b1") - before < MB
    assert ds.at(123) == 9 and ds.at(5 * MB + 3) == 0


@watching
def test_memory_another_process_can_write_is_written_every_time(client):
    from multiprocessing import shared_memory

    shm = shared_memory.SharedMemory(create=True, size=4 * MB)
    try:
        ds = Dataset(MB)
        ds.make_persistent(backend="b0")
        ds.share(shm.name)
        ds.inc()
        _settled(client, "b0")
        before = _log_bytes(client, "b0")
        shm.buf[7] = 3  # behind the backend's page tables: only storing it again keeps it
        ds.inc()
        assert _log_bytes(client, "b0") - before >= 4 * MB
        ds.delete_persistent()
    finally:
        shm.close()
        shm.unlink()


def test_in_place_writes_survive_kill9(own_cluster, own_client):
    ds = Dataset(16 * MB)
    ds.make_persistent(backend="b0")
    for i in range(3):
        ds.inc()  # unchanged array: its stored copy is reused
        ds.poke(i * 4 * MB + 1, 10 + i)  # changed in place
        ds.inc()
    own_cluster.kill("b0", signal.SIGKILL)
    own_cluster.restart("b0")
    fresh = own_cluster.client()
    previous = _context.install(fresh)
    try:
        again = fresh.get_by_id(ds.getID())
        assert again.inc() == 7
        data = again.whole()
        expected = np.zeros(16 * MB, dtype=np.uint8)
        for i in range(3):
            expected[i * 4 * MB + 1] = 10 + i
        np.testing.assert_array_equal(data, expected)
    finally:
        _context.install(previous)
        fresh.close()


def test_without_write_watch_every_buffer_is_written(tmp_path):
    cluster = _start(tmp_path / "deploy", 1, {"write_watch": False})
    from storage_api._deploy import _local

    client = cluster.client()
    previous = _context.install(client)
    try:
        ds = Dataset(4 * MB)
        ds.make_persistent(backend="b0")
        ds.inc()
        before = _log_bytes(client, "b0")
        ds.inc()
        assert _log_bytes(client, "b0") - before >= 4 * MB
        ds.poke(3, 4)
        assert ds.inc() == 3 and ds.at(3) == 4
    finally:
        _context.install(previous)
        client.close()
        _local.stop(cluster.dir, purge=True)


@watching
def test_a_class_can_turn_write_watching_off(client):
    """``class M(ActiveObject, write_watch=False)``: every write of its objects stores the array,
    on a backend that watches the buffers of other classes."""
    plain, unwatched = Dataset(4 * MB), UnwatchedDataset(4 * MB)
    for ds in (plain, unwatched):
        ds.make_persistent(backend="b1")
        ds.inc()
    grew = []
    for ds in (plain, unwatched):
        _settled(client, "b1")
        before = _log_bytes(client, "b1")
        ds.inc()
        grew.append(_log_bytes(client, "b1") - before)
    assert grew[0] < MB <= 4 * MB <= grew[1]
    assert UnwatchedDataset._sa_write_watch is False and Dataset._sa_write_watch is True
    with pytest.raises(TypeError, match="write_watch must be True or False"):
        type("Stringly", (Dataset,), {}, write_watch="false")


# ------------------------------------------------------------ the log on its own
def _id() -> str:
    return str(uuid.uuid4())


def test_reused_data_records_survive_compaction_and_recovery(tmp_path):
    """Versions that share DATA records with older ones stay exact through compactions (running
    while new versions are written) and a reopening."""
    s = Store(tmp_path, segment_bytes=8 * MB, compact_min=MB)
    rng = np.random.default_rng(7)
    objs = {_id(): (rng.bytes(2 * MB), bytearray(rng.bytes(BIG_BUFFER + 5))) for _ in range(4)}
    lsns = {oid: s.put(oid, {"class": "m.A"}, b"v0", [b"small", fixed, moving]) for oid, (fixed, moving) in objs.items()}
    stop = threading.Event()

    def compacting() -> None:
        while not stop.is_set():
            s.compact()

    worker = threading.Thread(target=compacting)
    worker.start()
    try:
        for version in range(1, 60):
            for n, (oid, (fixed, moving)) in enumerate(objs.items()):
                reuse = {1: 0, 2: 1}  # the stored copies are the same bytes...
                if (version + n) % 5 == 0:
                    moving[version] = version  # ... except where a buffer changed
                    del reuse[2]
                lsns[oid] = s.put(oid, {"class": "m.A"}, b"v%d" % version, [b"small", fixed, moving], reuse=reuse,
                                  base=lsns[oid])
            s.sync(max(lsns.values()))
    finally:
        stop.set()
        worker.join()
    s.compact()
    for store in (s, Store(tmp_path, segment_bytes=8 * MB, compact_min=MB)):
        for oid, (fixed, moving) in objs.items():
            _meta, body, buffers = store.load(oid)
            assert (body, bytes(buffers[0]), bytes(buffers[1]), bytes(buffers[2])) == (b"v59", b"small", fixed,
                                                                                       bytes(moving))
        store.close()
    assert s.stats()["live_bytes"] < 20 * MB  # each buffer's bytes once, not once per version


def test_reuse_of_a_superseded_version_writes_the_buffer(tmp_path):
    s = Store(tmp_path)
    oid = _id()
    first = s.put(oid, {"class": "m.A"}, b"v1", [bytes(2 * MB)])
    s.put(oid, {"class": "m.A"}, b"v2", [b"\x01" * (2 * MB)])
    s.sync(s.put(oid, {"class": "m.A"}, b"v3", [b"\x02" * (2 * MB)], reuse={0: 0}, base=first))
    assert bytes(s.load(oid)[2][0]) == b"\x02" * (2 * MB)
    s.close()


def test_parts_of_a_bytes_value_are_not_taken_for_one_another():
    value = bytes(3 * MB)
    _reuse, kept = _dirty.plan([], [memoryview(value)], BIG_BUFFER)
    assert _dirty.plan(kept, [memoryview(value)], BIG_BUFFER)[0] == {0: 0}  # the same value: reused
    _reuse, kept = _dirty.plan([], [memoryview(value)[: 2 * MB]], BIG_BUFFER)
    assert _dirty.plan(kept, [memoryview(value)[MB:]], BIG_BUFFER)[0] == {}  # same size, other bytes


def test_a_write_waits_for_a_compaction_to_move_the_buffers_it_reuses(tmp_path, monkeypatch):
    """A write that would reuse a buffer the running compaction is moving waits for the copy and
    points at it, rather than storing the buffer whole (which would make the copy garbage at once
    and start the next compaction: a loop while writes go on)."""
    s = Store(tmp_path, compact_min=MB)
    oid = _id()
    base = s.put(oid, {"class": "m.A"}, b"v0", [b"\x07" * (4 * MB)])
    s.sync(base)
    moving, release = threading.Event(), threading.Event()
    copy = s._compact_segments

    def held_copy(old):  # the compaction has condemned the segments; its copying is held here
        moving.set()
        release.wait(30)
        copy(old)

    monkeypatch.setattr(s, "_compact_segments", held_copy)
    compaction = threading.Thread(target=s.compact)
    compaction.start()
    assert moving.wait(30)
    written: list[int] = []
    writer = threading.Thread(target=lambda: written.append(
        s.put(oid, {"class": "m.A"}, b"v1", [b"\x07" * (4 * MB)], reuse={0: 0}, base=base)))
    writer.start()
    writer.join(0.5)
    assert not written  # it waits for the compaction
    release.set()
    compaction.join(30)
    writer.join(30)
    s.sync(written[0])
    assert s.stats()["log_bytes"] < 6 * MB  # the compaction's copy of the buffer, and a small record
    _meta, body, buffers = s.load(oid)
    assert body == b"v1" and bytes(buffers[0]) == b"\x07" * (4 * MB)
    s.close()


def _received(client, backend: str) -> int:
    """Bytes the backend received from its peers (the primary's writes, for a replica)."""
    return client.send(backend, m.Stats())["traffic"].get("served_peer", (0, 0))[1]


@watching
def test_a_replica_receives_and_stores_only_what_changed(client):
    ds = Dataset(16 * MB)
    ds.make_persistent(backend="b0")
    ds.new_replica("b1")
    assert [ds.inc(), ds.inc()] == [1, 2]  # the first write after joining carries the whole state
    _settled(client, "b1")
    log, got = _log_bytes(client, "b1"), _received(client, "b1")
    assert [ds.inc() for _ in range(5)] == [3, 4, 5, 6, 7]
    assert _log_bytes(client, "b1") - log < MB and _received(client, "b1") - got < MB
    ds.poke(5, 9)  # written in place: it travels, and is stored, whole
    assert _log_bytes(client, "b1") - log >= 16 * MB and _received(client, "b1") - got >= 16 * MB
    assert ds.inc() == 8
    oid = ds.getID()
    held = client.send("b1", m.GetAttr(oid, "data"))  # the replica's own copy, from its memory
    assert held[5] == 9 and int(held.sum()) == 9 and client.send("b1", m.GetAttr(oid, "count")) == 8


@watching
def test_a_replicas_reused_records_survive_kill9_and_serve_after_failover(own_cluster, own_client):
    ds = Dataset(16 * MB)
    ds.make_persistent(backend="b0")
    ds.new_replica("b1")
    for i in range(3):
        ds.inc()
        ds.poke(i * 4 * MB + 1, 10 + i)
        ds.inc()
    own_cluster.kill("b1", signal.SIGKILL)  # the replica comes back from its log alone
    own_cluster.restart("b1")
    own_cluster.kill("b0", signal.SIGKILL)  # ... and takes over
    assert ds.inc() == 7
    b1 = next(b.id for b in own_client.backends() if b.name == "b1")
    assert own_client.placement(ds.getID()).backend == b1
    expected = np.zeros(16 * MB, dtype=np.uint8)
    for i in range(3):
        expected[i * 4 * MB + 1] = 10 + i
    np.testing.assert_array_equal(ds.whole(), expected)
