"""The backend's messages: one type per operation, their wire form, and Client.send."""

from __future__ import annotations

import pickle
from concurrent.futures import Future

import numpy as np
import pytest

from storage_api import _messages as m
from storage_api import _wire
from storage_api._serial import dumps
from storage_api.errors import StoreError
from tests.models import Counter


def test_every_operation_has_one_type_and_one_handler():
    from storage_api._backend._handlers import HANDLERS

    assert set(HANDLERS) == set(m.MESSAGES.values())
    assert all(cls.op == op for op, cls in m.MESSAGES.items())


def test_wire_form_is_the_operation_name_then_the_fields():
    body, buffers, flags = m.encode(m.Call("oid-1", "inc", (np.arange(4),), {"n": 2}, "rid-1"))
    op, oid, method, args, kwargs, rid = pickle.loads(body, buffers=buffers)
    assert (op, oid, method, kwargs, rid, flags) == ("call", "oid-1", "inc", {"n": 2}, "rid-1", 0)
    assert np.array_equal(args[0], np.arange(4)) and len(buffers) == 1  # the array went out of band
    assert m.decode(body, buffers).args[0].tolist() == [0, 1, 2, 3]


def test_a_state_blob_travels_in_band_and_its_buffers_are_the_frames():
    state = m.Blob(*dumps({"data": np.arange(3.0)}))
    body, buffers, flags = m.encode(m.Persist("oid-2", "tests.models.Holder", "al", state))
    assert flags == _wire.FLAG_STREAM
    assert pickle.loads(body) == ("persist", "oid-2", "tests.models.Holder", "al", state.body)
    assert buffers == state.buffers
    got = m.decode(body, buffers, streams=["sink"])
    assert got.state == m.Blob(state.body, buffers, ["sink"])
    assert got._replace(state=None) == ("oid-2", "tests.models.Holder", "al", None)


@pytest.mark.parametrize("raw, error", [
    (("nope", 1), "unknown operation 'nope'"),
    (("call", "only-an-id"), "malformed 'call' request"),
    (["call"], "malformed request"),
])
def test_bad_requests_are_store_errors(raw, error):
    with pytest.raises(StoreError, match=error):
        m.decode(pickle.dumps(raw, protocol=5), [])


def test_send_reaches_a_backend_by_id_name_or_record(client):
    b0 = next(b for b in client.backends() if b.name == "b0")
    assert client.send(b0, m.Ping()) == "pong"
    assert client.send("b0", m.Ping()) == "pong"
    assert client.send(b0.id, m.Ping()) == "pong"
    future = client.send("b0", m.Stats(), wait=False)
    assert isinstance(future, Future)
    stats = future.result(timeout=10)
    assert stats["id"] == b0.id and "served_client" in stats["traffic"]


def test_send_carries_the_handlers_result_and_error(client):
    c = Counter(3)
    oid = c.make_persistent(backend="b1")
    assert client.send("b1", m.Call(oid, "inc", (2,), {}, None)) == 5
    assert client.send("b1", m.GetAttr(oid, "value")) == 5
    with pytest.raises(StoreError, match="malformed 'getattr' request"):  # what an old client could send
        client._send(client.locate(oid), pickle.dumps(("getattr", oid), protocol=5), [])
