"""Progress reports of long calls travel from the backend to the caller, before the reply."""

from __future__ import annotations

import threading

import storage_api
from tests.models import Trainer


def test_progress_reaches_the_caller_in_order(client):
    t = Trainer()
    t.make_persistent()
    seen: list[dict] = []
    with storage_api.on_progress(seen.append):
        assert t.train(5) == 5
    assert [e["epoch"] for e in seen] == [1, 2, 3, 4, 5]  # all of them, before the call returned
    assert seen[-1]["loss"] == 0.2
    assert t.train(2) == 7  # no listener: reports are simply dropped


def test_progress_of_a_future(client):
    t = Trainer()
    t.make_persistent()
    seen: list[int] = []
    done = threading.Event()
    with storage_api.on_progress(lambda e: seen.append(e["epoch"])):
        f = t.train.submit(3)
    f.add_done_callback(lambda _f: done.set())
    assert f.result(timeout=10) == 3 and done.wait(5)
    assert seen == [1, 2, 3]


def test_progress_is_forwarded_across_backends(client):
    worker = Trainer()
    worker.make_persistent(backend="b1")
    boss = Trainer()
    boss.make_persistent(backend="b0")
    seen: list[int] = []
    with storage_api.on_progress(lambda e: seen.append(e["epoch"])):
        assert boss.train_other(worker, 4) == 4
    assert seen == [1, 2, 3, 4]


def test_local_objects_report_to_the_local_listener():
    t = Trainer()  # transient: runs here, same code
    seen: list[int] = []
    with storage_api.on_progress(lambda e: seen.append(e["epoch"])):
        t.train(3)
    assert seen == [1, 2, 3]
