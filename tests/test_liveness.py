"""A backend busy importing a module (the interpreter lock held for seconds) is not given up;
one silent for any other reason still is."""

from __future__ import annotations

import signal
import time

import pytest

from storage_api import _context
from storage_api._object import RemoteMethod
from storage_api.errors import BackendUnavailable
from tests.conftest import wait_for
from tests.models import LockHolder

HOLD = 1.5  # seconds the lock is held: twice the callers' liveness timeout, half the heartbeat TTL


@pytest.fixture
def impatient(cluster):
    """A client that gives a silent backend up after 0.75 s."""
    c = cluster.client(liveness_timeout=0.75)
    previous = _context.install(c)
    yield c
    _context.install(previous)
    c.close()


def _module(directory, text: str) -> str:
    name = f"module_{time.monotonic_ns()}"
    (directory / f"{name}.py").write_text(text)
    return name


# Loads the way torch does: long stretches with the lock held, Python (pings answered) between.
BURSTS = (f"import ctypes, time\nfor _ in range(3):\n    ctypes.PyDLL(None).usleep({int(HOLD * 1e6)})\n"
          "    t = time.monotonic()\n    while time.monotonic() - t < 0.2:\n        pass\n")


def test_a_first_import_that_holds_the_lock_is_waited_for_by_every_caller(impatient, cluster, tmp_path):
    h = LockHolder()
    h.make_persistent(backend="b0")
    other = cluster.client(liveness_timeout=0.75)  # another client, on its own connection

    def nap() -> float:
        return other.call(h, RemoteMethod("nap", True), (0.0,), {})

    try:
        assert nap() == 0.0
        name = _module(tmp_path, BURSTS)
        start = time.monotonic()
        loading = h.import_module.submit(str(tmp_path), name)
        time.sleep(0.3)
        assert nap() == 0.0  # answered once the module is loaded
        assert loading.result(timeout=60) == name
        assert time.monotonic() - start >= 3 * HOLD
    finally:
        other.close()


def test_once_the_module_is_loaded_a_silent_backend_is_given_up_again(impatient, tmp_path):
    h = LockHolder()
    h.make_persistent(backend="b0")
    start = time.monotonic()
    with pytest.raises(BackendUnavailable, match="did not answer"):
        h.import_then_hold(str(tmp_path), _module(tmp_path, "VALUE = 1\n"), HOLD)
    assert time.monotonic() - start < HOLD


def test_a_backend_silent_for_another_reason_is_still_given_up(impatient, tmp_path):
    """... also right after a call that announced an import (the announcement ends with it)."""
    name = f"quick_import_{time.monotonic_ns()}"
    (tmp_path / f"{name}.py").write_text("VALUE = 1\n")
    h = LockHolder()
    h.make_persistent(backend="b0")
    assert h.import_module(str(tmp_path), name) == name
    start = time.monotonic()
    with pytest.raises(BackendUnavailable, match="did not answer"):
        h.hold(HOLD)
    assert time.monotonic() - start < HOLD
    time.sleep(HOLD)
    h.hold(0.0)  # the backend itself is fine: a new connection serves the next call


def test_a_call_longer_than_a_raised_liveness_timeout_is_not_cut(cluster):
    """Pings keep being answered however long a call runs, also once no other request comes."""
    c = cluster.client(liveness_timeout=4.0)
    previous = _context.install(c)
    try:
        h = LockHolder()
        h.make_persistent(backend="b1")
        assert h.nap(6.0) == 6.0
    finally:
        _context.install(previous)
        c.close()


def test_a_backend_loading_a_module_stays_alive_in_redis(own_cluster, own_client, tmp_path):
    """No failover to a replica because a module takes longer to load than the heartbeat's TTL."""
    h = LockHolder()
    h.make_persistent(backend="b0")
    slow = _module(tmp_path, "import ctypes\nctypes.PyDLL(None).usleep(2500000)\n")
    loading = h.import_module.submit(str(tmp_path), slow)
    time.sleep(1.5)  # well past the deployment's heartbeat TTL (0.6 s)
    assert {b.name: b.alive for b in own_client.backends()}["b0"]
    assert loading.result(timeout=60) == slow


def test_more_calls_at_once_than_a_backend_runs_wait_their_turn_with_pings_answered(impatient):
    """A connection runs at most max_workers (64) requests at once; the others wait, and the
    connection stays live for all of them (its reader answers pings meanwhile)."""
    h = LockHolder()
    h.make_persistent(backend="b1")
    calls = [h.nap.submit(1.0) for _ in range(70)]
    assert [f.result(timeout=60) for f in calls] == [1.0] * 70


def test_once_loaded_a_frozen_backend_is_dead_after_the_usual_ttl(own_cluster, own_client, tmp_path):
    """The heartbeat stops vouching for the load when it is over: a backend frozen right after
    it is reported dead (and its objects fail over) after heartbeat_ttl, not a minute later."""
    h = LockHolder()
    h.make_persistent(backend="b0")
    slow = _module(tmp_path, "import ctypes\nctypes.PyDLL(None).usleep(1000000)\n")
    assert h.import_module(str(tmp_path), slow) == slow
    own_cluster.kill("b0", signal.SIGSTOP)
    try:
        wait_for(lambda: not {b.name: b.alive for b in own_client.backends()}["b0"], 5.0, "b0 reported dead")
    finally:
        own_cluster.kill("b0", signal.SIGCONT)
