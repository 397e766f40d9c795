"""A model module that imports ``pycompss`` as PyCOMPSs models do (with dataClay's fallback):
backends must import it without PyCOMPSs installed."""

from __future__ import annotations

try:
    from pycompss.api.task import task
except ImportError:
    from dataclay.contrib.dummy_pycompss import task  # type: ignore[no-redef]

from storage_api import ActiveObject, activemethod


class Job(ActiveObject):
    def __init__(self, name: str) -> None:
        self.name = name

    @activemethod(readonly=True)
    def describe(self) -> str:
        return f"{self.name}: task decorator from {task.__module__}"
