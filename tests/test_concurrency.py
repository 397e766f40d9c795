"""Concurrent calls: multiplexed on one connection, never losing an update."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

from tests.conftest import unique
from tests.models import Counter


def test_16_threads_x_500_increments(client):
    c = Counter(0)
    c.make_persistent()
    seen: list[list[int]] = [[] for _ in range(16)]

    def work(i: int) -> None:
        for _ in range(500):
            seen[i].append(c.inc())

    threads = [threading.Thread(target=work, args=(i,)) for i in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert c.get() == 8000
    returned = sorted(v for s in seen for v in s)
    assert returned == list(range(1, 8001))  # every increment happened exactly once


def test_readonly_calls_run_concurrently(client):
    c = Counter(0)
    c.make_persistent()
    name = unique("readers")
    with ThreadPoolExecutor(8) as pool:  # all 8 must be inside the method at once to meet
        results = list(pool.map(lambda _: c.meet(name, 8, 30.0), range(8)))
    assert results == [True] * 8


def test_slow_call_does_not_block_others_on_the_same_connection(client):
    a, b = Counter(0), Counter(0)
    a.make_persistent(backend="b0")
    b.make_persistent(backend="b0")
    gate = unique("gate")
    slow = a.hold.submit(gate, 60.0)  # runs until released
    assert [b.inc() for _ in range(20)] == list(range(1, 21))
    assert not slow.done()
    a.release(gate)
    assert slow.result(timeout=30) is True


def test_threads_with_their_own_objects(client):
    counters = [Counter(0) for _ in range(8)]
    for c in counters:
        c.make_persistent()
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda c: [c.inc() for _ in range(100)], counters))
    assert [c.get() for c in counters] == [100] * 8


def test_delete_while_calls_wait_does_not_resurrect(client):
    import pytest

    from storage_api import _messages as m
    from storage_api.errors import ObjectNotFound

    c = Counter(0)
    c.make_persistent(backend="b0")
    oid, bid = c.getID(), c._sa_backend
    slow = [c.sleep.submit(0.3) for _ in range(2)]  # read locks held for a while
    deleting = client.send(bid, m.Delete(oid), wait=False)  # queued behind them
    writes = [c.inc.submit() for _ in range(5)]  # queued after the delete
    deleting.result(timeout=10)
    for f in writes:
        try:
            f.result(timeout=10)
        except ObjectNotFound:
            pass
    assert all(f.result(timeout=10) == 0.3 for f in slow)
    # ask the backend itself (not Redis): the object is neither in memory nor in its log
    with pytest.raises(ObjectNotFound):
        client.send(bid, m.Call(oid, "get", (), {}, None))
