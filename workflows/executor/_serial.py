"""Task payloads (the function, its arguments, its results) between the app and the processes that run tasks.

As PyCOMPSs' serializer chain (pickle, then dill), pickle first and, for what pickle refuses
(local functions and classes, lambdas, closures), cloudpickle, whose output plain ``pickle.loads``
reads. The function normally travels by reference; only one pickle cannot name goes by value.
Local workers get the whole payload so (:func:`dumps_task`). Arguments of tasks sent to backends
travel in the store's messages, whose pickle sends persistent objects as references and large
buffers out of band; the arguments it could not send as they are (what pickle refuses, and
functions and classes of the app script, which a backend knows by the script's file, not as
``__main__``) are pickled here beforehand (:func:`for_backend`); a backend needs cloudpickle
installed (the ``compss`` extra) only to read what went by value.

A future the engine did not see (it hides in an object's attribute, say) travels as a
:class:`Pending` placeholder, as PyCOMPSs sends its ``Future`` objects: a task that never looks
at it works; one that does gets :class:`UnresolvedFuture` naming the argument it came in.
"""

from __future__ import annotations

import io
import pickle
import sys
import threading
import types
from typing import Any, Callable, NoReturn

from storage_api._messages import import_script

from ._errors import ArgumentNotSendable, TaskError

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


def dumps_task(payload: tuple, args: list, kwargs: dict, names: list[str], task: str) -> bytes:
    """``dumps(payload)``, where ``args``/``kwargs`` are the arguments of ``task`` (``names``: its
    positional parameters): an argument that cannot be sent raises :class:`ArgumentNotSendable`
    naming it, and futures hidden in an argument are labelled with its name (found argument by
    argument, only when there are any)."""
    _labels.met = met = []
    try:
        try:
            data = dumps(payload)
        except Exception as exc:  # noqa: BLE001 - named below
            for name, value in _labelled(args, kwargs, names):
                try:
                    dumps(value)
                except Exception:  # noqa: BLE001 - this is the argument that cannot be sent
                    raise _not_sendable(name, task, exc) from exc
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


def _not_sendable(name: str, task: str, reason: BaseException) -> ArgumentNotSendable:
    return ArgumentNotSendable(f"argument {name!r} of task {task} cannot be sent to the process that runs it "
                               f"(neither pickle nor cloudpickle can serialize it): {type(reason).__name__}: {reason}")


# ------------------------------------------------------------------ arguments of backend tasks
_AS_IS = (type(None), bool, int, float, complex, str, bytes, bytearray)


def for_backend(args: list, kwargs: dict, names: list[str], task: str,
                walk: Callable[[Any, Callable[[Any], Any]], Any]) -> tuple[list, dict]:
    """The arguments of ``task`` as a backend can read them: ``walk(value, leaf)`` rebuilds the
    containers the engine looks into; each leaf that pickle would not send as it is (it refuses
    it, or it holds a function or class of the app script) is replaced by a :class:`_Pickled`
    of it. An argument that cannot travel at all raises :class:`ArgumentNotSendable` naming it."""
    def prepare(name: str, value: Any) -> Any:
        def leaf(v: Any) -> Any:
            if type(v) in _AS_IS or _is_plain_array(v):
                return v
            probe = _Probe()
            try:
                probe.dump(v)
                if not probe.script:
                    return v
            except Exception:  # noqa: BLE001 - pickle refuses it: by value below
                pass
            try:
                return _Pickled(_dumps_for_backend(v))
            except Exception as exc:  # noqa: BLE001 - neither can send it
                raise _not_sendable(name, task, exc) from exc
        return walk(value, leaf)

    named = _labelled(args, kwargs, names)
    out = [prepare(name, v) for name, v in named[:len(args)]]
    return out, {k: prepare(k, v) for k, v in kwargs.items()}


def _is_plain_array(v: Any) -> bool:
    np = sys.modules.get("numpy")
    return np is not None and type(v) is np.ndarray and v.dtype != object


_MAIN = ("__main__", "__mp_main__")


def _script_object(obj: Any) -> bool:
    """A function or class defined at the top level of the app script."""
    if not isinstance(obj, (types.FunctionType, type)) or getattr(obj, "__module__", None) not in _MAIN:
        return False
    found: Any = sys.modules.get("__main__")
    for part in obj.__qualname__.split("."):
        found = getattr(found, part, None)
    return found is obj


class _Probe(pickle.Pickler):
    """Pickles into nothing (buffers are skipped, not copied), noting script functions and classes."""

    def __init__(self) -> None:
        super().__init__(io.BytesIO(), protocol=5, buffer_callback=lambda b: False)
        self.script = False

    def reducer_override(self, obj: Any) -> Any:
        if _script_object(obj):
            self.script = True
        return NotImplemented


def _dumps_for_backend(value: Any) -> bytes:
    import cloudpickle

    class Pickler(cloudpickle.Pickler):
        def reducer_override(self, obj: Any) -> Any:
            if _script_object(obj):  # by the script's file: the backend imports it once
                return (script_attr, (sys.modules["__main__"].__file__, obj.__qualname__))
            return super().reducer_override(obj)

    out = io.BytesIO()
    Pickler(out, protocol=5).dump(value)
    return out.getvalue()


class _Pickled:
    """An argument pickled in the app: the backend's unpickling of the message rebuilds the value."""

    __slots__ = ("data",)

    def __init__(self, data: bytes) -> None:
        self.data = data

    def __reduce__(self) -> tuple:
        return (pickle.loads, (self.data,))


def script_attr(path: str, qualname: str, task: str | None = None) -> Any:
    """``qualname`` of the app script at ``path``, in a process other than the app's (a backend):
    the script is imported once under :func:`~storage_api._messages.script_module`'s name, so its
    ``__main__`` block does not run. Code outside that block does: if it fails here (a script
    without the guard that exits or needs its arguments), the error says so."""
    try:
        module = import_script(path)
    except BaseException as exc:  # noqa: BLE001 - SystemExit too: the script's top level ran here
        what = f"task {task}" if task else qualname
        raise TaskError(f"the app script {path} was imported in a backend process to run {what}, and its "
                        f"top-level code raised {type(exc).__name__}: {exc}; put the app's own code under "
                        "`if __name__ == \"__main__\":` (its top level runs wherever its tasks run)") from exc
    obj: Any = module
    for part in qualname.split("."):
        obj = getattr(obj, part)
    return obj
