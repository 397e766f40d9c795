"""What a local worker process runs: one task from its pickled payload.

The function travels by reference (PyCOMPSs does the same): ``module.qualname`` of the ``@task``
wrapper, which in a worker calls the function directly. Functions of the app script resolve because
a spawned worker imports the script as ``__mp_main__`` (its ``__main__`` block does not run).
"""

from __future__ import annotations

import pickle
from typing import Any


def ready() -> bool:
    """A no-op the engine runs once per worker so that all of them are started up front."""
    return True


def _traffic_total() -> int:
    import sys

    transport = sys.modules.get("storage_api._transport")
    if transport is None:
        return 0
    return sum(s + r for s, r in transport.traffic().values())


def _at(args: list, kwargs: dict, path: tuple) -> Any:
    where: Any = args if isinstance(path[0], int) else kwargs
    for step in path:
        where = where[step]
    return where


def run(payload: bytes) -> bytes:
    """Run one task; return ``pickle((answer, bytes this worker exchanged with backends))``.

    Exceptions propagate: the pool carries them to the engine with their traceback.
    """
    before = _traffic_total()
    func, args, kwargs, outputs = pickle.loads(payload)
    result = func(*args, **kwargs)
    answer = [result, *(_at(args, kwargs, tuple(p)) for p in outputs)]
    return pickle.dumps((answer, _traffic_total() - before), protocol=5)
