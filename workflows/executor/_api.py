"""``pycompss.api.api`` under the executor, and PyCOMPSs' sequential semantics outside it."""

from __future__ import annotations

import os
from contextlib import contextmanager
from typing import Any, Iterator

from ._current import current


def compss_wait_on(*objs: Any, **kwargs: Any) -> Any:
    """The values behind futures (also inside nested lists, tuples and dicts); others unchanged.

    A task's error is raised here with its original type and traceback. One argument: its value;
    several: a list of them (as PyCOMPSs).
    """
    engine = current()
    values = [engine.wait_on(o) if engine is not None else o for o in objs]
    return values[0] if len(values) == 1 else values


def compss_delete_object(*objs: Any) -> Any:
    """Forget the executor's versions of ``objs``; persistent objects are left in the store (as COMPSs)."""
    engine = current()
    if engine is not None:
        for o in objs:
            engine.forget(o)
    return True if len(objs) == 1 else [True] * len(objs)


def compss_barrier(no_more_tasks: bool = False) -> None:
    """Wait for every task submitted so far."""
    engine = current()
    if engine is not None:
        engine.barrier()


def compss_barrier_group(group_name: str) -> None:
    compss_barrier()


def compss_start(*args: Any, **kwargs: Any) -> None:
    """Nothing to start: the launcher started the executor."""


def compss_stop(*args: Any, **kwargs: Any) -> None:
    compss_barrier()


def compss_open(file_name: str, mode: str = "r") -> Any:
    compss_barrier()
    return open(file_name, mode)


def compss_wait_on_file(*file_names: str) -> Any:
    compss_barrier()
    return file_names[0] if len(file_names) == 1 else list(file_names)


def compss_delete_file(*file_names: str) -> Any:
    return True if len(file_names) == 1 else [True] * len(file_names)


def compss_file_exists(*file_names: str) -> Any:
    found = [os.path.exists(f) for f in file_names]
    return found[0] if len(found) == 1 else found


def compss_get_number_of_resources() -> int:
    engine = current()
    return engine.workers if engine is not None else 1


@contextmanager
def TaskGroup(group_name: str, implicit_barrier: bool = True) -> Iterator[None]:  # noqa: N802 - PyCOMPSs' name
    yield
    if implicit_barrier:
        compss_barrier()
