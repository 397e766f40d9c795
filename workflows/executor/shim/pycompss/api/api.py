"""``pycompss.api.api``: synchronisation and deletion (see ``workflows.executor._api``)."""

from workflows.executor._api import (
    TaskGroup,
    compss_barrier,
    compss_barrier_group,
    compss_delete_file,
    compss_delete_object,
    compss_file_exists,
    compss_get_number_of_resources,
    compss_open,
    compss_start,
    compss_stop,
    compss_wait_on,
    compss_wait_on_file,
)

__all__ = [
    "compss_wait_on",
    "compss_delete_object",
    "compss_barrier",
    "compss_barrier_group",
    "compss_start",
    "compss_stop",
    "compss_open",
    "compss_wait_on_file",
    "compss_delete_file",
    "compss_file_exists",
    "compss_get_number_of_resources",
    "TaskGroup",
]
