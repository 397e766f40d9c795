"""Thin clients: stubs built from published metadata, in a process that cannot import the model."""

from __future__ import annotations

import json
import textwrap

import numpy as np

import storage_api
from tests.conftest import run_python, unique
from tests.models import Counter, Holder

BLOCKER = textwrap.dedent("""
    import sys

    class _Blocked:
        BLOCK = ("numpy", "torch", "tests.models", "pandas")

        def find_spec(self, name, path=None, target=None):
            if name in self.BLOCK or name.split(".")[0] in ("numpy", "torch", "pandas"):
                raise ImportError(f"{name} is not installed on this thin client")
            return None

    sys.meta_path.insert(0, _Blocked())
""")


def test_stub_client_without_model_numpy_or_torch(cluster, client):
    alias = unique("thin-counter")
    # objects created by a full client, read by the thin one
    h = Holder(np.arange(10.0))
    h.make_persistent(alias=unique("thin-holder"))
    code = BLOCKER + textwrap.dedent(f"""
        import json
        import storage_api
        from storage_api.errors import InvalidArguments
        from storage_api._serial import Broken

        storage_api.connect({str(cluster.dep.config_path)!r})
        Counter = storage_api.stub("tests.models.Counter")
        out = {{}}
        c = Counter(5)
        c.make_persistent(alias={alias!r})
        out["inc"] = c.inc(2)
        out["value"] = c.value
        out["alias"] = Counter.get_by_alias({alias!r}).get()
        out["module_alias"] = storage_api.get_by_alias({alias!r}).get()  # no class named at all
        try:
            c.inc(1, 2, 3)
        except InvalidArguments as exc:
            out["local_check"] = str(exc)
        try:
            Counter(1, 2, 3)
        except InvalidArguments:
            out["ctor_check"] = True
        out["doc"] = Counter.inc.__doc__
        out["class_doc"] = Counter.__doc__
        out["signature"] = str(Counter._sa_methods["inc"])
        holder = storage_api.get_by_id({h.getID()!r})
        out["holder_type"] = type(holder).__name__
        out["total"] = holder.total()
        arr = holder.take()
        out["placeholder"] = isinstance(arr, Broken)
        out["placeholder_repr"] = repr(arr)
        holder.put(arr)  # sent back unchanged: a real array again on the backend
        out["total_after_round_trip"] = holder.total()
        try:
            c.fail("thin")
        except ValueError as exc:
            out["error"] = str(exc)
        try:
            c.plain()  # not an activemethod: it needs the class
        except AttributeError as exc:
            out["plain"] = str(exc)
        out["id"] = c.getID()
        out["blocked"] = [m for m in ("numpy", "torch", "tests.models") if m in sys.modules]
        print(json.dumps(out))
    """)
    proc = run_python(code)
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["inc"] == 7 and out["value"] == 7 and out["alias"] == 7 and out["module_alias"] == 7
    assert "positional" in out["local_check"] and out["ctor_check"]
    assert out["doc"] == "Add ``n`` and return the new value."
    assert out["class_doc"] == "Counts; the canonical example."
    assert out["holder_type"] == "Holder" and out["total"] == 45.0 and out["placeholder"]
    assert out["placeholder_repr"].startswith("<Broken numpy.ndarray ")
    assert out["total_after_round_trip"] == 45.0
    assert out["error"] == "thin"
    assert "Counter.plain is not an @activemethod" in out["plain"]  # it recursed until RecursionError
    assert out["blocked"] == []
    # the object the thin client created is a real Counter for a full client
    full = storage_api.get_by_id(out["id"])
    assert isinstance(full, Counter) and full.get() == -1


def test_stub_in_process_matches_the_class(client):
    stub = storage_api.stub("tests.models.Counter")
    assert set(stub._sa_methods) == set(Counter._sa_methods)
    assert stub._sa_methods["get"].readonly and not stub._sa_methods["inc"].readonly
    s = stub(3)
    s.make_persistent()
    assert s.inc() == 4
    assert isinstance(s, storage_api.ActiveObject)


def test_thin_client_import_pulls_no_heavy_modules():
    code = BLOCKER + textwrap.dedent("""
        import storage_api, sys
        heavy = [m for m in ("numpy", "torch", "redis", "asyncio", "ssl") if m in sys.modules]
        print(heavy)
    """)
    proc = run_python(code)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[]"


def test_stub_argument_checks_agree_with_python_on_every_kind_of_parameter():
    """A stub refuses exactly the calls Python would refuse (its own check, not inspect's bind):
    random signatures of every parameter kind, random calls, each compared with a real call of a
    real function of that signature."""
    import inspect
    import random

    from storage_api._stub import Params, _signature_json

    rng = random.Random(11)
    kinds = inspect.Parameter
    compared = refused = 0
    for _ in range(400):
        params, default = [], False
        for kind in sorted(rng.choice([0, 1, 1, 2, 3, 3, 4]) for _ in range(rng.randint(0, 5))):
            name = "abcdefgh"[len(params)]
            if kind in (2, 4) and any(p.kind == kind for p in params):
                continue
            value = kinds.empty
            if kind in (0, 1) and (default or rng.random() < 0.3) or kind == 3 and rng.random() < 0.5:
                value, default = 1, default or kind != 3
            params.append(inspect.Parameter(name, inspect._ParameterKind(kind), default=value))
        self_kind = 0 if any(p.kind == 0 for p in params) else 1
        sig = inspect.Signature([inspect.Parameter("self", inspect._ParameterKind(self_kind)), *params])
        scope: dict = {}
        exec(f"def method{sig}: pass", scope)
        checked = Params(_signature_json(scope["method"]))
        for _ in range(10):
            args = tuple(range(rng.randint(0, 4)))
            kwargs = dict.fromkeys(rng.sample("abcdefghxy", rng.randint(0, 3)), 1)
            try:
                scope["method"](None, *args, **kwargs)
                python_refuses = False
            except TypeError:
                python_refuses = True
            try:
                checked.check(args, kwargs)
                stub_refuses = False
            except TypeError:
                stub_refuses = True
            assert stub_refuses == python_refuses, (str(sig), args, kwargs)
            compared += 1
            refused += python_refuses
    assert compared == 4000 and 500 < refused < 3500  # both outcomes were exercised

