"""A backend busy importing a module (the interpreter lock held for seconds) is not given up;
one silent for any other reason still is."""

from __future__ import annotations

import time

import pytest

from storage_api import _context
from storage_api.errors import BackendUnavailable
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


def test_a_first_import_that_holds_the_lock_is_waited_for(impatient, tmp_path):
    name = f"held_import_{time.monotonic_ns()}"
    (tmp_path / f"{name}.py").write_text(f"import ctypes\nctypes.PyDLL(None).usleep({int(HOLD * 1e6)})\n")
    h = LockHolder()
    h.make_persistent(backend="b0")
    start = time.monotonic()
    assert h.import_module(str(tmp_path), name) == name
    assert time.monotonic() - start >= HOLD


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
