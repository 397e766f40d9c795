"""Model classes the tests' backends import (as ``tests.models.<Class>``)."""

from __future__ import annotations

import ctypes
import threading
import time
from typing import Any

import numpy as np

from storage_api import ActiveObject, activemethod


# Rendezvous points of concurrent calls on a backend, by name (tests pick unique names).
_barriers: dict[str, threading.Barrier] = {}
_gates: dict[str, threading.Event] = {}
_points = threading.Lock()


def _barrier(name: str, parties: int, timeout: float) -> threading.Barrier:
    with _points:
        return _barriers.setdefault(name, threading.Barrier(parties, timeout=timeout))


def _gate(name: str) -> threading.Event:
    with _points:
        return _gates.setdefault(name, threading.Event())


class Counter(ActiveObject):
    """Counts; the canonical example."""

    value: int

    def __init__(self, start: int = 0) -> None:
        self.value = start

    @activemethod
    def inc(self, n: int = 1) -> int:
        """Add ``n`` and return the new value."""
        self.value += n
        return self.value

    @activemethod(readonly=True)
    def get(self) -> int:
        return self.value

    @activemethod(readonly=True)
    def noop(self) -> None:
        return None

    @activemethod
    def fail(self, message: str) -> None:
        self.value = -1  # a mutation before the error: it must be persisted too
        raise ValueError(message)

    @activemethod(readonly=True)
    def sleep(self, seconds: float) -> float:
        time.sleep(seconds)
        return seconds

    @activemethod(readonly=True)
    def meet(self, name: str, parties: int, timeout: float) -> bool:
        """True once ``parties`` calls of ``name`` are inside at the same time; False if they
        never are within ``timeout`` (calls that run one after the other never meet)."""
        try:
            _barrier(name, parties, timeout).wait()
        except threading.BrokenBarrierError:
            return False
        return True

    @activemethod(readonly=True)
    def hold(self, gate: str, timeout: float) -> bool:
        """Return when ``release(gate)`` is called (True), or after ``timeout`` (False)."""
        return _gate(gate).wait(timeout)

    @activemethod(readonly=True)
    def release(self, gate: str) -> None:
        _gate(gate).set()

    @activemethod(readonly=True)
    def where(self) -> str:
        import os

        return os.environ.get("STORAGE_API_TEST_BACKEND_PID", str(os.getpid()))

    def plain(self) -> str:
        """Not active: runs wherever the object is loaded."""
        return f"value is {self.value}"


class Holder(ActiveObject):
    """Holds arbitrary data: arrays, references to other objects."""

    data: Any
    other: Any

    def __init__(self, data: Any = None, other: Any = None) -> None:
        self.data = data
        self.other = other

    @activemethod
    def put(self, data: Any) -> None:
        self.data = data

    @activemethod
    def swap(self, data: Any) -> Any:
        """Store ``data``; answer what was there."""
        old, self.data = self.data, data
        return old

    @activemethod
    def put_unpicklable(self) -> None:
        """Store a value that cannot be pickled (a lock): saving the new state must fail."""
        import threading

        self.data = threading.Lock()

    @activemethod(readonly=True)
    def take(self) -> Any:
        return self.data

    @activemethod(readonly=True)
    def data_borrows_memory(self) -> bool:
        """True when the array sits in memory it does not own: the receive buffer, not a copy."""
        return not self.data.flags.owndata

    @activemethod(readonly=True)
    def total(self) -> float:
        return float(np.asarray(self.data).sum())

    @activemethod(readonly=True)
    def inspect_arg(self, obj: Any) -> dict:
        """How an argument arrived here: live object, handle or copy."""
        from storage_api import State

        state = getattr(obj, "_sa_state", None)
        return {"state": state.value if isinstance(state, State) else None, "type": type(obj).__name__,
                "id": getattr(obj, "_sa_id", None)}

    @activemethod
    def bump_other(self, n: int) -> int:
        """Call an active method of the referenced object (maybe on another backend)."""
        return self.other.inc(n)

    @activemethod
    def spawn_child(self, start: int) -> Counter:
        """Create a new persistent object from inside a backend."""
        child = Counter(start)
        child.make_persistent()
        self.other = child
        return child

    @activemethod(readonly=True)
    def unpicklable(self) -> Any:
        import threading

        return threading.Lock()


_shared: list[Any] = []


class Dataset(ActiveObject):
    """A large array and a small counter: most calls change little of a large state."""

    def __init__(self, nbytes: int) -> None:
        self.data = np.zeros(nbytes, dtype=np.uint8)
        self.count = 0

    @activemethod
    def inc(self) -> int:
        self.count += 1
        return self.count

    @activemethod
    def poke(self, i: int, value: int) -> None:
        """Change one byte of the array in place (the array stays the same object)."""
        self.data[i] = value

    @activemethod
    def renew(self, i: int, value: int) -> bool:
        """Replace the array by a new zeroed one of the same size with one byte set; the old one
        is freed first, so the new one may get its address (answered)."""
        n, address = self.data.nbytes, self.data.ctypes.data
        self.data = None
        self.data = np.zeros(n, dtype=np.uint8)
        self.data[i] = value
        return bool(self.data.ctypes.data == address)

    @activemethod
    def share(self, name: str) -> None:
        """Hold the array in shared memory that another process can write (``name``'s)."""
        from multiprocessing import resource_tracker, shared_memory

        shm = shared_memory.SharedMemory(name)
        resource_tracker.unregister(shm._name, "shared_memory")  # the test process owns it  # type: ignore[attr-defined]
        _shared.append(shm)  # never closed: closing it would unmap the array's memory under it
        self.data = np.ndarray(shm.size, dtype=np.uint8, buffer=shm.buf)

    @activemethod
    def whole(self) -> Any:
        """The array, from a method not declared read-only."""
        return self.data

    @activemethod(readonly=True)
    def spawn(self, nbytes: int) -> Dataset:
        """A new persistent Dataset made here, on the backend."""
        child = Dataset(nbytes)
        child.make_persistent()
        return child

    @activemethod(readonly=True)
    def at(self, i: int) -> int:
        return int(self.data[i])


class UnwatchedDataset(Dataset, write_watch=False):
    """A Dataset whose backends store the array at every write (as for memory that a device
    writes behind the page tables)."""



class Node(ActiveObject):
    """A linked structure to test references between persistent objects."""

    label: str
    next: Any

    def __init__(self, label: str, next: Any = None) -> None:
        self.label = label
        self.next = next

    @activemethod(readonly=True)
    def chain(self) -> list:
        out, node, seen = [], self, set()
        while node is not None and node.getID() not in seen:
            seen.add(node.getID())
            out.append(node.label)
            node = node.next
        return out


class Trainer(ActiveObject):
    """Reports progress while it works."""

    epochs_done: int

    def __init__(self) -> None:
        self.epochs_done = 0

    @activemethod
    def train(self, epochs: int) -> int:
        from storage_api import report_progress

        for epoch in range(1, epochs + 1):
            self.epochs_done += 1
            report_progress({"epoch": epoch, "loss": 1.0 / epoch})
        return self.epochs_done

    @activemethod
    def train_slowly(self, epochs: int, pause: float) -> int:
        """``train`` with ``pause`` seconds per epoch: long enough to walk away from."""
        import time

        from storage_api import report_progress

        for epoch in range(1, epochs + 1):
            time.sleep(pause)
            self.epochs_done += 1
            report_progress({"epoch": epoch})
        return self.epochs_done

    @activemethod(readonly=True)
    def done(self) -> int:
        return self.epochs_done

    @activemethod
    def quit(self, how: str) -> None:
        """Leave the way a careless library does: ``sys.exit`` or a raised KeyboardInterrupt."""
        import sys

        self.epochs_done = -1
        if how == "exit":
            sys.exit(3)
        raise KeyboardInterrupt

    @activemethod
    def train_other(self, other: Any, epochs: int) -> int:
        """Progress of a call to another backend reaches our own caller."""
        return other.train(epochs)


class Pools(ActiveObject):
    """Reports the intra-op thread pools its methods run with."""

    @activemethod(readonly=True)
    def sizes(self) -> dict[str, Any]:
        import os

        import threadpoolctl
        import torch

        torch.ones(64, 64) @ torch.ones(64, 64)  # the pools as a method that computes sees them
        return {"torch": torch.get_num_threads(), "torch_interop": torch.get_num_interop_threads(),
                "omp_env": os.environ.get("OMP_NUM_THREADS"), "omp_wait": os.environ.get("OMP_WAIT_POLICY"),
                "blas": sorted({p["num_threads"] for p in threadpoolctl.threadpool_info()})}


class LockHolder(ActiveObject):
    """Holds the interpreter lock for a while, as loading a large extension module does."""

    @activemethod(readonly=True)
    def import_module(self, directory: str, name: str) -> str:
        import importlib
        import sys

        sys.path.insert(0, directory)
        try:
            return importlib.import_module(name).__name__
        finally:
            sys.path.remove(directory)

    @activemethod(readonly=True)
    def import_then_hold(self, directory: str, name: str, seconds: float) -> None:
        self.import_module(directory, name)
        self.hold(seconds)

    @activemethod(readonly=True)
    def nap(self, seconds: float) -> float:
        """Sleep (the lock released: the backend answers pings meanwhile)."""
        time.sleep(seconds)
        return seconds

    @activemethod(readonly=True)
    def hold(self, seconds: float) -> None:
        ctypes.PyDLL(None).usleep(int(seconds * 1e6))  # PyDLL: the lock stays held
