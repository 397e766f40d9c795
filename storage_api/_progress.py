"""Progress of long calls: reported inside an active method, received by whoever called it.

Inside an active method, ``report_progress(value)`` sends ``value`` (anything picklable, e.g.
``{"epoch": 3, "loss": 0.12}``) to the caller of the request being served, as ``EVENT`` frames
that arrive before the reply. A caller receives them by making its calls inside
``with on_progress(callback):``; callbacks run in a thread of the client runtime (keep them
short). On a backend, progress of the calls a request makes to other objects is forwarded to that
request's own caller. Outside any call with a listener (an object used locally, say), reports go
to the listener of the current thread, or nowhere: the same code runs with and without the store.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from typing import Any

_local = threading.local()  # .listener: the caller's callback; .emit: the served request's sender


def report_progress(value: Any) -> None:
    """Report progress of the active method running in this thread to its caller."""
    emit = getattr(_local, "emit", None)
    if emit is not None:
        emit(value)
        return
    listener = getattr(_local, "listener", None)
    if listener is not None:
        listener(value)


@contextmanager
def _bound(name: str, value: Any) -> Iterator[None]:
    """Set the thread-local ``name`` for the block, restoring what was there."""
    previous = getattr(_local, name, None)
    setattr(_local, name, value)
    try:
        yield
    finally:
        setattr(_local, name, previous)


def on_progress(callback: Callable[[Any], None]) -> AbstractContextManager[None]:
    """Deliver the progress reports of the calls this thread makes in the block to ``callback``."""
    return _bound("listener", callback)


def listener() -> Callable[[Any], None] | None:
    """Where progress of a call made now by this thread should go (forwarding on backends)."""
    return getattr(_local, "listener", None) or getattr(_local, "emit", None)


def serve(emit: Callable[[Any], None] | None) -> Callable[[Any], None] | None:
    """Used by backends around each request (a hot path: no context manager): reports from this
    thread go to its caller through ``emit`` until the next ``serve``; returns the previous one,
    which the backend puts back when the request is done (a request served inside another)."""
    previous = getattr(_local, "emit", None)
    _local.emit = emit
    return previous
