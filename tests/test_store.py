"""The durable log on its own: recovery, torn tails, large buffers, compaction."""

from __future__ import annotations

import os
import time
import uuid

import pytest

from storage_api._backend._store import BIG_BUFFER, Store


def _id() -> str:
    return str(uuid.uuid4())


def _reopen(store: Store) -> Store:
    store.close()
    return Store(store.dir.parent, segment_bytes=store.segment_bytes, compact_min=store.compact_min)


def test_put_load_delete_and_recover(tmp_path):
    s = Store(tmp_path)
    a, b = _id(), _id()
    s.sync(s.put(a, {"class": "m.A"}, b"state-a", [b"small", bytearray(os.urandom(BIG_BUFFER + 5))]))
    s.sync(s.put(b, {"class": "m.B", "alias": "bee"}, b"state-b1", []))
    s.sync(s.put(b, {"class": "m.B", "alias": "bee"}, b"state-b2", []))
    big = bytes(s.load(a)[2][1])
    s.sync(s.delete(a))
    s2 = _reopen(s)
    assert s2.objects() == {b: {"class": "m.B", "alias": "bee"}}
    assert s2.load(b)[1] == b"state-b2"
    with pytest.raises(KeyError):
        s2.load(a)
    s2.sync(s2.put(a, {"class": "m.A"}, b"again", [big]))
    s3 = _reopen(s2)
    meta, body, buffers = s3.load(a)
    assert body == b"again" and bytes(buffers[0]) == big
    s3.close()


def test_torn_tail_is_ignored_and_overwritten(tmp_path):
    s = Store(tmp_path)
    a = _id()
    s.sync(s.put(a, {"class": "m.A"}, b"v1", []))
    seg = s._active
    end = seg.size
    s.close()
    with open(seg.path, "r+b") as f:  # half a record after the last good one
        f.seek(end)
        f.write(b"SAR1" + os.urandom(40))
    s2 = Store(tmp_path)
    assert s2.load(a)[1] == b"v1"
    s2.sync(s2.put(a, {"class": "m.A"}, b"v2", []))
    assert _reopen(s2).load(a)[1] == b"v2"


def test_corrupt_record_is_not_served(tmp_path):
    s = Store(tmp_path)
    a, b = _id(), _id()
    s.sync(s.put(a, {"class": "m.A"}, b"first", []))
    off = s._active.size
    s.sync(s.put(b, {"class": "m.B"}, b"second", []))
    path = s._active.path
    s.close()
    with open(path, "r+b") as f:  # flip a byte inside the second record's body
        f.seek(off + 64)
        byte = f.read(1)
        f.seek(off + 64)
        f.write(bytes([byte[0] ^ 0xFF]))
    s2 = Store(tmp_path)
    assert set(s2.objects()) == {a}


def test_compaction_keeps_latest_versions_only(tmp_path):
    s = Store(tmp_path, segment_bytes=1 << 20, compact_min=1 << 20)
    ids = [_id() for _ in range(4)]
    payload = {i: os.urandom(BIG_BUFFER * 2) for i in ids}
    for i in ids:
        s.sync(s.put(i, {"class": "m.A"}, b"v0", [payload[i]]))
    for r in range(40):
        s.put(ids[0], {"class": "m.A"}, b"r%d" % r, [os.urandom(200_000)])
    last = os.urandom(200_000)
    s.sync(s.put(ids[0], {"class": "m.A"}, b"final", [last]))
    s.sync(s.delete(ids[3]))
    s.compact()
    st = s.stats()
    assert st["log_bytes"] == st["live_bytes"] or st["segments"] <= 2
    s2 = _reopen(s)
    assert set(s2.objects()) == set(ids[:3])
    meta, body, bufs = s2.load(ids[0])
    assert body == b"final" and bytes(bufs[0]) == last
    for i in ids[1:3]:
        assert bytes(s2.load(i)[2][0]) == payload[i]
    s2.close()


def test_a_reopened_log_compacts_its_garbage_without_waiting_for_a_write(tmp_path):
    s = Store(tmp_path, segment_bytes=1 << 20, compact_min=1 << 40)  # no compaction while writing
    oid = _id()
    for r in range(30):
        s.sync(s.put(oid, {"class": "m.A"}, b"r%d" % r, [os.urandom(200_000)]))
    garbage = s.stats()
    assert garbage["log_bytes"] > 20 * garbage["live_bytes"] and garbage["segments"] > 2
    s.close()
    s2 = Store(tmp_path, segment_bytes=1 << 20, compact_min=1 << 20)
    deadline = time.monotonic() + 30
    while s2.stats()["log_bytes"] > 2 * s2.stats()["live_bytes"] and time.monotonic() < deadline:
        time.sleep(0.02)
    st = s2.stats()
    assert st["log_bytes"] <= 2 * st["live_bytes"] and st["segments"] < garbage["segments"]
    assert s2.load(oid)[1] == b"r29"
    s2.close()
    assert _reopen_plain(tmp_path).load(oid)[1] == b"r29"


def _reopen_plain(path) -> Store:
    return Store(path, segment_bytes=1 << 20, compact_min=1 << 40)


def test_streamed_buffer_is_durable_and_readable(tmp_path):
    """A buffer written into its DATA record while it arrives, then referenced by a PUT."""
    import mmap

    s = Store(tmp_path)
    a = _id()
    s.sync(s.put(_id(), {"class": "m.Other"}, b"before", []))  # unaligned start of the stream
    data = os.urandom(10 * 1024 * 1024 + 123)  # not a multiple of the alignment
    stream = s.open_stream(len(data))
    buf = mmap.mmap(-1, len(data))
    stream.start(buf)
    view = memoryview(buf)
    for start in range(0, len(data), 1 << 20):  # arrives in pieces
        end = min(len(data), start + (1 << 20))
        view[start:end] = data[start:end]
        stream.advance(end)
    stream.done()
    s.sync(s.put(a, {"class": "m.A"}, b"streamed", [buf], [stream]))
    assert bytes(s.load(a)[2][0]) == data
    s2 = _reopen(s)
    assert bytes(s2.load(a)[2][0]) == data
    s2.compact()
    assert bytes(_reopen(s2).load(a)[2][0]) == data


def test_aborted_stream_leaves_a_readable_log(tmp_path):
    import mmap

    s = Store(tmp_path)
    stream = s.open_stream(8 << 20)
    buf = mmap.mmap(-1, 8 << 20)
    stream.start(buf)
    stream.advance(1 << 20)
    stream.done(ok=False)  # the connection died mid-transfer
    with pytest.raises(OSError):
        stream.wait()
    b = _id()
    s.sync(s.put(b, {"class": "m.B"}, b"after", []))
    assert _reopen(s).load(b)[1] == b"after"
