"""The backends' control queue (COMPSs' Java side and storage_stop.sh use it), driven from Python
through Metadata, which owns its keys: requests, replies, version links."""

from __future__ import annotations

import json

import pytest

from storage_api.errors import ObjectNotFound
from tests.models import Counter


def _ask(meta, bid: str, op: str, **args):
    answer = meta.control_reply(meta.request_control(bid, op, args), 10)
    assert answer is not None, f"no reply to {op}"
    return json.loads(answer)


def test_ping_reaches_the_named_backend_and_any(client):
    b0 = next(b for b in client.backends() if b.name == "b0")
    assert _ask(client.meta, b0.id, "ping") == {"ok": True, "result": b0.id}
    assert _ask(client.meta, "any", "ping")["result"] in {b.id for b in client.backends()}
    assert _ask(client.meta, b0.id, "no_such_op")["ok"] is False


def test_new_version_links_the_copy_and_consolidate_deletes_the_old_one(client):
    c = Counter(7)
    oid = c.make_persistent(backend="b0")
    b1 = next(b for b in client.backends() if b.name == "b1")
    answer = _ask(client.meta, "any", "new_version", oid=oid, preserve=True, host=b1.name)  # names are unique here
    new_id = answer["result"]
    assert answer["ok"] and new_id != oid
    assert client.placement(new_id).backend == b1.id and client.get_by_id(new_id).value == 7
    assert _ask(client.meta, "any", "consolidate", oid=new_id) == {"ok": True, "result": [oid]}
    with pytest.raises(ObjectNotFound):
        client.placement(oid)
    assert client.meta.pop_version_link(new_id) is None  # the link went with the consolidation
    assert client.get_by_id(new_id).value == 7
