"""Sending tasks to backends: the task messages of :mod:`storage_api._messages` through ``Client.send``.

Every task message names one function, :func:`._worker.shipped`, whose first argument says which
task function to run and how many values it declares (so that the backend keeps only those); the
task's own arguments follow. The task function travels by reference: ``("module", name, qualname)``,
or ``("file", path, qualname)`` for functions of the app script (which runs as ``__main__``: the
backend imports the file under a synthetic name). Arguments are pickled with the store's serializer,
so persistent objects travel as references (the live object on its owner, a handle elsewhere);
what that serializer cannot send as it is goes as :mod:`._serial` prepares it.
"""

from __future__ import annotations

import sys
from collections import defaultdict
from concurrent.futures import Future
from typing import TYPE_CHECKING, Any

from storage_api._context import current
from storage_api import _messages as m

if TYPE_CHECKING:
    from ._engine import Engine, Task


SHIPPED = ("module", "workflows.executor._worker", "shipped")  # what a backend runs for every task


def function_ref(func: Any) -> tuple:
    module = func.__module__
    if module in ("__main__", "__mp_main__"):
        path = getattr(sys.modules.get("__main__"), "__file__", None)
        if path is None:
            raise RuntimeError(f"{func.__qualname__} is defined in __main__ without a file: backends cannot import it")
        return ("file", path, func.__qualname__)
    return ("module", module, func.__qualname__)


class Backends:
    """The engine's link to the backends (through the process's storage_api client)."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.client = current()
        self._nodes: dict[str, str] = {}

    def node_of(self, bid: str) -> str:
        """The node (its COMPSs name) backend ``bid`` runs on."""
        if bid not in self._nodes:
            self._nodes.update({b.id: b.compss_name or b.host for b in self.client.backends()})
        return self._nodes.get(bid, bid)

    def backend_of(self, obj: Any) -> str:
        return getattr(obj, "_sa_backend", None) or self.client.locate(obj.getID())

    def submit(self, bid: str, task: Task, args: list, kwargs: dict) -> Future:
        how = (function_ref(task.spec.wrapper), task.n_returns, task.spec.name)
        # the task's argument paths, past the leading ``how``
        outputs = [(p[0] + 1, *p[1:]) if isinstance(p[0], int) else p for p in task.outputs]
        msg = m.Task(SHIPPED, self.engine.paths, [how, *args], kwargs, list(task.writes), outputs, task.key)
        return self.client.send(bid, msg, wait=False)

    def warm(self, modules: list[str], hide: tuple[str, ...]) -> None:
        """Have every live backend import ``modules`` now, in the background (a task of
        ``_worker.warm`` each), so that the first tasks shipped there do not pay for it."""
        ref = ("module", "workflows.executor._worker", "warm")
        for info in self.client.backends():
            if info.alive:
                self.client.send(info.id, m.Task(ref, self.engine.paths, [modules, hide], {}, [], [], None), wait=False)

    def fetch(self, bid: str, key: str, path: tuple) -> Any:
        return self.client.send(bid, m.TaskResult(key, path))

    def drop(self, kept: dict[str, list[str]], wait: bool = True) -> None:
        """Free ``kept`` keys, by backend (``wait``: for the replies)."""
        for bid, keys in kept.items():
            try:
                self.client.send(bid, m.TaskDrop(keys), wait=wait)
            except Exception:  # noqa: BLE001 - cleanup of a dead backend's results: nothing to free
                pass

    def backend_traffic(self) -> dict[str, dict[str, tuple[int, int]]]:
        """Each backend's transport counters (its ``stats``), by backend name."""
        out: dict[str, Any] = defaultdict(dict)
        for b in self.client.backends():
            if b.alive:
                out[b.name] = self.client.send(b.id, m.Stats())["traffic"]
        return dict(out)
