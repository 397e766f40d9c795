"""The engine of this process's run of the executor, if any.

The ``@task`` wrapper and ``pycompss.api.api`` ask for it at each call: with none (plain ``python
app.py``, a Dask worker, a backend running a shipped task) tasks run as plain calls, as PyCOMPSs
does out of scope. Kept apart from the engine so that the decorators import nothing heavy.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ._engine import Engine

_engine: Engine | None = None


def current() -> Engine | None:
    """The engine of this process's run, or ``None`` (tasks then run as plain calls)."""
    return _engine


def install(engine: Engine | None) -> None:
    """Make ``engine`` the run's; the store's ``delete_persistent`` then waits for the pending
    tasks of the object it deletes."""
    global _engine
    _engine = engine
    from storage_api._context import on_delete

    on_delete(engine.settle if engine is not None else None)
