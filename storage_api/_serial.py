"""Serialization: pickle protocol 5 with out-of-band buffers, placeholders and remote errors.

Persistent objects pickle as references (see ``ActiveObject.__reduce_ex__``); everything else is
copied. Contiguous buffers (numpy arrays, ``PickleBuffer``) leave the pickle stream as separate
buffers that the transport sends and receives without copying them.

On a thin client a pickle may name a class the client cannot import (the server's model class, a
numpy array...). With ``placeholders=True`` such values arrive as :class:`Broken` instances that
keep the class name and state (the idea of ZODB's broken objects) instead of failing the call.
"""

from __future__ import annotations

import io
import pickle
import traceback
from typing import Any

from .errors import RemoteError, UnserializableState

_broken_classes: dict[tuple[str, str], type] = {}


# ``bytes`` values at least this large travel out of band too. Pickle copies a bytes value into
# its stream holding the GIL, which for hundreds of MB takes seconds on a loaded machine: a backend
# pickling such a result could not answer the liveness pings of its other connections meanwhile.
_OOB_BYTES = 1 << 20
_LIFT_DEPTH = 4  # how deep into tuples, lists and dicts large bytes are looked for ...
_LIFT_WIDTH = 64  # ... in containers of at most this many items (states, arguments, small results)


class _OutOfBandBytes:
    """A large ``bytes`` that pickles as ``bytes(<out-of-band buffer>)``: the same value for any
    unpickler, without a copy into the stream."""

    __slots__ = ("value",)

    def __init__(self, value: bytes) -> None:
        self.value = value

    def __reduce_ex__(self, protocol: int) -> Any:
        return bytes, (pickle.PickleBuffer(self.value),)


_WALKED = (tuple, list, dict)


def _lift(obj: Any, depth: int, memo: dict[int, Any]) -> Any:
    """``obj`` with its large ``bytes`` wrapped for out-of-band travel. Containers are rebuilt only
    where something changed, once each, so values shared within ``obj`` stay shared; small
    values are skipped without a call (this runs on every message)."""
    kind = type(obj)
    if kind is bytes:
        if len(obj) < _OOB_BYTES:
            return obj
        if id(obj) not in memo:
            memo[id(obj)] = _OutOfBandBytes(obj)
        return memo[id(obj)]
    if depth == 0 or kind not in _WALKED or len(obj) > _LIFT_WIDTH:
        return obj
    if id(obj) in memo:
        return memo[id(obj)]
    changed: dict[Any, Any] = {}
    for key, value in (obj.items() if kind is dict else enumerate(obj)):
        vkind = type(value)
        if (vkind is bytes and len(value) >= _OOB_BYTES) or (vkind in _WALKED and value):
            lifted = _lift(value, depth - 1, memo)
            if lifted is not value:
                changed[key] = lifted
    if not changed:
        return obj
    if kind is dict:
        new: Any = {**obj, **changed}
    else:
        items = list(obj)
        for i, lifted in changed.items():
            items[i] = lifted
        new = items if kind is list else tuple(items)
    memo[id(obj)] = new
    return new


def dumps(obj: Any) -> tuple[bytes, list[memoryview]]:
    """Pickle ``obj``; return the in-band body and the out-of-band buffers (as byte views)."""
    buffers: list[pickle.PickleBuffer] = []
    body = pickle.dumps(_lift(obj, _LIFT_DEPTH, {}), protocol=5, buffer_callback=buffers.append)
    return body, [_as_bytes_view(b) for b in buffers]


def dump_state(state: dict[str, Any], owner: str) -> tuple[bytes, list[memoryview]]:
    """Pickle an object's persistent state (``owner`` names it in errors).

    A value that cannot be pickled raises :class:`UnserializableState` naming its attribute.
    """
    try:
        return dumps(state)
    except Exception as exc:
        for name, value in state.items():  # only on failure: find the culprit
            try:
                pickle.dumps(value, protocol=5, buffer_callback=lambda b: None)
            except Exception as bad:
                raise UnserializableState(f"{owner}.{name} cannot be stored: {type(bad).__name__}: {bad}",
                                          name) from bad
        raise UnserializableState(f"the state of {owner} cannot be stored: {type(exc).__name__}: {exc}") from exc


def _as_bytes_view(buf: pickle.PickleBuffer) -> memoryview:
    try:
        return buf.raw()
    except BufferError:  # non-contiguous: rare, copy it
        return memoryview(bytes(buf))


def loads(body: bytes, buffers: list[Any] | None = None, *, placeholders: bool = False) -> Any:
    if not placeholders:
        return pickle.loads(body, buffers=buffers or ())
    return _PlaceholderUnpickler(io.BytesIO(body), buffers=buffers or ()).load()


class Broken:
    """Stands in for an instance of a class that cannot be imported here; keeps its data.

    ``__class_path__`` names the missing class; ``__args__`` and ``__state__`` hold what the
    pickle carried, so the value can be inspected or sent back unchanged (``__made_by__`` is
    what rebuilds it where its module exists: the class, or the function its pickle calls).
    """

    __class_path__ = "?"
    __made_by__ = "?"
    __args__: tuple
    __state__: Any

    def __new__(cls, *args: Any, **kwargs: Any) -> Broken:
        self = object.__new__(cls)
        object.__setattr__(self, "__args__", args)
        object.__setattr__(self, "__state__", None)
        return self

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        pass

    def __setstate__(self, state: Any) -> None:
        object.__setattr__(self, "__state__", state)

    def __reduce__(self) -> Any:  # round-trips to the real value where its module exists
        module, _, name = self.__made_by__.rpartition(".")
        return (_rebuild_broken, (module, name, self.__args__, self.__state__))

    def __repr__(self) -> str:
        return f"<Broken {self.__class_path__} (its module is not importable here)>"


# Values whose pickle calls a module function rather than their class: what the function makes.
_MADE_BY = {
    "numpy._core.numeric._frombuffer": "numpy.ndarray",
    "numpy.core.numeric._frombuffer": "numpy.ndarray",
    "numpy._core.multiarray._reconstruct": "numpy.ndarray",
    "numpy.core.multiarray._reconstruct": "numpy.ndarray",
    "numpy._core.multiarray.scalar": "numpy scalar",
    "numpy.core.multiarray.scalar": "numpy scalar",
    "torch._utils._rebuild_tensor_v2": "torch.Tensor",
    "torch._utils._rebuild_parameter": "torch.nn.Parameter",
}


def _rebuild_broken(module: str, name: str, args: tuple, state: Any) -> Any:
    maker = _find(module, name)
    obj = maker.__new__(maker, *args) if isinstance(maker, type) else maker(*args)
    if state is not None:
        if hasattr(obj, "__setstate__"):
            obj.__setstate__(state)
        else:
            obj.__dict__.update(state)
    return obj


def _find(module: str, name: str) -> Any:
    import importlib

    obj: Any = importlib.import_module(module)
    for part in name.split("."):
        obj = getattr(obj, part)
    return obj


def broken_class(module: str, name: str) -> type:
    key = (module, name)
    cls = _broken_classes.get(key)
    if cls is None:
        made_by = f"{module}.{name}"
        what = _MADE_BY.get(made_by, made_by)
        cls = type(what.rpartition(".")[2], (Broken,),
                   {"__class_path__": what, "__made_by__": made_by, "__module__": module})
        _broken_classes[key] = cls
    return cls


class _PlaceholderUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        try:
            return super().find_class(module, name)
        except (ImportError, AttributeError):
            return broken_class(module, name)


# ------------------------------------------------------------------ remote errors
def dump_error(exc: BaseException) -> bytes:
    """Encode an exception raised while serving a request, with its traceback."""
    tb = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    type_name = f"{type(exc).__module__}.{type(exc).__qualname__}"
    payload = b""
    # SystemExit, KeyboardInterrupt and other non-Exception errors are sent as a RemoteError: a
    # method's exit must not exit (or interrupt) the program that called it.
    if isinstance(exc, Exception):
        try:
            payload = pickle.dumps(exc, protocol=5)
            pickle.loads(payload)  # refuse exceptions that pickle but cannot be rebuilt
        except Exception:
            payload = b""
    return pickle.dumps((payload, type_name, str(exc), tb), protocol=5)


def load_error(body: bytes) -> BaseException:
    """Rebuild a remote exception; fall back to :class:`RemoteError` when its type is unknown."""
    payload, type_name, message, tb = pickle.loads(body)
    exc: BaseException
    try:
        exc = pickle.loads(payload) if payload else RemoteError(type_name, message, tb)
    except Exception:
        exc = RemoteError(type_name, message, tb)
    exc.remote_traceback = tb  # type: ignore[attr-defined]
    if hasattr(exc, "add_note") and tb:
        exc.add_note("Remote traceback (most recent call last, on the backend):\n" + tb.rstrip())
    return exc
