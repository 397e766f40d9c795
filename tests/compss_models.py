"""Models written the way COMPSs' storage apps write them: the base class from
``storage.storage_object``, state declared as class-level defaults, plain (not active) methods."""

from __future__ import annotations

from storage.storage_object import StorageObject
from storage_api import activemethod


class Tally(StorageObject):
    value = 0
    words = {}  # noqa: RUF012 (a class-level default, as COMPSs models declare state)

    def __init__(self, value: int = 0) -> None:
        self.value = value

    def get(self) -> int:
        return self.value

    def bump(self, n: int = 1) -> None:
        self.value += n

    def count(self, word: str) -> None:
        self.words = {**self.words, word: self.words.get(word, 0) + 1}

    @activemethod(readonly=True)
    def held(self) -> tuple:
        """What the backend's live object holds (read next to the data)."""
        return self.value, dict(self.words), "value" in self.__dict__

    @activemethod
    def retire(self) -> int:
        """Delete this object from inside one of its own methods; return its last value."""
        self.delete_persistent()
        return self.value
