"""The process's runtime: the client (or backend) that persistent objects talk through.

One runtime serves a process. ``storage_api.connect()`` installs it; a backend installs its own;
``local_cluster()`` installs one for its duration. Code that needs it before anyone connected (a
reference unpickled in a fresh process, as on a COMPSs worker) connects lazily from the
configuration (``STORAGE_API_*`` variables or the file ``storage-api up`` wrote).
"""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ._client import Client

_lock = threading.Lock()
_runtime: Client | None = None


def current() -> Client:
    rt = _runtime
    if rt is not None:
        return rt
    with _lock:
        if _runtime is None:
            from ._client import Client
            from ._config import load

            install(Client(load()))
        assert _runtime is not None
        return _runtime


def peek() -> Client | None:
    return _runtime


def install(rt: Client | None) -> Client | None:
    """Make ``rt`` the process's runtime; return the previous one."""
    global _runtime
    previous, _runtime = _runtime, rt
    return previous
