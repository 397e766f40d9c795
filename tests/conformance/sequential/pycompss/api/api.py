"""PyCOMPSs' API functions as PyCOMPSs defines them outside a COMPSs run."""

from __future__ import annotations

import os
from typing import Any

compss_open = open
compss_file_exists = os.path.exists


def compss_wait_on(*objs: Any, **_: Any) -> Any:
    return objs[0] if len(objs) == 1 else list(objs)


def compss_wait_on_file(*files: str) -> Any:
    return files[0] if len(files) == 1 else list(files)


def compss_delete_object(*objs: Any) -> bool:
    return True


def compss_delete_file(*files: str) -> bool:
    return True


def compss_barrier(no_more_tasks: bool = False) -> None:
    return None


def compss_barrier_group(group_name: str) -> None:
    return None


def compss_get_number_of_resources() -> int:
    return 1


class TaskGroup:
    def __init__(self, group_name: str, implicit_barrier: bool = True) -> None:
        self.group_name = group_name

    def __enter__(self) -> "TaskGroup":
        return self

    def __exit__(self, *exc: Any) -> None:
        return None
