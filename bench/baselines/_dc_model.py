"""The benchmark's model class for dataClay 4.3.1.

Imported as ``_dc_model`` by both the client (``dataclay_calls.py``) and the dataClay backend
subprocess (which gets this folder on its PYTHONPATH), because dataClay locates a class on the
backend by its module and class name.
"""

from typing import Any

from dataclay import DataClayObject, activemethod


class Bench(DataClayObject):
    value: int
    data: Any

    def __init__(self, data: Any = None) -> None:
        self.value = 0
        self.data = data

    @activemethod
    def noop(self) -> None:
        return None

    @activemethod
    def inc(self, n: int = 1) -> int:
        self.value += n
        return self.value

    @activemethod
    def put(self, data: Any) -> None:
        self.data = data

    @activemethod
    def get(self) -> Any:
        return self.data
