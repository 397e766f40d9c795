"""The latest version of each object the app passed to a writing task, found by identity.

As PyCOMPSs' object tracker: an object a task updates (``INOUT``, an element of a
``COLLECTION_OUT``/``INOUT``, the stand-in of a result) is replaced, in every later task's
arguments and at ``compss_wait_on``, by the future of its newest version, in whichever container
it is passed. An object that supports weak references is followed only while the app holds it
(its entry, and the result it keeps alive, go with it); others are held until the run ends or
``compss_delete_object``, so their ``id`` cannot be reused by another object meanwhile.
"""

from __future__ import annotations

import weakref
from typing import Any


def followable(obj: Any) -> bool:
    """Whether ``obj`` can be followed without keeping it alive (it takes weak references)."""
    try:
        weakref.ref(obj)
    except TypeError:
        return False
    return True


class Versions:
    def __init__(self) -> None:
        self._entries: dict[int, tuple[Any, Any]] = {}  # id -> (weakref or the object, future)

    def set(self, obj: Any, future: Any) -> None:
        key = id(obj)
        try:
            holder: Any = weakref.ref(obj, lambda ref, key=key: self._gone(key, ref))
        except TypeError:
            holder = obj
        self._entries[key] = (holder, future)

    def latest(self, obj: Any) -> Any:
        """The future of ``obj``'s newest version, or ``obj`` itself when it has none."""
        entry = self._entries.get(id(obj))
        if entry is None:
            return obj
        holder, future = entry
        held = holder() if type(holder) is weakref.ReferenceType else holder
        return future if held is obj else obj

    def forget(self, obj: Any) -> None:
        self._entries.pop(id(obj), None)

    def _gone(self, key: int, ref: Any) -> None:
        entry = self._entries.get(key)
        if entry is not None and entry[0] is ref:  # not a newer object that got the same id
            del self._entries[key]
