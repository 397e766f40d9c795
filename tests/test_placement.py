"""Move, replicas and failover, against real backends (see storage_api/_backend/_placement.py)."""

from __future__ import annotations

import signal
import threading
import time

import numpy as np
import pytest

from storage_api import get_by_id
from storage_api._backend._placement import NotPrimary
from storage_api._retry import Backoff, Retry
from storage_api._messages import Call, GetAttr
from storage_api.errors import CommunicationError, ObjectNotFound, StoreError

from .conftest import wait_for
from .models import Counter, Holder


def _ids(client) -> dict[str, str]:
    return {b.name: b.id for b in client.backends()}


def _direct(client, backend: str, oid: str, method: str, *args, rid=None):
    """Call a method on one particular backend's copy, bypassing routing."""
    return client.send(backend, Call(oid, method, args, {}, rid))


def _gone_from(client, backend: str, oid: str) -> bool:
    """Whether that backend no longer serves the object (it answers ObjectNotFound)."""
    try:
        _direct(client, backend, oid, "get")
    except ObjectNotFound:
        return True
    return False


def _hammer(obj, threads: int, calls: int, results: list, errors: list, stop: threading.Event | None = None):
    def work():
        for _ in range(calls):
            if stop is not None and stop.is_set():
                return
            try:
                results.append(obj.inc())
            except Exception as exc:  # the test asserts there are none
                errors.append(exc)

    pool = [threading.Thread(target=work) for _ in range(threads)]
    for t in pool:
        t.start()
    return pool


# ------------------------------------------------------------------ move
def test_move_keeps_the_id_and_state_and_every_handle_follows(cluster, client):
    c = Counter(5)
    oid = c.make_persistent(backend="b0")
    other = cluster.client()  # a second client that located the object before the move
    try:
        h = other.get_by_id(oid)
        assert h.where() == str(cluster.backend("b0").pid)
        c.move("b1")
        assert c.getID() == oid
        assert client.placement(oid).backend == _ids(client)["b1"]
        assert c.inc() == 6
        assert h.inc() == 7  # stale location: it finds the object on b1
        assert h.where() == str(cluster.backend("b1").pid)
        with pytest.raises(ObjectNotFound):  # b0 no longer holds it
            _direct(client, "b0", oid, "get")
    finally:
        other.close()


def test_move_under_concurrent_calls_loses_and_repeats_nothing(cluster, client):
    c = Counter(0)
    c.make_persistent(backend="b0")
    results: list[int] = []
    errors: list[Exception] = []
    pool = _hammer(c, threads=6, calls=150, results=results, errors=errors)
    moves = 0
    while any(t.is_alive() for t in pool):
        c.move("b1" if moves % 2 == 0 else "b0")
        moves += 1
        time.sleep(0.01)
    for t in pool:
        t.join()
    assert not errors
    assert moves >= 2
    assert c.get() == 900
    assert sorted(results) == list(range(1, 901))  # each call ran exactly once


def test_recursive_move_takes_the_referenced_objects_along(cluster, client):
    inner = Counter(3)
    inner.make_persistent(backend="b0")
    outer = Holder(data="x", other=inner)
    outer.make_persistent(backend="b0")
    moved = client.move(outer, "b1", recursive=True)
    assert set(moved) == {outer.getID(), inner.getID()}
    b1 = _ids(client)["b1"]
    assert client.placement(inner.getID()).backend == b1
    assert inner.inc() == 4 and inner.where() == str(cluster.backend("b1").pid)


# --------------------------------------------------------------- replicas
def test_replicas_take_every_write_and_serve_reads(cluster, client):
    c = Counter(0)
    oid = c.make_persistent(backend="b0")
    c.new_replica("b1")
    assert [b.name for b in c.replicas()] == ["b1"]
    results: list[int] = []
    errors: list[Exception] = []
    for t in _hammer(c, threads=8, calls=100, results=results, errors=errors):
        t.join()
    assert not errors and sorted(results) == list(range(1, 801))
    # every replica equals the primary
    assert _direct(client, "b0", oid, "get") == _direct(client, "b1", oid, "get") == 800
    # read-only methods are spread over the copies; mutating ones only reach the primary
    pids = {c.where() for _ in range(60)}
    assert pids == {str(cluster.backend("b0").pid), str(cluster.backend("b1").pid)}
    with pytest.raises(NotPrimary):
        _direct(client, "b1", oid, "inc", 1, rid="direct-1")
    c.drop_replica("b1")
    assert c.replicas() == []
    wait_for(lambda: _gone_from(client, "b1", oid), 20, "b1 to drop its copy")  # the notice is asynchronous


def test_delete_removes_the_replicas(cluster, client):
    c = Counter(1)
    oid = c.make_persistent(backend="b1")
    c.new_replica("b0")
    c.delete_persistent()
    with pytest.raises(ObjectNotFound):
        client.placement(oid)
    wait_for(lambda: _gone_from(client, "b0", oid), 20, "b0 to drop its replica")


def test_copy_is_a_new_independent_object(cluster, client):
    c = Counter(10)
    oid = c.make_persistent(backend="b0")
    new = client.copy(oid, "b1")
    assert new != oid
    copy = get_by_id(new)
    assert copy.get() == 10 and client.placement(new).backend == _ids(client)["b1"]
    copy.inc()
    assert copy.get() == 11 and c.get() == 10


def test_move_and_replica_of_a_100_mb_array(cluster, client):
    data = np.random.default_rng(0).random(100 * 2**20 // 8)
    h = Holder(data=data)
    oid = h.make_persistent(backend="b0")
    h.new_replica("b1")
    got = client.send("b1", GetAttr(oid, "data"))
    assert np.array_equal(got, data)
    del got
    h.move("b1")  # the replica's backend becomes the primary
    rec = client.placement(oid)
    assert rec.backend == _ids(client)["b1"] and rec.replicas == ()
    assert np.array_equal(h.take(), data)
    h.delete_persistent()


# --------------------------------------------------------------- failover
def test_failover_after_kill_loses_no_acknowledged_write(own_cluster, own_client):
    c = Counter(0)
    oid = c.make_persistent(backend="b0")
    c.new_replica("b1")
    results: list[int] = []
    errors: list[Exception] = []
    stop = threading.Event()
    pool = _hammer(c, threads=4, calls=10_000, results=results, errors=errors, stop=stop)
    wait_for(lambda: len(results) >= 200 or errors, 60, "200 calls before the kill")
    own_cluster.kill("b0", signal.SIGKILL)
    killed_at = len(results)
    deadline = time.monotonic() + 20
    while len(results) < killed_at + 200 and time.monotonic() < deadline and not errors:
        time.sleep(0.01)
    stop.set()
    for t in pool:
        t.join()
    assert not errors, errors[:3]  # the callers saw retries, not errors
    assert len(results) >= killed_at + 200
    b1 = _ids(own_client)["b1"]
    assert own_client.placement(oid).backend == b1
    # every acknowledged write is there, none twice
    assert c.get() == len(results)
    assert sorted(results) == list(range(1, len(results) + 1))

    # the old primary comes back: it drops its stale copy instead of serving it
    own_cluster.restart("b0")
    with pytest.raises(ObjectNotFound):
        _direct(own_client, "b0", oid, "get")
    assert own_client.placement(oid).backend == b1
    assert c.inc() == len(results) + 1


def test_a_frozen_primary_does_not_serve_stale_state_when_it_thaws(own_cluster, own_client):
    c = Counter(0)
    oid = c.make_persistent(backend="b0")
    c.new_replica("b1")
    assert c.inc() == 1
    own_cluster.kill("b0", signal.SIGSTOP)
    try:
        assert c.inc() == 2  # blocks until b0's heartbeat expires, then fails over to b1
        assert own_client.placement(oid).backend == _ids(own_client)["b1"]
    finally:
        own_cluster.kill("b0", signal.SIGCONT)
    with pytest.raises(ObjectNotFound):  # its lease lapsed: it checks Redis before serving
        _direct(own_client, "b0", oid, "inc", 1, rid="stale-write")
    assert c.get() == 2


def test_restarts_keep_replicas_in_step_and_failover_loses_nothing(own_cluster, own_client):
    """A primary restarted on its log sends its writes to the replicas Redis lists again, and a
    replica restarted between writes takes the next one (a new connection, the whole state)."""
    c = Counter(0)
    oid = c.make_persistent(backend="b0")
    c.new_replica("b1")
    assert [c.inc(), c.inc()] == [1, 2]
    own_cluster.kill("b1", signal.SIGKILL)  # the replica, between writes: still listed
    own_cluster.restart("b1")
    assert c.inc() == 3
    assert [b.name for b in c.replicas()] == ["b1"] and _direct(own_client, "b1", oid, "get") == 3
    own_cluster.kill("b0", signal.SIGKILL)  # the primary, restarted before any failover
    own_cluster.restart("b0")
    assert [c.inc(), c.inc()] == [4, 5]
    assert _direct(own_client, "b1", oid, "get") == 5  # reads there see every acknowledged write
    own_cluster.kill("b0", signal.SIGKILL)
    assert c.inc() == 6  # failed over to b1, nothing lost
    assert own_client.placement(oid).backend == _ids(own_client)["b1"]


def test_without_replicas_a_dead_primary_fails_at_once(own_cluster, own_client):
    c = Counter(0)
    c.make_persistent(backend="b0")
    own_cluster.kill("b0", signal.SIGKILL)
    start = time.monotonic()
    with pytest.raises(CommunicationError) as failed:
        c.inc()
    assert time.monotonic() - start < 2.0
    assert "`storage-api status`" in str(failed.value)  # what to do: look...
    with pytest.raises(CommunicationError, match="is unreachable") as failed:
        c.inc()
    assert own_cluster.backend("b0").storage_dir in str(failed.value)  # ... and start it again on its data


# ------------------------------------------------------------ retry policy
class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0
        self.sleeps: list[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


def test_retry_backs_off_exponentially_up_to_the_cap_and_stops_at_the_deadline():
    clock = FakeClock()
    retry = Retry(deadline=2.0, backoff=Backoff(base=0.1, factor=2.0, cap=0.5, jitter=0.0),
                  clock=clock, sleep=clock.sleep, rand=lambda: 0.5)
    attempts = list(retry.attempts())
    assert clock.sleeps[:4] == pytest.approx([0.1, 0.2, 0.4, 0.5])
    assert all(s == pytest.approx(0.5) for s in clock.sleeps[3:])
    assert sum(clock.sleeps) <= 2.0 and attempts == list(range(len(clock.sleeps) + 1))
    assert sum(clock.sleeps) + 0.5 > 2.0  # one more pause would have passed the deadline


def test_retry_jitter_stays_within_its_bounds():
    b = Backoff(base=1.0, factor=1.0, cap=1.0, jitter=0.2)
    assert b.delay(0, 0.0) == pytest.approx(0.8) and b.delay(0, 1.0) == pytest.approx(1.2)
    assert list(Retry(deadline=0.0, clock=FakeClock(), sleep=lambda s: None).attempts()) == [0]


def test_a_retried_call_is_answered_from_its_first_run(cluster, client):
    c = Counter(0)
    oid = c.make_persistent(backend="b0")
    c.new_replica("b1")
    assert _direct(client, "b0", oid, "inc", 5, rid="same-request") == 5
    assert _direct(client, "b0", oid, "inc", 5, rid="same-request") == 5  # not applied twice
    for _ in range(2):
        with pytest.raises(ValueError, match="boom"):
            _direct(client, "b0", oid, "fail", "boom", rid="failing-request")
    assert c.get() == -1
    assert _direct(client, "b0", oid, "inc", 1, rid="another") == 0
    assert _direct(client, "b1", oid, "get") == 0  # the replica took each write once


def test_a_retried_call_whose_result_was_too_large_to_keep_is_not_run_twice(cluster, client):
    """Results kept for retries are bounded (they stay with the object, and travel with it on
    moves and to replicas): a retry of an applied call with a large result says so."""
    h = Holder(np.arange(1 << 17, dtype=np.float64))  # 1 MiB
    oid = h.make_persistent(backend="b0")
    first = _direct(client, "b0", oid, "swap", np.ones(4), rid="large-answer")
    np.testing.assert_array_equal(first, np.arange(1 << 17, dtype=np.float64))
    with pytest.raises(StoreError, match=r"applied, but its result \(\d+ bytes\) was too large to keep"):
        _direct(client, "b0", oid, "swap", np.full(4, 2.0), rid="large-answer")
    np.testing.assert_array_equal(h.take(), np.ones(4))  # the retry did not run again
    assert _direct(client, "b0", oid, "swap", np.zeros(2), rid="small-answer").tolist() == [1.0] * 4
    assert _direct(client, "b0", oid, "swap", np.full(2, 9.0), rid="small-answer").tolist() == [1.0] * 4  # kept
    np.testing.assert_array_equal(h.take(), np.zeros(2))
    h.delete_persistent()


def test_a_client_reconnects_to_a_restarted_backend(own_cluster, own_client):
    c = Counter(0)
    c.make_persistent(backend="b0")
    assert c.inc() == 1
    own_cluster.kill("b0", signal.SIGKILL)
    own_cluster.restart("b0")
    assert c.inc() == 2  # the old connection died with the old process: the same client goes on
