"""The set-up each Dask worker of a run does (a worker plugin, apart so that importing the engine
does not import ``distributed``: backends import the engine's package to run tasks)."""

from __future__ import annotations

import sys
from typing import Any

from distributed.diagnostics.plugin import WorkerPlugin


class AppSetup(WorkerPlugin):
    """What every worker of the run does before its first task: the app's import path first,
    Ctrl-C left to the launcher, and the app script as ``__main__``, run only when a task needs one
    of its names (as PyCOMPSs' workers import only their tasks' modules). A Dask worker plugin."""

    name = "storage-api-app"

    def __init__(self, paths: list[str], script: str | None) -> None:
        self.paths = list(paths)
        self.script = script

    def setup(self, worker: Any = None) -> None:
        for p in reversed(self.paths):
            if p in sys.path:
                sys.path.remove(p)
            sys.path.insert(0, p)
        from ._worker import setup

        setup(self.script)
