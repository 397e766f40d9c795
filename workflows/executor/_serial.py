"""Task payloads (the function, its arguments, its results) between the app and local workers.

As PyCOMPSs' serializer chain (pickle, then dill), pickle first and, for what pickle refuses
(local functions and classes, lambdas, closures), cloudpickle, whose output plain ``pickle.loads``
reads. The function normally travels by reference; only one pickle cannot name goes by value.

A future the engine did not see (it hides in an object's attribute, say) travels as a
:class:`Pending` placeholder, as PyCOMPSs sends its ``Future`` objects: a task that never looks
at it works; one that does gets :class:`UnresolvedFuture` naming the argument it came in.
"""

from __future__ import annotations

import pickle
import threading
from typing import Any, Callable, NoReturn

_labels = threading.local()  # what the pickling in progress labels the futures it meets with


class UnresolvedFuture(TypeError):
    """A task used a result of another task that was not computed when it was sent."""


class Pending:
    """Stands for a future in a task's argument; any use of it raises :class:`UnresolvedFuture`."""

    __slots__ = ("what", "where")

    def __init__(self, what: str, where: str | None) -> None:
        self.what = what
        self.where = where

    def __reduce__(self) -> tuple:
        return (Pending, (self.what, self.where))

    def __repr__(self) -> str:
        return f"<Pending {self.what}>"

    def _fail(self, *args: Any) -> NoReturn:
        where = f" inside argument {self.where!r}" if self.where else " inside an argument"
        raise UnresolvedFuture(f"{self.what}{where} was not computed when its task was sent: the executor "
                               "looks for futures in lists, tuples, dicts and object arrays only; "
                               "compss_wait_on it first, or pass it in one of those")

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__"):  # protocol probes (copy, pickle, numpy) see an ordinary object
            raise AttributeError(name)
        self._fail()

    __getitem__ = __setitem__ = __iter__ = __len__ = __bool__ = __call__ = __array__ = _fail
    __add__ = __radd__ = __sub__ = __rsub__ = __mul__ = __rmul__ = __truediv__ = __rtruediv__ = _fail
    __lt__ = __le__ = __gt__ = __ge__ = __neg__ = __float__ = __int__ = __index__ = __matmul__ = _fail


def pending(future: Any) -> tuple:
    """How a future pickles (its ``__reduce_ex__``)."""
    met = getattr(_labels, "met", None)
    if met is not None:
        met.append(future)
    labels = getattr(_labels, "by_id", None) or {}
    return (Pending, (repr(future), labels.get(id(future))))


def dumps(obj: Any) -> bytes:
    try:
        return pickle.dumps(obj, protocol=5)
    except (pickle.PicklingError, AttributeError, TypeError) as refused:
        import cloudpickle

        try:
            return cloudpickle.dumps(obj, protocol=5)
        except Exception:  # noqa: BLE001 - neither can: pickle's reason is the one to show
            raise refused from None


def dumps_task(payload: tuple, args: list, kwargs: dict, names: list[str]) -> bytes:
    """``dumps(payload)``, where ``args``/``kwargs`` are the task's arguments (``names``: its
    positional parameters): an argument that cannot be sent is named in the error, and futures
    hidden in an argument are labelled with its name (found argument by argument, only when
    there are any)."""
    _labels.met = met = []
    try:
        try:
            data = dumps(payload)
        except Exception as exc:  # noqa: BLE001 - named below, then raised as it is
            _name_culprit(exc, _labelled(args, kwargs, names))
            raise
        if not met:
            return data
        labels: dict[int, str] = {}
        for name, value in _labelled(args, kwargs, names):
            _labels.met = found = []
            dumps(value)
            labels.update((id(f), name) for f in found)
        _labels.met, _labels.by_id = None, labels
        return dumps(payload)
    finally:
        _labels.met = _labels.by_id = None


def _labelled(args: list, kwargs: dict, names: list[str]) -> list[tuple[str, Any]]:
    positional = [(names[i] if i < len(names) else f"*args[{i - len(names)}]", v) for i, v in enumerate(args)]
    return [*positional, *kwargs.items()]


def _name_culprit(exc: BaseException, arguments: list[tuple[str, Any]]) -> None:
    for name, value in arguments:
        try:
            dumps(value)
        except Exception:  # noqa: BLE001 - this is the argument that cannot be sent
            exc.add_note(f"(argument {name!r} of the task cannot be sent to another process)")
            return
