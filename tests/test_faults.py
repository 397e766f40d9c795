"""The fault suite (short version; ``python -m bench.faults`` runs the long one).

Real faults on real processes (see ``tests/faultkit.py``): a disk that fills (a small tmpfs,
mounted here as root), Redis killed and restarted without its data under load, a slow link (a
throttling proxy) carrying large transfers, calls during repeated moves; compaction racing writes
is in ``test_faults_compaction.py``. Each test checks that every acknowledged operation survived,
that failed ones left no trace, and that the backends stayed up.
"""

from __future__ import annotations

import os
import signal
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from storage_api._backend._store import BIG_BUFFER, Store
from storage_api._deploy import _local
from storage_api.errors import StorageFull, UnserializableState

from .conftest import Cluster, _installed, _start
from .faultkit import (empty_redis_rounds, fill, kill9_large_writers, mount_tmpfs, moves_under_calls, slow_backend,
                       unmount)
from .models import Counter, Holder


# ------------------------------------------------------------------ helpers
@pytest.fixture
def tmpfs(tmp_path: Path) -> Iterator[callable]:
    """``tmpfs(path, mib)`` mounts a tmpfs of that size at ``path`` (unmounted after the test)."""
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs to fill needs root (CI runs as root)")
    mounted: list[Path] = []

    def mount(path: Path, mib: int) -> Path:
        mounted.append(mount_tmpfs(path, mib))
        return path

    yield mount
    for path in reversed(mounted):
        unmount(path)


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
    filler = fill(disk)
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
        filler = fill(disk)
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
        fill(disk, leave=3 << 20)
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


# ------------------------------------------------------------------ Redis loses its data
FAST_HEARTBEAT = {"heartbeat_interval": 0.25, "heartbeat_ttl": 1.0}


@pytest.fixture
def fast_cluster(tmp_path) -> Iterator[Cluster]:
    """Two backends with a short heartbeat (they notice a lost Redis within 0.25 s)."""
    c = _start(tmp_path / "deploy", 2, FAST_HEARTBEAT)  # conftest's: on emulated hosts when asked
    yield c
    _local.stop(c.dir)


def test_redis_restarted_empty_under_load_loses_nothing(fast_cluster):
    """Redis killed during a call storm and restarted without its data: the backends register
    themselves and their objects again (aliases and replica lists included) without a restart,
    every acknowledged increment is kept, and retries absorb the outage."""
    gen = iter(_installed(fast_cluster))
    client = next(gen)
    try:
        totals = empty_redis_rounds(fast_cluster, client, rounds=1)
    finally:
        gen.close()
    assert totals["acked_ops"] > 0 and not totals["other_errors"], totals
    assert totals["lost"] == totals["missing_by_id"] == totals["missing_by_alias"] == 0, totals
    assert totals["replicas_lost"] == totals["new_persist_failed"] == 0, totals
    assert totals["call_errors"] <= 8, totals  # retries absorb the outage; few calls see it at all


def test_a_deleted_object_is_not_brought_back_by_a_thawed_primary(fast_cluster):
    """The other side of "a missing record is not a takeover": an old primary frozen past a
    failover, whose object the new primary then deleted, finds a tombstone and drops its copy
    (it neither serves it nor registers it again)."""
    from storage_api.errors import ObjectNotFound

    from .test_placement import _direct

    cluster = fast_cluster
    gen = iter(_installed(cluster))
    client = next(gen)
    try:
        c = Counter(0)
        oid = c.make_persistent(backend="b0", alias="tombstoned")
        c.new_replica("b1")
        assert c.inc() == 1
        cluster.kill("b0", signal.SIGSTOP)
        try:
            assert c.inc() == 2  # fails over to b1
            c.delete_persistent()
        finally:
            cluster.kill("b0", signal.SIGCONT)
        with pytest.raises(ObjectNotFound):
            _direct(client, "b0", oid, "get")
        time.sleep(4 * FAST_HEARTBEAT["heartbeat_interval"])  # b0's heartbeats re-check its objects
        assert {b.name: b.objects for b in client.backends()}["b0"] == 0
        with pytest.raises(ObjectNotFound):
            client.get_by_id(oid)
        with pytest.raises(ObjectNotFound):
            Counter.get_by_alias("tombstoned")
        cluster.kill("b0", signal.SIGKILL)  # and its log no longer holds it
        cluster.restart("b0")
        with pytest.raises(ObjectNotFound):
            client.get_by_id(oid)
        assert {b.name: b.objects for b in client.backends()}["b0"] == 0
    finally:
        gen.close()


# ------------------------------------------------------------------ a slow link
SLOW_RATE = 6e6  # bytes/s: a 24 MiB transfer takes 4 s, twice the liveness timeout


@pytest.fixture
def slow_link(tmp_path) -> Iterator[Cluster]:
    """A deployment whose backend "slow" is reached through a 6 MB/s link."""
    c = Cluster(_local.start(tmp_path / "deploy", 1, log_level="INFO"))
    _proc, throttle = slow_backend(c.dep, "slow", SLOW_RATE)
    try:
        c.wait_alive("slow")
        yield c
    finally:
        throttle.stop()
        _local.stop(c.dir)


@pytest.mark.slow
def test_transfers_longer_than_the_liveness_timeout_succeed_on_a_slow_link(slow_link):
    """Liveness by progress: a frame still leaving or arriving keeps the call alive. (On this link
    each transfer takes about twice liveness_timeout; they used to fail with BackendUnavailable.)"""
    gen = iter(_installed(slow_link))
    client = next(gen)
    try:
        assert client.settings.liveness_timeout == 2.0
        data = np.random.default_rng(1).integers(0, 1 << 60, size=3 << 20)  # 24 MiB
        start = time.monotonic()
        h = Holder(data)
        h.make_persistent(backend="slow")  # 24 MiB up (a streamed persist)
        assert time.monotonic() - start > 2 * 1.5
        h.put(data[::-1].copy())  # 24 MiB as an argument
        np.testing.assert_array_equal(h.take(), data[::-1])  # 24 MiB back
    finally:
        gen.close()


def test_a_backend_that_freezes_during_a_large_transfer_still_fails_the_call(slow_link):
    from storage_api.errors import BackendUnavailable

    gen = iter(_installed(slow_link))
    next(gen)
    try:
        h = Holder(None)
        h.make_persistent(backend="slow")
        slow_link.kill("slow", signal.SIGSTOP)
        try:
            start = time.monotonic()
            with pytest.raises(BackendUnavailable):
                h.put(np.ones(3 << 20))
            assert time.monotonic() - start < 15
        finally:
            slow_link.kill("slow", signal.SIGCONT)
    finally:
        gen.close()


@pytest.mark.slow
def test_a_payload_over_the_wire_limit_is_refused_before_it_is_sent(client):
    from storage_api import _wire
    from storage_api.errors import PayloadTooLarge

    h = Holder(None)
    h.make_persistent()
    too_big = "x" * (_wire.MAX_BODY + 1)  # an in-band str (large bytes go out of band): the limit is 1 GiB
    with pytest.raises(PayloadTooLarge, match="1 GiB"):
        h.put(too_big)
    del too_big
    assert h.take() is None


# ------------------------------------------------------------------ up and down
def _processes_of(directory: Path) -> list[int]:
    """Pids of processes started for a deployment: Redis on its files, backends naming its config."""
    pids = set(_local.redis_on(directory))
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if str(directory).encode() in (entry / "cmdline").read_bytes():
                    pids.add(int(entry.name))
            except OSError:
                pass
    return sorted(p for p in pids if _local._alive(p))


@pytest.mark.slow
def test_up_after_down_waits_for_redis_to_load_its_data(tmp_path):
    from storage_api._redis import Redis

    d = tmp_path / "deploy"
    dep = _local.start(d, 1, log_level="WARNING")
    gen = iter(_installed(Cluster(dep)))
    next(gen)
    try:
        c = Counter(41)
        oid = c.make_persistent(alias="survives-loading")
        c.inc()
    finally:
        gen.close()
    r = Redis(dep.redis_url)
    fill_keys = "for i = ARGV[1], ARGV[2] do redis.call('set', 'junk:' .. i, 'x') end"
    for start in range(0, 1_000_000, 200_000):  # a data set that takes a while to load
        r.execute("EVAL", fill_keys, 0, start, start + 199_999)
    r.execute("BGREWRITEAOF")
    while "aof_rewrite_in_progress:1" in r.execute("INFO", "persistence") or \
            "aof_rewrite_scheduled:1" in r.execute("INFO", "persistence"):
        time.sleep(0.05)
    r.close()
    _local.stop(d)
    for _ in range(2):  # used to fail with LOADING (and leave a redis-server behind)
        dep = _local.start(d, 1, log_level="WARNING")
        gen = iter(_installed(Cluster(dep)))
        client = next(gen)
        try:
            assert client.get_by_id(oid).get() == 42
            assert Counter.get_by_alias("survives-loading").getID() == oid
        finally:
            gen.close()
        _local.stop(d)
    assert "DB loaded from append only file" in Path(dep.redis.log).read_text()
    assert _processes_of(d) == []


def test_a_failed_up_stops_what_it_started_and_down_finds_a_stray_redis(tmp_path):
    d = tmp_path / "deploy"
    with pytest.raises(_local.DeploymentError, match="exited during start-up"):
        _local.start(d, 2, settings={"log_segment_mb": 0})  # the backends refuse the setting
    assert _processes_of(d) == [] and _local.Deployment.load(d) is None

    logs = d / "logs"
    stray, _url = _local._start_redis(d, logs)  # a redis-server on the files that nothing records
    try:
        with pytest.raises(_local.DeploymentError, match="still run on the files"):
            _local.start(d, 1)  # never a second Redis on the same files
        assert _local.stop(d)  # `down` finds it
        assert _processes_of(d) == []
    finally:
        if _local._alive(stray.pid):
            os.kill(stray.pid, signal.SIGKILL)
    dep = _local.start(d, 1, log_level="WARNING")
    _local.stop(dep.dir)
    assert _processes_of(d) == []


def test_down_after_an_up_killed_while_it_waited_stops_everything(tmp_path):
    import sys

    home = tmp_path / "home"
    env = {**os.environ, "STORAGE_API_HOME": str(home), "PYTHONPATH": str(Path(__file__).resolve().parent.parent)}
    up = subprocess.Popen([sys.executable, "-m", "storage_api", "up", "--backends", "2"], env=env,
                          stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True)
    assert up.stderr is not None
    for line in up.stderr:
        if "redis-server running" in line:
            break
    up.kill()  # killed while it waits for the backends
    up.wait()
    d = home / "local"
    assert _processes_of(d)  # it left processes behind...
    down = subprocess.run([sys.executable, "-m", "storage_api", "down"], env=env, capture_output=True, text=True)
    assert down.returncode == 0, down.stderr
    assert _processes_of(d) == []  # ... and `down` found them all


# ------------------------------------------------------------------ kill -9 during large writes
@pytest.mark.slow
def test_kill9_during_concurrent_large_writes_and_compactions_loses_nothing(tmp_path):
    """Two writers of 8-24 MiB arrays (streamed persists, large arguments, deletes) on small log
    segments, so that compactions run among them; kill -9 at a random moment, three times."""
    c = Cluster(_local.start(tmp_path / "deploy", 1, log_level="INFO", settings={"log_segment_mb": 16}))
    gen = iter(_installed(c))
    client = next(gen)
    try:
        totals = kill9_large_writers(c, client, rounds=3, mib=(8, 24), seconds=(1.0, 2.5), seed=12)
        assert totals["acked_ops"] >= 10
        assert totals["lost"] == 0 and totals["corrupt"] == 0, totals
        compactions = Path(c.backend("b0").log).read_text().count("compacted ")
        assert compactions >= 1  # the kills met compactions, not just appends
        live, usage = totals["live_bytes"][-1], totals["log_bytes"][-1]
        assert usage <= 3 * live + (64 << 20), totals  # bounded: live data, garbage below the threshold
    finally:
        gen.close()
        _local.stop(c.dir)


# ------------------------------------------------------------------ calls during moves
def test_calls_during_repeated_moves_never_fail(cluster, client):
    totals = moves_under_calls(moves=30, threads=6)
    assert totals["errors"] == 0, totals["first_error"]
    assert totals["final_matches"] and totals["calls"] > 0, totals
