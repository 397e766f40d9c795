"""Walking task arguments: the containers the engine looks inside, and the leaves it tracks.

Containers are lists, tuples, dicts and numpy arrays of dtype ``object`` (dislib keeps grids of
task results in them; PyCOMPSs iterates whatever a collection parameter holds). An object array
is walked along its first axis, so a 2-d one is a collection of rows. Everything else is a leaf.
numpy is never imported here: an array exists only if the app imported numpy.
"""

from __future__ import annotations

import sys
from typing import Any, Callable

# Leaves that Python shares between unrelated places (small ints, interned strings, None): the
# engine cannot follow their versions by identity, only by their position in a list.
SHARED_VALUES = (type(None), bool, int, float, complex, str, bytes)


def is_object_array(value: Any) -> bool:
    np = sys.modules.get("numpy")
    return np is not None and type(value) is np.ndarray and value.dtype == object and value.ndim > 0


def is_sequence(value: Any) -> bool:
    """A container walked by position (what a collection parameter's depth counts)."""
    return type(value) in (list, tuple) or is_object_array(value)


def _object_array(items: list, like: Any) -> Any:
    out = sys.modules["numpy"].empty(like.shape, dtype=object)
    for i, item in enumerate(items):
        out[i] = item
    return out


def rebuild(value: Any, leaf: Callable[[Any], Any], swap: Callable[[Any], Any] | None = None) -> Any:
    """A copy of the container structure of ``value`` with every leaf passed through ``leaf``.

    ``swap`` first replaces any node (a container too) that has a newer version (an INOUT result).
    """
    if swap is not None:
        value = swap(value)
    t = type(value)
    if t is list:
        return [rebuild(v, leaf, swap) for v in value]
    if t is tuple:
        return tuple(rebuild(v, leaf, swap) for v in value)
    if t is dict:
        return {k: rebuild(v, leaf, swap) for k, v in value.items()}
    if is_object_array(value):
        return _object_array([rebuild(v, leaf, swap) for v in value], value)
    return leaf(value)


def leaf_paths(value: Any, depth: int, dicts: bool = False) -> list[tuple]:
    """The index paths of the elements ``depth`` levels down (or of the leaves above that); with
    ``dicts`` (a ``DICTIONARY_*`` parameter) dicts are walked too, by key, instead of sequences."""
    if depth <= 0:
        return [()]
    if dicts:
        if type(value) is not dict:
            return [()]
        return [(k, *p) for k, v in value.items() for p in leaf_paths(v, depth - 1, dicts)]
    if not is_sequence(value):
        return [()]
    return [(i, *p) for i, v in enumerate(value) for p in leaf_paths(v, depth - 1)]


def at(container: Any, path: tuple) -> Any:
    for step in path:
        container = container[step]
    return container


def set_at(container: Any, path: tuple, new: Any) -> None:
    """Put ``new`` at ``path`` if the container there can take it (a list, a dict, an object array)."""
    if not path:
        return
    parent = at(container, path[:-1])
    if type(parent) in (list, dict) or is_object_array(parent):
        parent[path[-1]] = new


def write_back(original: Any, synced: Any, stale: Callable[[Any], bool]) -> None:
    """Put into the caller's lists and object arrays the synchronised values of their elements
    that ``stale`` says were superseded (futures, or objects a task has a newer version of), as a
    sequential run would have left them."""
    if type(original) is dict and type(synced) is dict:
        for k, v in original.items():
            if stale(v):
                original[k] = synced[k]
            else:
                write_back(v, synced[k], stale)
        return
    if not is_sequence(original) or not is_sequence(synced) or len(original) != len(synced):
        return
    writable = type(original) is list or is_object_array(original)
    for i, v in enumerate(original):
        if writable and stale(v):
            original[i] = synced[i]
        else:
            write_back(v, synced[i], stale)
