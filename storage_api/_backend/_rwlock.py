"""A writer-preferring readers-writer lock (one per object on a backend)."""

from __future__ import annotations

import threading
from typing import Any


class RWLock:
    __slots__ = ("_mutex", "_cond", "_readers", "_writer", "_writers_waiting", "_shared", "_exclusive")

    def __init__(self) -> None:
        self._mutex = threading.Lock()
        self._cond = threading.Condition(self._mutex)
        self._readers = 0
        self._writer = False
        self._writers_waiting = 0
        # Guards are stateless, so one of each serves every thread (no allocation per use: hot path).
        self._shared = _Guard(self.acquire_read, self.release_read)
        self._exclusive = _Guard(self.acquire_write, self.release_write)

    def reading(self) -> _Guard:
        """``with lock.reading():`` holds the lock shared for the block."""
        return self._shared

    def writing(self) -> _Guard:
        """``with lock.writing():`` holds the lock exclusively for the block."""
        return self._exclusive

    # Readers take the mutex itself, not the condition (whose methods are Python code): every
    # read-only call passes here twice.
    def acquire_read(self) -> None:
        with self._mutex:
            if not (self._writer or self._writers_waiting):
                self._readers += 1
                return
        with self._cond:
            while self._writer or self._writers_waiting:
                self._cond.wait()
            self._readers += 1

    def release_read(self) -> None:
        with self._mutex:
            self._readers -= 1
            if not self._readers and self._writers_waiting:  # only writers wait for readers to leave
                self._cond.notify_all()

    def acquire_write(self) -> None:
        with self._cond:
            self._writers_waiting += 1
            try:
                while self._writer or self._readers:
                    self._cond.wait()
            finally:
                self._writers_waiting -= 1
            self._writer = True

    def release_write(self) -> None:
        with self._cond:
            self._writer = False
            self._cond.notify_all()


class _Guard:
    __slots__ = ("_acquire", "_release")

    def __init__(self, acquire: Any, release: Any) -> None:
        self._acquire = acquire
        self._release = release

    def __enter__(self) -> None:
        self._acquire()

    def __exit__(self, *exc: object) -> None:
        self._release()
