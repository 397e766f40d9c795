"""Typed errors: unknown class, unknown method, wrong arguments, remote exceptions."""

from __future__ import annotations

import os
import pickle
import time

import pytest

import storage_api
from storage_api import errors
from storage_api._object import RemoteMethod
from storage_api.errors import (AliasExists, ClassNotFound, InvalidArguments, MethodNotFound, ObjectNotFound,
                                RemoteError, StoreError)
from tests.conftest import unique
from tests.models import Counter, Holder, Trainer


def test_remote_exception_keeps_its_type_and_traceback(client):
    c = Counter(1)
    c.make_persistent()
    with pytest.raises(ValueError, match="no good") as info:
        c.fail("no good")
    tb = info.value.remote_traceback
    assert "tests/models.py" in tb and "in fail" in tb and "raise ValueError(message)" in tb
    assert any("Remote traceback" in n for n in getattr(info.value, "__notes__", []))
    assert c.get() == -1  # the mutation made before the error is kept (and durable)


@pytest.mark.parametrize("how, type_name", [("exit", "builtins.SystemExit"), ("interrupt", "builtins.KeyboardInterrupt")])
def test_a_method_that_exits_is_its_callers_remote_error_and_the_backend_serves_on(client, how, type_name):
    t = Trainer()
    t.make_persistent()
    with pytest.raises(RemoteError) as info:
        t.quit(how)  # the caller neither exits nor hangs
    assert info.value.type_name == type_name and "in quit" in info.value.remote_traceback
    assert t.done() == -1  # the state it left is kept, as for any exception
    with pytest.raises(RemoteError):  # a retry-safe repeat, on the same connection: same answer
        t.quit(how)
    t.delete_persistent()


def test_unknown_method(client):
    c = Counter(1)
    c.make_persistent()
    with pytest.raises(MethodNotFound):
        client.call(c, RemoteMethod("nope", False), (), {})
    with pytest.raises(AttributeError):  # MethodNotFound is an AttributeError too
        client.call(c, RemoteMethod("plain", False), (), {})  # exists, but is not active


def test_a_method_missing_from_a_class_changed_since_the_backend_imported_it_says_restart(client):
    """A model edited while the backends run: they still run the class they imported."""
    import tests.models

    c = Counter(1)
    c.make_persistent(backend="b0")
    with pytest.raises(MethodNotFound, match="backend b0 .a backend imports a class once: restart it"):
        client.call(c, RemoteMethod("added_since", False), (), {})
    source = tests.models.__file__
    times = os.stat(source)
    os.utime(source, (times.st_atime, time.time() + 5))  # as if saved just now
    try:
        with pytest.raises(MethodNotFound, match=r"imported it before .*models\.py changed: .* restart the backends"):
            client.call(c, RemoteMethod("added_since", False), (), {})
    finally:
        os.utime(source, ns=(times.st_atime_ns, times.st_mtime_ns))


def test_wrong_arguments(client):
    c = Counter(1)
    c.make_persistent()
    with pytest.raises(InvalidArguments, match="positional"):
        c.inc(1, 2, 3)
    with pytest.raises(TypeError):  # InvalidArguments is a TypeError
        c.inc(bogus=1)
    assert c.get() == 1


def test_type_error_inside_a_method_is_not_invalid_arguments(client):
    c = Counter(1)
    c.make_persistent()
    with pytest.raises(TypeError) as info:
        c.inc("x")  # the body fails: int + str
    assert not isinstance(info.value, InvalidArguments)


def test_unknown_class(client):
    """The backend's error names it and where it imports classes from, which is what to change."""
    import os

    from storage_api._messages import New

    backend = client.backends()[0]
    with pytest.raises(ClassNotFound) as info:
        client.send(backend, New("8b2f1e6a-1111-4111-8111-111111111111", "no.such.module.Thing", None, (), {}))
    assert str(info.value) == (
        f"backend {backend.name}: cannot import no.such.module.Thing: no module 'no.such.module'; backends import "
        "model classes from the working directory and PYTHONPATH of the command that started them (such as "
        f"`storage-api up`), here {os.getcwd()} and PYTHONPATH={os.environ.get('PYTHONPATH') or '(unset)'} (a client's "
        "path, `storage-api run --pythonpath` included, does not change it: start the backends again with the "
        "model's folder on PYTHONPATH)")
    with pytest.raises(ClassNotFound):
        storage_api.stub("tests.models.NoSuchClass")


def test_unknown_object_and_alias(client):
    with pytest.raises(ObjectNotFound):
        storage_api.get_by_id("00000000-0000-4000-8000-000000000000")
    with pytest.raises(KeyError):  # ObjectNotFound is a KeyError
        Counter.get_by_alias(unique("never-registered"))


def test_alias_exists(client):
    name = unique("taken")
    a = Counter(1)
    a.make_persistent(alias=name)
    b = Counter(2)
    with pytest.raises(AliasExists):
        b.make_persistent(alias=name)
    assert b.getID() is None  # nothing half-done
    assert Counter.get_by_alias(name).get() == 1


def test_alias_of_another_class(client):
    name = unique("a-holder")
    Holder().make_persistent(alias=name)
    with pytest.raises(ObjectNotFound):
        Counter.get_by_alias(name)


def test_unserializable_result(client):
    h = Holder()
    h.make_persistent()
    with pytest.raises(StoreError, match="cannot be serialized"):
        h.unpicklable()
    assert h.take() is None  # the backend and the connection carry on


def test_classes_defined_in_main_are_refused(client):
    from storage_api import ActiveObject

    local = type("Local", (ActiveObject,), {"__module__": "__main__"})
    with pytest.raises(ClassNotFound, match="__main__"):
        local().make_persistent()


def test_errors_pickle_and_form_one_tree():
    for name in errors.__all__:
        exc_type = getattr(errors, name)
        assert issubclass(exc_type, StoreError)
    e = RemoteError("pkg.Missing", "boom", "Traceback...")
    again = pickle.loads(pickle.dumps(e))
    assert (again.type_name, again.message, again.remote_traceback) == ("pkg.Missing", "boom", "Traceback...")
    assert errors.CommunicationError.retryable and not errors.ObjectNotFound.retryable
    assert issubclass(errors.BackendUnavailable, errors.CommunicationError)


class Slotted(Counter):
    __slots__ = ("extra",)


def test_what_the_store_cannot_keep_is_refused_at_make_persistent(client):
    """A class with ``__slots__`` (its slot values are not instance attributes: they were dropped
    and the first use failed with AttributeError) and an alias that is not a string are refused
    before anything is stored; a lookup by a non-string alias is refused too."""
    s = Slotted(1)
    s.extra = 2
    with pytest.raises(InvalidArguments, match="__slots__"):
        s.make_persistent()
    assert s.getID() is None
    with pytest.raises(InvalidArguments, match="alias"):
        Counter(1).make_persistent(alias=7)
    with pytest.raises(InvalidArguments, match="alias"):
        storage_api.get_by_alias(None)
