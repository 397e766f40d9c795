"""Freeing what backends keep for a run: answers of tasks run there, copies of them other backends
fetched, and local values stashed there for the tasks that read them.

A task whose answer (or stashed value) a backend keeps is held here (:meth:`Frees.hold`). Its keys
are freed once the app cannot reach its results any more: its ``Task`` is garbage-collected (the
app dropped its futures; a task still to run holds the futures it reads, so its inputs stay), or
the app deleted every one of its results with ``compss_delete_object`` and no task still to run
reads them (the engine then calls the task's ``release``). Keys are sent in batches, as one
``TaskDrop`` per backend, once :data:`BATCH` of them wait, at each barrier, and at the end of the run.
"""

from __future__ import annotations

import threading
import weakref
from typing import Any, Callable

BATCH = 256  # keys waiting before a batch is sent


class Frees:
    """The keys waiting to be freed, by backend. ``full()`` is called (from any thread, a
    garbage collection's too) when a batch is ready to send."""

    def __init__(self, full: Callable[[], None]) -> None:
        self._lock = threading.RLock()  # a collection may run a release inside another one's add
        self._batch: dict[str, list[str]] = {}
        self._size = 0
        self._full = full
        self._held: weakref.WeakSet = weakref.WeakSet()

    def hold(self, task: Any) -> None:
        """Free ``task``'s keys (``task.holders``, ``task.stashed``) when it is collected or released."""
        if task.release is None:
            task.release = weakref.finalize(task, self._add, task.key, task.holders, task.stashed)
            task.release.atexit = False
            self._held.add(task)

    @property
    def held(self) -> int:
        """Tasks whose keys backends still keep (or that wait in the batch)."""
        return sum(1 for task in list(self._held) if task.release.alive)

    def _add(self, key: str, holders: set[str], stashed: dict[tuple, set[str]]) -> None:
        with self._lock:
            for bid in holders:
                self._batch.setdefault(bid, []).append(key)
            for path, bids in stashed.items():
                for bid in bids:
                    self._batch.setdefault(bid, []).append(f"{key}/{path}")
            self._size += len(holders) + sum(len(b) for b in stashed.values())
            full = self._size >= BATCH
        if full:
            self._full()

    def take(self, everything: bool = False) -> dict[str, list[str]]:
        """The keys to free now, by backend (with ``everything``: those of every task still held,
        at the end of the run)."""
        if everything:
            for task in list(self._held):
                task.release()  # once: a no-op for one released already
        with self._lock:
            batch, self._batch, self._size = self._batch, {}, 0
        return batch
