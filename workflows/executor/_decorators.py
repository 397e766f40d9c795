"""The decorators of the ``pycompss.api`` shim: ``@task``, ``@constraint``, ``@on_failure``, ``@reduction``.

A decorated function stays importable by reference (``module.qualname`` names the wrapper), which
is how Dask workers and backends find it. The wrapper asks :func:`._current.current` at call time:
inside a run of the executor it submits a task; anywhere else (plain ``python app.py``, a worker
process, a backend running a shipped task) it calls the function, as PyCOMPSs does out of scope.
"""

from __future__ import annotations

import functools
import inspect
import sys
from typing import Any, Callable

from . import _returns
from ._current import current

# Directions, as the shim's pycompss.api.parameter spells them.
_DIRECTIONS = {
    "IN", "OUT", "INOUT", "CONCURRENT", "COMMUTATIVE", "IN_DELETE",
    "FILE_IN", "FILE_OUT", "FILE_INOUT", "FILE_CONCURRENT", "FILE_COMMUTATIVE",
    "DIRECTORY_IN", "DIRECTORY_OUT", "DIRECTORY_INOUT",
    "COLLECTION_IN", "COLLECTION_OUT", "COLLECTION_INOUT", "COLLECTION_IN_DELETE",
    "COLLECTION_FILE_IN", "COLLECTION_FILE_OUT", "COLLECTION_FILE_INOUT",
    "DICTIONARY_IN", "DICTIONARY_OUT", "DICTIONARY_INOUT", "DICTIONARY_IN_DELETE",
}
WRITES = {"OUT", "INOUT", "CONCURRENT", "COMMUTATIVE", "COLLECTION_OUT", "COLLECTION_INOUT",
          "DICTIONARY_OUT", "DICTIONARY_INOUT"}
FILE_WRITES = {"FILE_OUT", "FILE_INOUT", "FILE_CONCURRENT", "FILE_COMMUTATIVE", "COLLECTION_FILE_OUT",
               "COLLECTION_FILE_INOUT", "DIRECTORY_OUT", "DIRECTORY_INOUT"}


UNLIMITED = sys.maxsize  # PyCOMPSs' default collection depth: look all the way down


class Param:
    """How one parameter travels: its direction and, for collections, how deep to look."""

    __slots__ = ("direction", "depth")

    def __init__(self, direction: str, depth: int = UNLIMITED) -> None:
        self.direction = direction
        self.depth = depth

    @property
    def collection(self) -> bool:
        return self.direction.startswith(("COLLECTION_", "DICTIONARY_"))

    @property
    def is_dictionary(self) -> bool:
        """A ``DICTIONARY_*`` collection: its elements are a dict's values (PyCOMPSs also sends its
        keys as elements; keys are only read here, as a dict cannot have its keys replaced)."""
        return self.direction.startswith("DICTIONARY")

    @property
    def is_file(self) -> bool:
        return "FILE" in self.direction or self.direction.startswith("DIRECTORY")

    @property
    def writes(self) -> bool:
        return self.direction in WRITES or self.direction in FILE_WRITES


def _param(value: Any) -> Param | None:
    if isinstance(value, str) and value in _DIRECTIONS:
        return Param(value)
    if isinstance(value, dict) and "type" in value:
        return Param(str(value["type"]), int(value.get("depth", UNLIMITED)))
    return None


class TaskSpec:
    """What ``@task(...)`` said about a function, read by the engine at each call."""

    def __init__(self, func: Callable, options: dict[str, Any]) -> None:
        self.func = func
        self.wrapper: Callable = func
        self.name = f"{func.__module__}.{func.__qualname__}"
        self.returns = options.pop("returns", None)
        self._inferred: int | None = None  # the count read from the source, once
        self.target_direction = options.pop("target_direction", "INOUT")
        self.params: dict[str, Param] = {}
        for key, value in list(options.items()):
            p = _param(value)
            if p is not None:
                self.params[key] = p
                del options[key]
        # seconds the task may run (PyCOMPSs' time_out; 0: no limit), see _pool and Engine._send_remote
        self.time_out: float | None = float(options.pop("time_out", 0) or 0) or None
        self.options = options  # priority, is_replicated...: accepted, not used here
        self.signature = inspect.signature(func)
        names = list(self.signature.parameters)
        self.is_method = bool(names) and names[0] == "self"
        named = _returns.param_name(self.returns)
        if named is not None and named not in names:
            raise TypeError(f"@task(returns={self.returns!r}) of {self.name}: it has no parameter {named!r}")
        self.constraints: dict[str, Any] = getattr(func, "_compss_constraints", {})
        self.on_failure: dict[str, Any] | None = getattr(func, "_compss_on_failure", None)

    def n_returns(self, bound: inspect.BoundArguments) -> int:
        """The number of values a call yields (PyCOMPSs' rules, see :mod:`._returns`)."""
        r = self.returns
        if r is None:
            if self._inferred is None:
                self._inferred = _returns.inferred(self.func, self.is_method)
            return self._inferred
        if r is False:
            return 0
        if isinstance(r, bool):
            return 1
        if isinstance(r, int):
            return r
        if isinstance(r, str):
            return _returns.from_string(r, self.func, bound.arguments)
        if isinstance(r, (tuple, list)):
            return len(r)
        return 1  # a type: exactly one value

    def return_type(self, i: int) -> Any:
        """The type declared for return value ``i`` (``None`` if none was)."""
        r = self.returns
        if isinstance(r, (tuple, list)):
            return r[i] if i < len(r) else None
        return r if i == 0 and inspect.isclass(r) else None

    def direction(self, name: str) -> Param:
        p = self.params.get(name)
        if p is not None:
            return p
        if self.is_method and name == "self":
            return Param(self.target_direction if isinstance(self.target_direction, str) else "INOUT")
        return Param("IN")


def task(*args: Any, **options: Any) -> Any:
    """``@task(returns=..., param=DIRECTION, ...)``: calls return futures under the executor."""
    if args and callable(args[0]) and len(args) == 1 and not options:
        return task()(args[0])

    def decorate(func: Callable) -> Callable:
        spec = TaskSpec(func, dict(options))

        @functools.wraps(func)
        def wrapper(*a: Any, **kw: Any) -> Any:
            engine = current()
            if engine is None:
                return func(*a, **kw)
            return engine.submit(spec, a, kw)

        wrapper._compss_task = spec  # type: ignore[attr-defined]
        spec.wrapper = wrapper  # what workers import by reference (module.qualname names it)
        return wrapper

    return decorate


def _annotate(attr: str, value: Any) -> Callable:
    def decorate(func: Callable) -> Callable:
        spec = getattr(func, "_compss_task", None)
        if spec is not None:  # stacked above @task
            if attr == "_compss_on_failure":
                spec.on_failure = value
            else:
                spec.constraints = value
        else:  # stacked below @task: @task reads it
            setattr(func, attr, value)
        return func

    return decorate


def constraint(**constraints: Any) -> Callable:
    """``@constraint(computing_units=...)``: kept on the task, not enforced."""
    return _annotate("_compss_constraints", constraints)


def on_failure(management: str = "FAIL", **defaults: Any) -> Callable:
    """``@on_failure(management="IGNORE"|"CANCEL_SUCCESSORS"|"FAIL"|"RETRY", returns=...)``.

    ``IGNORE``/``CANCEL_SUCCESSORS``: a failed task's return futures hold ``returns`` (``None``
    if not given) instead of the error; with ``CANCEL_SUCCESSORS`` the tasks that depend on it are
    not run and their futures raise :class:`TaskCancelled`. ``FAIL``/``RETRY``: the error reaches
    ``compss_wait_on`` (no retry on one machine).
    """
    return _annotate("_compss_on_failure", {"management": management.upper(), **defaults})


def reduction(chunk_size: Any = None, **kwargs: Any) -> Callable:
    """``@reduction(chunk_size=...)``: the task runs once on the whole collection."""
    return lambda func: func
