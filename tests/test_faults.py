"""The fault suite (short version; ``python -m bench.faults`` runs the long one).

Real faults on real processes: a disk that fills (a small tmpfs, mounted here as root), ...
Each test checks that every acknowledged operation survived, that failed ones left no trace, and
that the backend stayed up.
"""

from __future__ import annotations

import os
import signal
import subprocess
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from storage_api._backend._store import BIG_BUFFER, Store
from storage_api._deploy import _local
from storage_api.errors import StorageFull, UnserializableState

from .conftest import Cluster, _installed
from .models import Counter, Holder


# ------------------------------------------------------------------ helpers
@pytest.fixture
def tmpfs(tmp_path: Path) -> Iterator[callable]:
    """``tmpfs(path, mib)`` mounts a tmpfs of that size at ``path`` (unmounted after the test)."""
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs to fill needs root (CI runs as root)")
    mounted: list[Path] = []

    def mount(path: Path, mib: int) -> Path:
        path.mkdir(parents=True, exist_ok=True)
        subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={mib}m,mode=0700", "tmpfs", str(path)], check=True)
        mounted.append(path)
        return path

    yield mount
    for path in reversed(mounted):
        subprocess.run(["umount", "-l", str(path)], check=False)


def _fill(directory: Path, leave: int = 0) -> Path:
    """Fill the file system of ``directory`` up to ``leave`` free bytes; return the filler file."""
    filler = directory / "filler"
    with open(filler, "ab") as f:
        chunk = b"\0" * (1 << 20)
        while True:
            st = os.statvfs(directory)
            free = st.f_bavail * st.f_frsize - leave
            if free <= 0:
                break
            try:
                f.write(chunk[: min(len(chunk), free)])
                f.flush()
            except OSError:
                break
    return filler


# ------------------------------------------------------------------ disk full: the log itself
def test_store_on_a_full_disk_refuses_cleanly_and_recovers(tmp_path, tmpfs):
    disk = tmpfs(tmp_path / "disk", 16)
    store = Store(disk, compact_min=1 << 40)
    a = str(uuid.uuid4())
    store.sync(store.put(a, {"class": "m.A"}, b"v1", [b"small"]))
    # a fresh log claims 1 MiB, not the 64 MiB of a full preallocation step
    assert os.path.getsize(store._active.path) <= 1 << 20
    big = bytearray(os.urandom(3 * BIG_BUFFER))
    acked = {a: b"v1"}
    with pytest.raises(StorageFull):
        for _ in range(100):  # until the disk is full
            oid = str(uuid.uuid4())
            store.sync(store.put(oid, {"class": "m.A"}, b"big", [big]))
            acked[oid] = b"big"
    with pytest.raises(StorageFull):
        store.put(str(uuid.uuid4()), {"class": "m.A"}, b"x" * (4 << 20), [])
    filler = _fill(disk)
    with pytest.raises(StorageFull):  # small records use up what was preallocated, then fail too
        for i in range(1000):
            store.sync(store.put(a, {"class": "m.A"}, b"v2-%d" % i + bytes(64 << 10), []))
            acked[a] = b"v2-%d" % i + bytes(64 << 10)
    for oid, body in acked.items():  # reads keep working
        assert store.load(oid)[1] == body
    filler.unlink()
    store.sync(store.put(a, {"class": "m.A"}, b"v3", []))
    store.close()
    reopened = Store(disk)
    assert reopened.load(a)[1] == b"v3"
    assert set(reopened.objects()) == set(acked)
    reopened.close()


# ------------------------------------------------------------------ disk full: a backend
@pytest.fixture
def small_disk_cluster(tmp_path, tmpfs) -> Iterator[Cluster]:
    """One backend whose storage directory is a 48 MiB tmpfs."""
    d = tmp_path / "deploy"
    tmpfs(d / "backends" / "b0", 48)
    c = Cluster(_local.start(d, 1, log_level="INFO"))
    yield c
    _local.stop(c.dir)


def test_disk_full_on_every_path_is_a_typed_error_and_leaves_no_trace(small_disk_cluster):
    cluster = small_disk_cluster
    disk = Path(cluster.backend("b0").storage_dir)
    gen = iter(_installed(cluster))
    client = next(gen)
    try:
        counter = Counter(0)
        counter.make_persistent(alias="full-counter-named-at-length")  # its records outweigh the hog's
        for _ in range(5):
            counter.inc()
        blob = Holder(np.arange(1 << 20, dtype=np.int64))  # 8 MiB: a streamed persist
        blob.make_persistent()
        hog = Holder()
        hog.make_persistent()
        filler = _fill(disk)
        # Writes go on into the log's preallocated tail; use it up with ever smaller ones. Each
        # failed write must leave the previous state in place.
        last = None
        for size in (1 << 20, 1 << 14, 1 << 8, None):
            while True:
                value = np.full(size // 8, 3, dtype=np.int64) if size else None
                try:
                    hog.put(value)
                except StorageFull:
                    if last is None:
                        assert hog.take() is None
                    else:
                        np.testing.assert_array_equal(hog.take(), last)
                    break
                last = value

        with pytest.raises(StorageFull):  # a mutating call
            counter.inc()
        assert counter.get() == 5  # its change was undone
        with pytest.raises(StorageFull):  # an attribute write
            counter.value = 100
        assert counter.value == 5
        small = Counter(1)
        with pytest.raises(StorageFull):  # a small persist
            small.make_persistent()
        assert small.getID() is None
        streamed = Holder(np.ones(1 << 20))
        with pytest.raises(StorageFull):  # a streamed persist (used to cut the connection)
            streamed.make_persistent()
        with pytest.raises(StorageFull):  # a constructor run on the backend (stub path)
            client.stub("tests.models.Counter")(3).make_persistent()
        # reads keep working, and the backend is up
        np.testing.assert_array_equal(blob.take(), np.arange(1 << 20, dtype=np.int64))
        assert Counter.get_by_alias("full-counter-named-at-length").get() == 5

        # a backend (re)started on a nearly full disk still stores objects
        filler.unlink()
        _fill(disk, leave=3 << 20)
        cluster.kill("b0", signal.SIGKILL)
        cluster.restart("b0")
        assert counter.inc() == 6  # the failed calls were not applied later either
        tiny = Counter(7)
        tiny.make_persistent()
        assert tiny.inc() == 8
        filler.unlink()
        big = Holder(np.ones(1 << 20))
        big.make_persistent()
        cluster.kill("b0", signal.SIGKILL)
        cluster.restart("b0")
        assert counter.get() == 6 and tiny.get() == 8
        np.testing.assert_array_equal(big.take(), np.ones(1 << 20))
        np.testing.assert_array_equal(blob.take(), np.arange(1 << 20, dtype=np.int64))
    finally:
        gen.close()


# ------------------------------------------------------------------ failed saves
def test_a_state_that_cannot_be_pickled_names_the_attribute_and_is_undone(client):
    holder = Holder(data=[1, 2])
    holder.make_persistent()
    with pytest.raises(UnserializableState) as info:
        holder.put_unpicklable()
    assert info.value.attribute == "data" and "Holder.data" in str(info.value)
    assert holder.take() == [1, 2]  # the failed call left no trace
    holder.put([3])
    assert holder.take() == [3]
    with pytest.raises(UnserializableState) as info:
        Holder(data=1, other=threading.Lock()).make_persistent()
    assert info.value.attribute == "other"
