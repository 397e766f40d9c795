"""The process's runtime: the client (or backend) that persistent objects talk through.

One runtime serves a process. ``storage_api.connect()`` installs it; a backend installs its own;
``local_cluster()`` installs one for its duration. Code that needs it before anyone connected (a
reference unpickled in a fresh process, as on a COMPSs worker) connects lazily from the
configuration (``STORAGE_API_*`` variables or the file ``storage-api up`` wrote).

Fork safety: a forked child (a PyCOMPSs executor, say) must not share its parent's sockets and
reader threads, which do not exist in the child. An at-fork hook drops the inherited runtime
without touching it; the child's first use connects afresh with the parent's settings.
"""

from __future__ import annotations

import os
import threading
from typing import TYPE_CHECKING, Any, Callable

if TYPE_CHECKING:
    from ._client import Client
    from ._config import Settings

_lock = threading.Lock()
_runtime: Client | None = None
_inherited: Settings | None = None  # settings of a runtime dropped at fork, for the child's reconnection
_before_delete: Callable[[Any], None] | None = None  # see on_delete


def current() -> Client:
    rt = _runtime
    if rt is not None:
        return rt
    with _lock:
        if _runtime is None:
            from ._client import Client
            from ._config import load

            install(Client(_inherited or load()))
        assert _runtime is not None
        return _runtime


def peek() -> Client | None:
    return _runtime


def install(rt: Client | None) -> Client | None:
    """Make ``rt`` the process's runtime; return the previous one."""
    global _runtime
    previous, _runtime = _runtime, rt
    return previous


def on_delete(hook: Callable[[Any], None] | None) -> None:
    """Have ``hook(obj)`` called before this process deletes a persistent object (``None``: no
    hook). A task executor running here installs one that waits for the object's submitted tasks:
    a delete comes after the app's earlier calls, as in a sequential run, instead of under them."""
    global _before_delete
    _before_delete = hook


def before_delete(obj: Any) -> None:
    hook = _before_delete
    if hook is not None:
        hook(obj)


def _drop_after_fork() -> None:
    """In a forked child: forget the parent's runtime (its sockets and threads are not ours)."""
    global _lock, _runtime, _inherited
    _lock = threading.Lock()
    if _runtime is not None:
        _inherited = _runtime.settings
    _runtime = None


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_drop_after_fork)
