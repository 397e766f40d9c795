"""Progress reports of long calls travel from the backend to the caller, before the reply."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time

import pytest

import storage_api
from tests.conftest import ROOT
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


# A client that starts 2,000 epochs of 50 ms (100 s) and goes away after its third report: by being
# killed, or by a Ctrl-C it survives (it then asks, on the same client, how far the training got).
_WALK_AWAY = """
import os, signal, sys, time
import storage_api
from tests.models import Trainer

t = storage_api.get_by_id(sys.argv[1])
def on_epoch(event):
    if event["epoch"] == 3:
        print("third", flush=True)
        os.kill(os.getpid(), signal.SIGINT if sys.argv[2] == "interrupt" else signal.SIGKILL)
try:
    with storage_api.on_progress(on_epoch):
        t.train_slowly(2000, 0.05)
except KeyboardInterrupt:
    start = time.monotonic()
    print("done", t.done(), round(time.monotonic() - start, 1), flush=True)
"""


@pytest.mark.parametrize("how", ["killed", "interrupt"])
def test_a_caller_that_goes_away_cancels_its_call_at_the_next_report(cluster, client, how):
    t = Trainer()
    t.make_persistent(backend="b0")
    proc = subprocess.run([sys.executable, "-c", _WALK_AWAY, t.getID(), how], capture_output=True, text=True,
                          cwd=ROOT, env={**os.environ, "STORAGE_API_CONFIG": str(cluster.dep.config_path)}, timeout=90)
    assert "third" in proc.stdout, proc.stderr[-2000:]
    if how == "interrupt":  # the interrupted process itself sees the training stopped
        done, waited = proc.stdout.split("done ")[1].split()
        assert 3 <= int(done) < 2000 and float(waited) < 30, proc.stdout
    start = time.monotonic()
    done = t.done()  # waits for the training's write lock: it is released once the call stopped
    assert 3 <= done < 2000 and time.monotonic() - start < 30
    t.delete_persistent()
