"""Active objects: the user-facing class, the ``@activemethod`` marker and the object lifecycle.

Lifecycle (one enum, :class:`State`)::

    TRANSIENT --make_persistent()--> PROXY       (on a client: state moves to a backend)
    TRANSIENT --make_persistent()--> RESIDENT    (inside the backend that will own it)
    PENDING   --make_persistent()--> PROXY       (a stub instance: constructed on the backend)
    PROXY / RESIDENT --delete_persistent()--> TRANSIENT (holding its last state; a stub: DELETED)
    RESIDENT --move()--> PROXY elsewhere; a new primary's copy is RESIDENT
    RESIDENT --new_replica()--> a REPLICA copy on another backend --failover--> RESIDENT

* ``TRANSIENT``: a plain Python object; methods run locally; it is copied when passed around.
* ``PENDING``: a stub instance built on a thin client; holds only constructor arguments.
* ``RESIDENT``: the live object, in the memory of the backend that owns it.
* ``PROXY``: a handle; attribute reads and writes and active method calls go to the backend.
* ``REPLICA``: a copy on a backend that is not the primary; it serves read-only methods and
  receives every write from the primary (see :mod:`storage_api._backend._placement`).
* ``DELETED``: a stub instance whose object was deleted (a stub has no class to hold the state).

Attribute conventions: names starting with ``_sa_`` are the store's machinery; names starting with
``_v_`` are volatile (never persisted). Every other instance attribute is persistent state;
annotated attributes are its declared schema, published to stubs.

A handle is an instance of a generated subclass of the user's class (``isinstance`` holds) whose
active methods and attributes are remote; the user's class itself is untouched, so code running
next to the data on the backend pays nothing for the machinery.
"""

from __future__ import annotations

import enum
import sys
import typing
import uuid
import weakref
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, TypeVar

from . import _context
from .errors import ClassNotFound, InvalidArguments, ObjectDeleted, StoreError

if TYPE_CHECKING:
    from ._stub import Params

RESERVED_PREFIX = "_sa_"
VOLATILE_PREFIX = "_v_"

F = TypeVar("F", bound=Callable[..., Any])
T = TypeVar("T", bound="ActiveObject")


class State(enum.Enum):
    TRANSIENT = "transient"
    PENDING = "pending"
    RESIDENT = "resident"
    PROXY = "proxy"
    REPLICA = "replica"
    DELETED = "deleted"


@dataclass(frozen=True)
class MethodSpec:
    name: str
    readonly: bool


def activemethod(func: F | None = None, *, readonly: bool = False) -> Any:
    """Mark a method as active: on a persistent object it runs on the backend holding the object.

    ``@activemethod(readonly=True)`` declares that the method changes no state: it skips the
    durability write and may run concurrently with other read-only calls. Undeclared methods are
    treated as mutating.
    """

    def mark(f: F) -> F:
        if not callable(f):
            raise TypeError("@activemethod decorates methods")
        f._sa_active = MethodSpec(f.__name__, readonly)  # type: ignore[attr-defined]
        return f

    return mark(func) if func is not None else mark


def class_path(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


def state_of(obj: Any) -> dict[str, Any]:
    """The persistent state of an object: its attributes minus machinery and volatile ones."""
    return {k: v for k, v in obj.__dict__.items() if not k.startswith((RESERVED_PREFIX, VOLATILE_PREFIX))}


def _collect_fields(cls: type) -> dict[str, str]:
    fields: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        if klass in (object, ActiveObject):
            continue
        for name, ann in klass.__dict__.get("__annotations__", {}).items():
            text = ann if isinstance(ann, str) else getattr(ann, "__name__", repr(ann))
            if name.startswith((RESERVED_PREFIX, VOLATILE_PREFIX)) or "ClassVar" in str(text):
                continue
            if typing.get_origin(ann) is ClassVar:
                continue
            fields[name] = str(text)
    return fields


def _collect_methods(cls: type) -> dict[str, MethodSpec]:
    methods: dict[str, MethodSpec] = {}
    for klass in reversed(cls.__mro__):
        for name, value in klass.__dict__.items():
            spec = getattr(value, "_sa_active", None)
            if isinstance(spec, MethodSpec):
                methods[name] = spec
            elif name in methods:  # overridden by a plain method
                del methods[name]
    return methods


class ActiveObject:
    """Base class of objects that live in the store. ``StorageObject`` is the same class."""

    _sa_id: str | None = None
    _sa_state: State = State.TRANSIENT
    _sa_backend: str | None = None
    _sa_fields: ClassVar[dict[str, str]] = {}
    _sa_methods: ClassVar[dict[str, MethodSpec]] = {}
    _sa_class_path: ClassVar[str] = ""
    _sa_generated: ClassVar[bool] = False
    _sa_write_watch: ClassVar[bool] = True

    def __init_subclass__(cls, *, write_watch: bool | None = None, **kwargs: Any) -> None:
        """``class Model(ActiveObject, write_watch=False)``: its backends store every large buffer
        at every write, instead of only those written since (for memory that devices or the kernel
        write through pinned pages, which the backend cannot see; inherited by subclasses)."""
        super().__init_subclass__(**kwargs)
        if write_watch is not None:
            if not isinstance(write_watch, bool):  # "false" would be true: a silent, unsafe mistake
                raise TypeError(f"{cls.__name__}: write_watch must be True or False, not {write_watch!r}")
            cls._sa_write_watch = write_watch
        if cls.__dict__.get("_sa_generated"):
            return
        cls._sa_fields = _collect_fields(cls)
        cls._sa_methods = _collect_methods(cls)
        cls._sa_class_path = class_path(cls)

    # ----------------------------------------------------------- persistence
    def make_persistent(self, identifier: str | None = None, *, alias: str | None = None, backend: Any = None) -> str:
        """Store this object on a backend and return its id.

        ``identifier``: the id to store it under (a UUID string), as COMPSs' ``makePersistent(id)``;
        default: a fresh one. ``alias``: a name for :meth:`get_by_alias`. ``backend``: a record or
        a name (default: any live one). On a client, the state moves to the backend and this
        instance becomes a handle to it. An object that is already persistent keeps its id.
        """
        oid = None if identifier is None else check_id(identifier)
        if self._sa_state in (State.RESIDENT, State.PROXY):
            if alias is not None:
                raise StoreError(f"object {self._sa_id} is already persistent; aliases are given at make_persistent")
            if oid is not None and oid != self._sa_id:
                raise StoreError(f"object {self._sa_id} is already persistent: it cannot take the id {oid}")
            assert self._sa_id is not None
            return self._sa_id
        if self._sa_state is State.DELETED:
            raise ObjectDeleted("this stub's object was deleted; a stub holds no state to store again")
        slots = [k.__qualname__ for k in type(self).__mro__ if set(k.__dict__.get("__slots__", ())) - {"__dict__", "__weakref__"}]
        if slots:  # slot values are not in the instance's __dict__, the state the store keeps: they were dropped
            raise InvalidArguments(f"{slots[0]} declares __slots__, whose values the store cannot keep: "
                                   "persistent classes keep their state in instance attributes")
        if alias is not None and not isinstance(alias, str):
            raise InvalidArguments(f"alias must be a string, not {type(alias).__name__}")
        return _context.current().persist(self, oid=oid, alias=alias, backend=backend)

    makePersistent = make_persistent

    def getID(self) -> str | None:
        """The object's id (a UUID4 string), or ``None`` while it is transient."""
        return self._sa_id

    def delete_persistent(self, keep_state: bool = True) -> None:
        """Remove the object from the store (COMPSs' ``deletePersistent``).

        The object stays usable as a transient one, holding the state it had (fetched back from
        its backend), with ``getID() is None``; it can be made persistent again, also under its
        old id. With ``keep_state=False`` nothing comes back (what clean-up wants: a large
        object's data need not cross the network to be thrown away) and the instance is spent,
        as a stub instance always is: it has no class here to hold the state. Deleting an
        object that is not persistent does nothing.
        """
        if self._sa_state in (State.RESIDENT, State.PROXY):
            _context.before_delete(self)
            _context.current().delete(self, keep_state)

    deletePersistent = delete_persistent
    delete = delete_persistent

    # ------------------------------------------------------------ placement
    def move(self, backend: Any, recursive: bool = False) -> None:
        """Move the object to ``backend`` (a record or a name); handles everywhere follow it.

        With ``recursive=True`` the persistent objects it references that lived on the same
        backend move with it.
        """
        self._sa_require()
        _context.current().move(self, backend, recursive)

    def new_replica(self, backend: Any) -> None:
        """Keep a copy on ``backend`` that takes every write and can serve read-only methods."""
        self._sa_require()
        _context.current().new_replica(self, backend)

    newReplica = new_replica

    def drop_replica(self, backend: Any) -> None:
        """Stop keeping a copy on ``backend``."""
        self._sa_require()
        _context.current().drop_replica(self, backend)

    def replicas(self) -> list[Any]:
        """The backends (records) holding replicas of this object, primary excluded."""
        self._sa_require()
        rt = _context.current()
        rec = rt.placement(self._sa_id)  # type: ignore[arg-type]
        infos = {b.id: b for b in rt.backends()}
        return [infos[r] for r in rec.replicas if r in infos]

    def _sa_require(self) -> None:
        if self._sa_state not in (State.RESIDENT, State.PROXY, State.REPLICA):
            raise StoreError(f"object is {self._sa_state.value}: make it persistent first")

    @classmethod
    def get_by_alias(cls: type[T], alias: str) -> T:
        """The persistent object registered under ``alias`` (``ObjectNotFound`` if none)."""
        return _context.current().get_by_alias(alias, cls)

    getByAlias = get_by_alias

    # -------------------------------------------------------------- pickling
    def __reduce_ex__(self, protocol: Any) -> Any:
        if self._sa_id is not None and self._sa_state is not State.TRANSIENT:
            return (_ref, (self._sa_id, self._sa_class_path, self._sa_backend))
        if self._sa_state is State.PENDING:
            raise StoreError("a stub instance must be made persistent before it can be passed around")
        return (_new_transient, (type(self),), state_of(self))

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)

    def __repr__(self) -> str:
        if self._sa_id is None:
            return object.__repr__(self)
        return f"<{self._sa_class_path} {self._sa_state.value} {self._sa_id}>"


StorageObject = ActiveObject


def canonical_id(identifier: Any) -> Any:
    """``identifier`` in the canonical form of ids if it is a UUID in another spelling (upper
    case, no dashes), else unchanged (looking it up then finds nothing)."""
    try:
        return check_id(identifier)
    except InvalidArguments:
        return identifier


def check_id(identifier: Any) -> str:
    """An object id given by the caller, in canonical form (ids are UUIDs: the log keys by them)."""
    try:
        return str(uuid.UUID(identifier))
    except (TypeError, ValueError, AttributeError):
        raise InvalidArguments(f"an object id is a UUID string, not {identifier!r}") from None


def _new_transient(cls: type[ActiveObject]) -> ActiveObject:
    return cls.__new__(cls)


def _ref(oid: str, path: str, backend: str | None) -> Any:
    """Unpickle a reference: the live object where it lives, a handle elsewhere."""
    return _context.current().resolve_ref(oid, path, backend)


# ------------------------------------------------------------------- handles
class RemoteMethod:
    """Descriptor of an active method on a handle: calling it runs the method remotely."""

    def __init__(self, name: str, readonly: bool, params: Params | None = None, doc: str | None = None):
        self.name = name
        self.readonly = readonly
        self.params = params  # set on stubs: arguments are checked before they travel
        self.__doc__ = doc

    def __get__(self, obj: Any, owner: type | None = None) -> Any:
        if obj is None:
            return self
        return BoundRemoteMethod(obj, self)


class BoundRemoteMethod:
    __slots__ = ("_obj", "_method")

    def __init__(self, obj: Any, method: RemoteMethod) -> None:
        self._obj = obj
        self._method = method

    def _check(self, args: tuple, kwargs: dict) -> None:
        params = self._method.params
        if params is not None:
            try:
                params.check(args, kwargs)
            except TypeError as exc:
                raise InvalidArguments(f"{self._method.name}(): {exc}") from None

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        self._check(args, kwargs)
        return _context.current().call(self._obj, self._method, args, kwargs)

    def submit(self, *args: Any, **kwargs: Any) -> Future:
        """Start the call and return a :class:`concurrent.futures.Future` of its result."""
        self._check(args, kwargs)
        return _context.current().call(self._obj, self._method, args, kwargs, wait=False)

    @property
    def __doc__(self) -> str | None:  # type: ignore[override]
        return self._method.__doc__

    def __repr__(self) -> str:
        return f"<remote method {self._method.name} of {self._obj!r}>"


class RemoteField:
    """Descriptor of a state attribute on a handle: reads and writes go to the backend.

    One is installed for every declared field and every class-level data attribute (``value = 0``),
    so that a class default never hides the value the backend holds.
    """

    def __init__(self, name: str) -> None:
        self.name = name

    def __get__(self, obj: Any, owner: type | None = None) -> Any:
        if obj is None:
            return self
        return _context.current().get_attr(obj, self.name)

    def __set__(self, obj: Any, value: Any) -> None:
        _context.current().set_attr(obj, self.name, value)


def _class_defaults(cls: type) -> list[str]:
    """Names of class-level data attributes (``value = 0``, ``myd = {}``) of ``cls`` and its bases.

    Such a default would be found before ``__getattr__`` on a handle, whose instance holds no state;
    methods, properties and other descriptors, machinery and volatile names are left alone.
    """
    names: dict[str, None] = {}
    for klass in reversed(cls.__mro__):
        if klass in (object, ActiveObject):
            continue
        for name, value in klass.__dict__.items():
            if name.startswith((RESERVED_PREFIX, VOLATILE_PREFIX)) or (name.startswith("__") and name.endswith("__")):
                continue
            if callable(value) or hasattr(type(value), "__get__"):
                names.pop(name, None)  # a method or descriptor here overrides a base's default
            else:
                names[name] = None
    return list(names)


def _handle_getattr(self: Any, name: str) -> Any:
    if name.startswith(RESERVED_PREFIX) or (name.startswith("__") and name.endswith("__")):
        raise AttributeError(name)
    return _context.current().get_attr(self, name)


def _handle_setattr(self: Any, name: str, value: Any) -> None:
    if name.startswith(RESERVED_PREFIX) or name == "__class__":
        object.__setattr__(self, name, value)
    else:
        _context.current().set_attr(self, name, value)


def _handle_delattr(self: Any, name: str) -> None:
    raise StoreError("attributes of a persistent object cannot be deleted remotely")


_HANDLE_NS = {
    "__slots__": (),
    "_sa_generated": True,
    "__getattr__": _handle_getattr,
    "__setattr__": _handle_setattr,
    "__delattr__": _handle_delattr,
}

_handles: weakref.WeakValueDictionary[str, Any] = weakref.WeakValueDictionary()


def handle_class(cls: type[ActiveObject]) -> type[ActiveObject]:
    """The generated handle class for a user's ActiveObject subclass (cached on the class)."""
    cached = cls.__dict__.get("_sa_handle_cls")
    if cached is not None:
        return cached
    if cls.__dict__.get("_sa_generated"):
        return cls
    ns: dict[str, Any] = dict(_HANDLE_NS, __module__=cls.__module__, __qualname__=cls.__qualname__)
    ns["__doc__"] = cls.__doc__
    for name in (*cls._sa_fields, *_class_defaults(cls)):
        ns[name] = RemoteField(name)
    for name, spec in cls._sa_methods.items():
        ns[name] = RemoteMethod(name, spec.readonly, None, getattr(cls, name).__doc__)
    meta: Any = type(cls)  # the user's metaclass, usually ``type``
    handle = meta(cls.__name__, (cls,), ns)
    type.__setattr__(cls, "_sa_handle_cls", handle)
    return handle


def make_handle(cls: type[ActiveObject], oid: str, backend: str | None) -> Any:
    """A handle for ``oid``; the same handle while one is alive (identity is preserved)."""
    existing = _handles.get(oid)
    if existing is not None and existing._sa_state is State.PROXY:
        if backend:
            existing._sa_backend = backend
        return existing
    obj = object.__new__(handle_class(cls))
    d = obj.__dict__
    d["_sa_id"] = oid
    d["_sa_state"] = State.PROXY
    d["_sa_backend"] = backend
    _handles[oid] = obj
    return obj


def become_handle(obj: Any, oid: str, backend: str | None) -> None:
    """Turn a transient or pending instance into a handle in place (after make_persistent)."""
    d = obj.__dict__
    d.clear()
    d["_sa_id"] = oid
    d["_sa_state"] = State.PROXY
    d["_sa_backend"] = backend
    object.__setattr__(obj, "__class__", handle_class(type(obj)))
    _handles[oid] = obj


def become_transient(obj: Any, state: dict[str, Any] | None) -> None:
    """A deleted object becomes a plain transient instance of its class, holding ``state`` (its
    last state, fetched from the backend; ``None`` for a backend's live object, which has it)."""
    d = obj.__dict__
    cls = type(obj)
    if (state is None and cls.__dict__.get("_sa_generated")) or cls.__dict__.get("_sa_stub"):
        # nothing came back (asked for nothing, or a stub: no class here to hold it): spent
        d.update(_sa_state=State.DELETED, _sa_id=None, _sa_backend=None, _sa_deleted_id=d.get("_sa_id"))
        return
    if state is not None:
        d.clear()
        d.update(state)
    for key in [k for k in d if k.startswith(RESERVED_PREFIX)]:
        del d[key]
    if cls.__dict__.get("_sa_generated"):  # a handle: back to the user's class
        object.__setattr__(obj, "__class__", cls.__mro__[1])


def import_class(path: str) -> type[ActiveObject]:
    """Import ``pkg.mod.Class`` (nested qualnames allowed); raise :class:`ClassNotFound`."""
    import importlib

    module, _, name = path.rpartition(".")
    # the module part may itself contain a class for nested classes: try the longest module first
    parts = path.split(".")
    for cut in range(len(parts) - 1, 0, -1):
        modname, attrs = ".".join(parts[:cut]), parts[cut:]
        try:
            obj: Any = sys.modules.get(modname) or importlib.import_module(modname)
        except ModuleNotFoundError as exc:
            if exc.name and (modname == exc.name or modname.startswith(exc.name + ".")):
                continue  # that prefix is not a module: try a shorter one
            raise ClassNotFound(f"cannot import {path}: {exc}") from exc
        except Exception as exc:
            raise ClassNotFound(f"cannot import {path}: {type(exc).__name__}: {exc}") from exc
        try:
            for attr in attrs:
                obj = getattr(obj, attr)
        except AttributeError:
            raise ClassNotFound(f"module {modname} has no class {'.'.join(attrs)}") from None
        if not (isinstance(obj, type) and issubclass(obj, ActiveObject)):
            raise ClassNotFound(f"{path} is not an ActiveObject subclass")
        return obj
    raise ClassNotFound(f"cannot import {path}: no module {module or path!r}")
