"""storage_api: an active object store for the computing continuum.

Objects of :class:`ActiveObject` subclasses live on storage backends; their ``@activemethod``
methods run where the object lives; a client holds handles (or stubs, when it cannot import the
class). Metadata lives in Redis. See README.md for the tour.
"""

from . import errors
from ._object import ActiveObject, State, StorageObject, activemethod
from ._progress import on_progress, report_progress
from ._serial import Broken
from .api import backends, connect, get_by_alias, get_by_id, local_cluster, stub

__all__ = [
    "ActiveObject",
    "StorageObject",
    "State",
    "activemethod",
    "connect",
    "get_by_alias",
    "get_by_id",
    "backends",
    "stub",
    "local_cluster",
    "errors",
    "Broken",
    "report_progress",
    "on_progress",
]
__version__ = "0.1.0"
