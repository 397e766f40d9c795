"""State and calls across processes: the client, two backends and Redis are separate processes."""

from __future__ import annotations

import numpy as np
import pytest

import storage_api
from storage_api import State
from storage_api._serial import dumps
from storage_api._transport import traffic
from storage_api.errors import ObjectDeleted, ObjectNotFound
from tests.conftest import unique
from tests.models import Counter, Holder, Node


def test_make_persistent_moves_state_to_a_backend(client):
    c = Counter(5)
    assert c.getID() is None and c._sa_state is State.TRANSIENT
    oid = c.make_persistent()
    assert c.getID() == oid and len(oid) == 36
    assert c._sa_state is State.PROXY
    assert "value" not in c.__dict__  # the state lives on the backend now
    assert c.inc(3) == 8
    assert c.value == 8
    assert c.get() == 8
    assert isinstance(c, Counter)


def test_attribute_writes_go_to_the_backend(client):
    c = Counter(1)
    c.make_persistent()
    c.value = 41
    assert c.inc() == 42
    assert storage_api.get_by_id(c.getID()).value == 42


def test_plain_methods_run_locally_on_remote_state(client):
    c = Counter(7)
    c.make_persistent()
    assert c.plain() == "value is 7"


def test_active_methods_run_on_the_backend_process(client, cluster):
    c = Counter()
    c.make_persistent(backend="b1")
    assert int(c.where()) == cluster.backend("b1").pid


def test_backend_choice_by_record_or_name(client):
    records = {b.name: b for b in storage_api.backends()}
    assert set(records) == {"b0", "b1"}
    a, b = Counter(), Counter()
    a.make_persistent(backend=records["b0"])
    b.make_persistent(backend="b1")
    assert a._sa_backend == records["b0"].id and b._sa_backend == records["b1"].id
    info = records["b0"]
    assert info.alive and info.port > 0 and info.pid > 0 and info.compss_name


def test_get_by_alias_and_id_return_the_same_object(client):
    name = unique("roundtrip")
    c = Counter(3)
    c.make_persistent(alias=name)
    fresh = client.get_by_id(c.getID())
    assert fresh is c  # one handle per object while it is alive
    other = Counter.get_by_alias(name)
    assert other.getID() == c.getID()
    assert other.inc() == 4


def test_get_by_alias_from_another_client_process(client, cluster):
    from tests.conftest import run_python

    name = unique("other-process")
    c = Counter(10)
    c.make_persistent(alias=name)
    code = (
        "import storage_api\n"
        "from tests.models import Counter\n"
        f"storage_api.connect({str(cluster.dep.config_path)!r})\n"
        f"c = Counter.get_by_alias({name!r})\n"
        "print(c.inc(5))\n"
    )
    out = run_python(code)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "15"
    assert c.get() == 15


def test_camelcase_aliases_for_compss_users(client):
    c = Counter(1)
    oid = c.makePersistent()
    assert c.getID() == oid
    c.deletePersistent()
    assert c.getID() is None and c._sa_state is State.TRANSIENT


def test_delete_persistent(client):
    name = unique("deleted")
    c = Counter(1)
    c.make_persistent(alias=name)
    oid = c.getID()
    c.delete_persistent()
    assert c.inc() == 2  # a transient object again, holding its last state: runs here
    with pytest.raises(ObjectNotFound):
        storage_api.get_by_id(oid)
    with pytest.raises(ObjectNotFound):
        Counter.get_by_alias(name)
    d = Counter(2)
    d.make_persistent(alias=name)  # the alias is free again
    assert d.get() == 2


def test_delete_without_keeping_the_state_brings_nothing_back(client):
    def received() -> int:
        return sum(got for _, got in traffic().values())

    arr = np.ones(4 << 20)  # 32 MiB
    kept, dropped = Holder(arr), Holder(arr)
    kept.make_persistent()
    oid = dropped.make_persistent()
    before = received()
    kept.delete_persistent()  # COMPSs' semantics: the state comes back to the object
    assert received() - before > arr.nbytes and np.array_equal(kept.data, arr)
    before = received()
    dropped.delete_persistent(keep_state=False)
    assert received() - before < 64 << 10
    assert dropped.getID() is None
    with pytest.raises(ObjectDeleted, match=f"object {oid} was deleted"):  # the id it had, not None
        dropped.total()
    with pytest.raises(ObjectNotFound):
        storage_api.get_by_id(oid)


def test_numpy_arrays_travel_out_of_band_and_intact(client):
    arr = np.random.default_rng(0).standard_normal((512, 1024))  # 4 MiB
    h = Holder(arr)
    h.make_persistent()
    assert h.total() == pytest.approx(arr.sum())
    back = h.take()
    assert isinstance(back, np.ndarray) and back.dtype == arr.dtype
    np.testing.assert_array_equal(back, arr)
    # out of band both ways: each side's array lives in the buffer the bytes were received into
    assert not back.flags.owndata and h.data_borrows_memory()
    h.put(arr * 2)
    np.testing.assert_array_equal(h.data, arr * 2)


def test_persistent_argument_travels_as_reference(client):
    same = Holder()
    same.make_persistent(backend="b0")
    there = Counter(1)
    there.make_persistent(backend="b1")
    here = Counter(1)
    here.make_persistent(backend="b0")
    assert same.inspect_arg(here) == {"state": "resident", "type": "Counter", "id": here.getID()}
    assert same.inspect_arg(there) == {"state": "proxy", "type": "Counter", "id": there.getID()}
    assert same.inspect_arg(Counter(4)) == {"state": "transient", "type": "Counter", "id": None}


def test_calls_between_backends(client):
    target = Counter(100)
    target.make_persistent(backend="b1")
    h = Holder(other=target)
    h.make_persistent(backend="b0")
    assert h.bump_other(5) == 105  # b0 calls b1
    assert target.get() == 105


def test_object_created_inside_a_backend(client):
    h = Holder()
    h.make_persistent(backend="b1")
    child = h.spawn_child(9)
    assert child.getID() and child._sa_state is State.PROXY
    assert child.inc() == 10
    assert child._sa_backend == h._sa_backend


def test_graph_of_references_with_a_cycle(client):
    a = Node("a")
    a.make_persistent(backend="b0")
    b = Node("b", a)
    b.make_persistent(backend="b1")
    a.next = b  # cycle across backends
    assert a.chain() == ["a", "b"]
    assert b.chain() == ["b", "a"]


def test_transient_argument_is_copied(client):
    h = Holder()
    h.make_persistent()
    data = {"k": [1, 2, 3]}
    h.put(data)
    data["k"].append(4)
    assert h.take() == {"k": [1, 2, 3]}


def test_futures(client):
    c = Counter(0)
    c.make_persistent()
    futures = [c.inc.submit(1) for _ in range(50)]
    assert sorted(f.result(timeout=10) for f in futures) == list(range(1, 51))
    gate = unique("gate")
    held = c.hold.submit(gate, 60.0)  # returns when released: a future that cannot be done yet
    assert not held.done()
    c.release(gate)
    assert held.result(timeout=30) is True


def test_transient_objects_run_locally(client):
    c = Counter(1)
    assert c.inc() == 2  # no store involved
    assert c.getID() is None


def test_large_bytes_travel_out_of_band_and_stay_bytes(client):
    """Large ``bytes`` (an argument, the stored state, a result) leave the pickle stream as buffers:
    pickling hundreds of MB in-band held the GIL for seconds, long enough for a loaded backend to
    miss its callers' liveness pings. They come back as the same bytes, sharing kept."""
    blob = bytes(range(256)) * (32 << 12)  # 32 MiB
    body, buffers = dumps((blob, [blob], {"k": blob}))
    assert len(body) < 1024 and [len(b) for b in buffers] == [len(blob)]  # one buffer, no copy in the body
    h = Holder()
    h.make_persistent()
    h.put([blob, {"again": blob}, b"small"])
    back = h.take()
    assert type(back[0]) is bytes and back[0] == blob and back[1]["again"] is back[0] and back[2] == b"small"
    assert h.swap(None)[0] == blob


def test_large_in_band_values(client):
    """Values pickled in-band (no buffers) larger than the receive buffer, both ways."""
    h = Holder()
    h.make_persistent()
    big = {"rows": [list(range(50)) for _ in range(20_000)], "text": "x" * 3_000_000}
    h.put(big)
    assert h.take() == big
