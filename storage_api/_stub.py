"""Stubs: class-like objects built from class metadata, for clients that cannot import the class.

Backends publish, for each class they load, its fields, constructor and active methods (names,
signatures, docstrings, read-only flags) as JSON in Redis. ``stub("pkg.mod.Model")`` builds a class
from that metadata: constructing it records the constructor arguments (checked against the
published signature) and ``make_persistent`` constructs the real object *on the backend*; method
calls are checked locally, then run remotely. No module of the model, numpy or torch is imported.
"""

from __future__ import annotations

import inspect
from typing import Any

from ._object import (RESERVED_PREFIX, ActiveObject, MethodSpec, RemoteMethod, State, _handle_delattr, _handle_getattr,
                      _handle_setattr)
from .errors import InvalidArguments, StoreError

_stubs: dict[str, type[ActiveObject]] = {}


# ----------------------------------------------------------- metadata (backend side)
def _signature_json(func: Any) -> dict[str, Any]:
    try:
        sig = inspect.signature(func)
    except (TypeError, ValueError):
        return {"params": [{"name": "self", "kind": 1}, {"name": "args", "kind": 2}, {"name": "kwargs", "kind": 4}]}
    params = []
    for p in sig.parameters.values():
        entry: dict[str, Any] = {"name": p.name, "kind": int(p.kind)}
        if p.default is not p.empty:
            entry["default"] = repr(p.default)
        if p.annotation is not p.empty:
            entry["annotation"] = p.annotation if isinstance(p.annotation, str) else inspect.formatannotation(p.annotation)
        params.append(entry)
    out: dict[str, Any] = {"params": params}
    if sig.return_annotation is not sig.empty:
        ra = sig.return_annotation
        out["returns"] = ra if isinstance(ra, str) else inspect.formatannotation(ra)
    return out


def describe_class(cls: type[ActiveObject]) -> dict[str, Any]:
    """The JSON-able metadata a backend publishes for ``cls``."""
    methods = {}
    for name, spec in cls._sa_methods.items():
        func = getattr(cls, name)
        methods[name] = {"readonly": spec.readonly, "doc": inspect.getdoc(func) or "", **_signature_json(func)}
    init = cls.__init__ if cls.__init__ is not object.__init__ else (lambda self: None)
    return {
        "class": cls._sa_class_path,
        "name": cls.__name__,
        "doc": inspect.getdoc(cls) or "",
        "fields": dict(cls._sa_fields),
        "init": _signature_json(init),
        "methods": methods,
    }


# ------------------------------------------------------------- stubs (client side)
class _Default:
    """Stands for a default value that only the backend can build; shows its source text."""

    def __init__(self, text: str) -> None:
        self.text = text

    def __repr__(self) -> str:
        return self.text


class Params:
    """A published signature, checked as Python binds a call. Every stub call is checked, so this
    is a direct walk over the parameters (a tenth of ``inspect.Signature.bind``'s cost), which also
    accepts what Python accepts and bind refuses (a positional-only name passed on to ``**kwargs``)."""

    __slots__ = ("params",)

    def __init__(self, spec: dict[str, Any]) -> None:
        # (name, kind, has a default); kinds are inspect's: 0 positional-only, 1 positional or
        # keyword, 2 *args, 3 keyword-only, 4 **kwargs. The first parameter is self.
        self.params = [(p["name"], int(p["kind"]), "default" in p) for p in spec.get("params", [])]

    def check(self, args: tuple, kwargs: dict) -> None:
        """Raise :class:`TypeError` if ``self.method(*args, **kwargs)`` could not bind."""
        given, n, i = dict(kwargs), len(args) + 1, 0  # + 1: self
        for name, kind, optional in self.params:
            if kind <= 1 and i < n:
                if kind == 1 and name in given:
                    raise TypeError(f"multiple values for argument {name!r}")
                i += 1
            elif kind == 2:
                i = n
            elif kind == 4:
                given.clear()
            elif kind != 0 and name in given:
                del given[name]
            elif not optional:
                raise TypeError(f"missing a required argument: {name!r}")
        if i < n:
            raise TypeError("too many positional arguments")
        if given:
            raise TypeError(f"got an unexpected keyword argument {next(iter(given))!r}")


def _stub_init(self: Any, *args: Any, **kwargs: Any) -> None:
    try:
        type(self)._sa_init_params.check(args, kwargs)
    except TypeError as exc:
        raise InvalidArguments(f"{type(self).__name__}(): {exc}") from None
    d = self.__dict__
    d["_sa_state"] = State.PENDING
    d["_sa_init"] = (args, kwargs)


def _stub_setattr(self: Any, name: str, value: Any) -> None:
    if self._sa_state is State.PENDING and not name.startswith(RESERVED_PREFIX):
        raise StoreError("a stub instance holds no state until make_persistent(); pass values to the constructor")
    _handle_setattr(self, name, value)


def _stub_getattr(self: Any, name: str) -> Any:
    if self.__dict__.get("_sa_state") is State.PENDING and not name.startswith("_"):
        raise StoreError(f"{type(self).__name__} is a stub: call make_persistent() before using it")
    return _handle_getattr(self, name)


def stub_class(meta: dict[str, Any]) -> type[ActiveObject]:
    """Build (once per class path) the stub class described by ``meta``."""
    path = meta["class"]
    cached = _stubs.get(path)
    if cached is not None and cached.__dict__.get("_sa_meta") == meta:
        return cached
    module, _, qualname = path.rpartition(".")
    methods = {name: MethodSpec(name, m["readonly"]) for name, m in meta["methods"].items()}
    ns: dict[str, Any] = {
        "__slots__": (),
        "__module__": module,
        "__qualname__": qualname,
        "__doc__": meta.get("doc") or None,
        "_sa_generated": True,
        "_sa_stub": True,
        "_sa_meta": meta,
        "_sa_class_path": path,
        "_sa_fields": dict(meta.get("fields", {})),
        "_sa_methods": methods,
        "_sa_init_params": Params(meta.get("init", {})),
        "__init__": _stub_init,
        "__getattr__": _stub_getattr,
        "__setattr__": _stub_setattr,
        "__delattr__": _handle_delattr,
    }
    for name, m in meta["methods"].items():
        ns[name] = RemoteMethod(name, m["readonly"], Params(m), m.get("doc") or None)
    cls = type(meta.get("name") or qualname, (ActiveObject,), ns)
    _stubs[path] = cls
    return cls


def is_stub(cls: type) -> bool:
    return bool(cls.__dict__.get("_sa_stub"))
