"""The model of the quick-start: a class whose methods run on the backend holding the object."""

from storage_api import ActiveObject, activemethod


class Counter(ActiveObject):
    """A counter that lives in the store."""

    value: int  # annotated attributes are the persistent state

    def __init__(self, start: int = 0):
        self.value = start

    @activemethod
    def inc(self, n: int = 1) -> int:
        """Add ``n`` on the backend and return the new value."""
        self.value += n
        return self.value

    @activemethod(readonly=True)
    def where(self) -> int:
        """The pid of the process that runs this method."""
        import os

        return os.getpid()
