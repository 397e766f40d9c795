"""The backends' per-object readers-writer lock (storage_api._backend._rwlock)."""

from __future__ import annotations

import threading
from collections.abc import Callable

from storage_api._backend._rwlock import RWLock
from tests.conftest import wait_for


def _blocked(lock: RWLock, n: int) -> None:
    """Wait until ``n`` threads sleep inside the lock (its condition's waiters)."""
    wait_for(lambda: len(lock._cond._waiters) == n, 10, f"{n} threads blocked on the lock")


class Worker(threading.Thread):
    """Runs ``acquire``, notes that it holds the lock, waits to be told, runs ``release``."""

    def __init__(self, name: str, acquire: Callable[[], None], release: Callable[[], None], log: list[str]) -> None:
        super().__init__(name=name, daemon=True)
        self.acquire, self.release, self.log = acquire, release, log
        self.holding = threading.Event()
        self.go = threading.Event()

    def run(self) -> None:
        self.acquire()
        self.log.append(self.name)
        self.holding.set()
        self.go.wait(10)
        self.release()

    def finish(self) -> None:
        self.go.set()
        self.join(10)
        assert not self.is_alive()


def reader(lock: RWLock, name: str, log: list[str]) -> Worker:
    return Worker(name, lock.acquire_read, lock.release_read, log)


def writer(lock: RWLock, name: str, log: list[str]) -> Worker:
    return Worker(name, lock.acquire_write, lock.release_write, log)


def test_readers_hold_the_lock_together() -> None:
    lock = RWLock()
    together = threading.Barrier(4, timeout=10)  # broken unless all four hold it at once

    def read() -> None:
        lock.acquire_read()
        try:
            together.wait()
        finally:
            lock.release_read()

    threads = [threading.Thread(target=read) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(15)
    assert not together.broken and not any(t.is_alive() for t in threads)


def test_a_writer_excludes_readers_and_other_writers() -> None:
    lock, log = RWLock(), []
    lock.acquire_write()
    r, w = reader(lock, "r", log), writer(lock, "w", log)
    r.start()
    w.start()
    _blocked(lock, 2)
    assert log == []
    lock.release_write()
    wait_for(lambda: log, 10, "a waiting thread to get the lock")
    first = r if log == ["r"] else w
    _blocked(lock, 1)  # the other still waits
    assert log == [first.name]
    first.finish()
    other = w if first is r else r
    assert other.holding.wait(10)
    other.finish()


def test_a_writer_waits_until_the_last_reader_leaves() -> None:
    lock, log = RWLock(), []
    r1, r2 = reader(lock, "r1", log), reader(lock, "r2", log)
    for r in (r1, r2):
        r.start()
        assert r.holding.wait(10)
    w = writer(lock, "w", log)
    w.start()
    _blocked(lock, 1)
    r1.finish()
    _blocked(lock, 1)  # one reader still holds it
    assert "w" not in log
    r2.finish()
    assert w.holding.wait(10)
    w.finish()


def test_a_waiting_writer_goes_before_readers_that_come_after_it() -> None:
    """Writer preference: once a writer waits, new readers queue behind it, so a stream of
    overlapping readers cannot starve it."""
    lock, log = RWLock(), []
    first = reader(lock, "r-before", log)
    first.start()
    assert first.holding.wait(10)
    w = writer(lock, "w", log)
    w.start()
    _blocked(lock, 1)
    late = reader(lock, "r-after", log)
    late.start()
    _blocked(lock, 2)  # it waits although only a reader holds the lock
    first.finish()
    assert w.holding.wait(10)
    assert log == ["r-before", "w"]
    w.finish()
    assert late.holding.wait(10)
    late.finish()
    assert log == ["r-before", "w", "r-after"]


def test_a_released_writer_lets_every_waiting_reader_in_at_once() -> None:
    lock = RWLock()
    lock.acquire_write()
    together = threading.Barrier(3, timeout=10)

    def read() -> None:
        lock.acquire_read()
        try:
            together.wait()
        finally:
            lock.release_read()

    threads = [threading.Thread(target=read) for _ in range(3)]
    for t in threads:
        t.start()
    _blocked(lock, 3)
    lock.release_write()
    for t in threads:
        t.join(15)
    assert not together.broken


def test_writers_get_through_a_continuous_stream_of_readers() -> None:
    lock = RWLock()
    stop = threading.Event()
    reads = [0]

    def keep_reading() -> None:
        while not stop.is_set():
            lock.acquire_read()
            reads[0] += 1
            lock.release_read()

    readers = [threading.Thread(target=keep_reading, daemon=True) for _ in range(4)]
    for t in readers:
        t.start()
    wait_for(lambda: reads[0] > 100, 10, "readers running")
    done = threading.Event()

    def write_20() -> None:
        for _ in range(20):
            lock.acquire_write()
            lock.release_write()
        done.set()

    threading.Thread(target=write_20, daemon=True).start()
    try:
        assert done.wait(30), "a writer starved behind readers"
    finally:
        stop.set()
        for t in readers:
            t.join(10)


def test_no_reader_sees_a_half_done_write() -> None:
    """Writers update two fields one after the other (switching threads in between); readers
    must only ever see them equal, and no write is lost."""
    lock = RWLock()
    state = {"a": 0, "b": 0}
    torn: list[tuple[int, int]] = []

    def write(n: int) -> None:
        for _ in range(n):
            lock.acquire_write()
            try:
                state["a"] += 1
                threading.Event().wait(0)  # invite a thread switch mid-update
                state["b"] += 1
            finally:
                lock.release_write()

    def read(n: int) -> None:
        for _ in range(n):
            lock.acquire_read()
            try:
                a = state["a"]
                threading.Event().wait(0)
                if state["b"] != a:
                    torn.append((a, state["b"]))
            finally:
                lock.release_read()

    threads = 8
    pool = [threading.Thread(target=write if i % 2 else read, args=(300,)) for i in range(threads)]
    for t in pool:
        t.start()
    for t in pool:
        t.join(60)
    assert not torn
    assert state == {"a": 300 * threads // 2, "b": 300 * threads // 2}
