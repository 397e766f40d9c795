"""The benchmark's model class (imported by the backends as ``bench._model.Bench``)."""

from __future__ import annotations

from typing import Any

from storage_api import ActiveObject, activemethod


class Bench(ActiveObject):
    value: int
    data: Any

    def __init__(self, data: Any = None) -> None:
        self.value = 0
        self.data = data

    @activemethod(readonly=True)
    def noop(self) -> None:
        return None

    @activemethod
    def inc(self, n: int = 1) -> int:
        self.value += n
        return self.value

    @activemethod
    def put(self, data: Any) -> None:
        self.data = data

    @activemethod(readonly=True)
    def get(self) -> Any:
        return self.data
