"""The public functions of storage_api (re-exported by the package).

Heavy machinery (sockets, the client runtime, the deployment code) is imported on first use, so
``import storage_api`` stays cheap on a constrained client.
"""

from __future__ import annotations

import os
from contextlib import AbstractContextManager
from typing import TYPE_CHECKING, Any

from . import _context

if TYPE_CHECKING:
    from ._client import Client
    from ._metadata import BackendInfo


def connect(config: str | os.PathLike[str] | None = None, *, redis_url: str | None = None,
            secret: str | None = None) -> Client:
    """Connect to a deployment and make it this process's runtime.

    Settings come from ``config`` (a TOML file) or ``STORAGE_API_CONFIG``, ``STORAGE_API_*``
    variables and the keyword arguments; with none of them, from the file ``storage-api up`` wrote.
    """
    from ._client import Client
    from ._config import load

    client = Client(load(config, redis_url=redis_url, secret=secret))
    client.backends()  # fail now, with a clear error, if Redis is unreachable
    previous = _context.install(client)
    if previous is not None and previous.closed_when_replaced:
        previous.close()
    return client


def get_by_id(object_id: str) -> Any:
    """The persistent object with this id (a handle, or the live object on its own backend)."""
    return _context.current().get_by_id(object_id)


def get_by_alias(alias: str) -> Any:
    """The persistent object registered under ``alias``, whatever its class (a handle of its class
    where this process can import it, else a stub); ``ObjectNotFound`` if none."""
    from ._object import ActiveObject

    return _context.current().get_by_alias(alias, ActiveObject)


def backends() -> list[BackendInfo]:
    """The registered backends: ``id``, ``name``, ``host``, ``port``, ``compss_name``, ``pid``, ``alive``."""
    return _context.current().backends()


def stub(class_path: str) -> type:
    """A class-like stub for ``"pkg.mod.Class"``, built from metadata the backends publish.

    Use it like the class (construct + ``make_persistent``, ``get_by_alias``, method calls) in a
    process that cannot import the class's module or its dependencies.
    """
    return _context.current().stub(class_path)


def local_cluster(backends: int = 2, **kwargs: Any) -> AbstractContextManager[Client]:
    """Start Redis and ``backends`` backends on 127.0.0.1 for a ``with`` block; yield the client."""
    from ._deploy._local import local_cluster as _local_cluster

    return _local_cluster(backends, **kwargs)
