"""Durability and liveness with real kills: kill -9, SIGTERM, SIGSTOP."""

from __future__ import annotations

import signal
import threading
import time

import numpy as np
import pytest

from storage_api import _context
from storage_api.errors import CommunicationError
from tests.models import Counter, Holder


def test_kill9_keeps_every_acknowledged_update(own_cluster, own_client):
    counter = Counter(0)
    counter.make_persistent(backend="b0")
    blob = Holder(np.arange(3_000_000, dtype=np.float64))  # 24 MB: the two-phase write path
    blob.make_persistent(backend="b0", alias="durable-blob")
    acked: list[int] = []
    errors: list[BaseException] = []
    lock = threading.Lock()

    def writer() -> None:
        while True:
            try:
                v = counter.inc()
            except CommunicationError as exc:
                errors.append(exc)
                return
            with lock:
                acked.append(v)

    threads = [threading.Thread(target=writer) for _ in range(4)]
    for t in threads:
        t.start()
    while len(acked) < 300:
        time.sleep(0.01)
    own_cluster.kill("b0", signal.SIGKILL)
    for t in threads:
        t.join(timeout=10)
    assert len(errors) == 4  # every writer saw the failure as a CommunicationError
    own_cluster.restart("b0")

    fresh = own_cluster.client()
    previous = _context.install(fresh)
    try:
        again = fresh.get_by_id(counter.getID())
        value = again.get()
        # every acknowledged increment survived; at most the in-flight ones (one per thread) more
        assert len(acked) <= value <= len(acked) + 4
        assert max(acked) <= value
        restored = Holder.get_by_alias("durable-blob")
        np.testing.assert_array_equal(restored.take(), np.arange(3_000_000, dtype=np.float64))
        assert again.inc() == value + 1
    finally:
        _context.install(previous)
        fresh.close()
    # the old client reconnects by itself (the backend came back on another port)
    assert counter.get() == value + 1


def test_restart_serves_every_object_again(own_cluster, own_client):
    objs = []
    for i in range(50):
        c = Counter(i)
        c.make_persistent(backend="b1", alias=f"restart-{i}" if i % 5 == 0 else None)
        c.inc(i)
        objs.append(c)
    gone = objs.pop()
    gone.delete_persistent()
    own_cluster.kill("b1", signal.SIGKILL)
    own_cluster.restart("b1")
    fresh = own_cluster.client()
    previous = _context.install(fresh)
    try:
        for i, c in enumerate(objs):
            assert fresh.get_by_id(c.getID()).get() == 2 * i
        assert Counter.get_by_alias("restart-10").get() == 20
        status = {b.name: b for b in fresh.backends()}
        assert status["b1"].alive and status["b1"].objects == 49
    finally:
        _context.install(previous)
        fresh.close()


def test_sigterm_deregisters_at_once(own_cluster, own_client):
    own_cluster.kill("b1", signal.SIGTERM)
    status = {b.name: b for b in own_client.backends()}
    assert not status["b1"].alive and status["b0"].alive


def test_sigterm_right_after_registering_still_deregisters(own_cluster, own_client):
    """A backend is alive in Redis from the first step of its registration: a SIGTERM from then on
    (a job script cleaning up, scancel) must deregister it, never leave it 'alive' until its TTL."""
    import os
    from pathlib import Path

    from storage_api._deploy import _local

    b = own_cluster.backend("b1")
    for _ in range(3):
        own_cluster.kill("b1", signal.SIGKILL)
        proc = _local._spawn(_local._backend_cmd(own_cluster.dep.config_path, Path(b.storage_dir), "b1", False,
                                                 "WARNING"), Path(b.log))
        deadline = time.monotonic() + 20
        while not any(i.name == "b1" and i.alive and i.pid == proc.pid for i in own_client.backends()):
            assert time.monotonic() < deadline, "b1 did not register"
            time.sleep(0.001)
        os.kill(proc.pid, signal.SIGTERM)
        proc.wait(timeout=20)
        assert not {i.name: i for i in own_client.backends()}["b1"].alive
        b.pid = proc.pid
        own_cluster.restart("b1")


def test_dead_backend_is_reported_dead_within_seconds(own_cluster, own_client):
    start = time.monotonic()
    own_cluster.kill("b0", signal.SIGKILL)
    while any(b.name == "b0" and b.alive for b in own_client.backends()):
        assert time.monotonic() - start < 6, "status still reports a killed backend alive"
        time.sleep(0.1)


def test_call_to_a_killed_backend_fails_fast(own_cluster, own_client):
    c = Counter(0)
    c.make_persistent(backend="b0")
    c.inc()
    own_cluster.kill("b0", signal.SIGKILL)
    start = time.monotonic()
    with pytest.raises(CommunicationError):
        c.inc()
    assert time.monotonic() - start < 2.0


def test_call_to_a_frozen_backend_over_tls_fails_instead_of_hanging(own_cluster):
    """The same over TCP+TLS: the watchdog's own pings leave (into socket buffers) even to a
    frozen backend, and must not count as progress."""
    client = own_cluster.client(local_socket=False)
    previous = _context.install(client)
    try:
        test_call_to_a_frozen_backend_fails_instead_of_hanging(own_cluster, client)
    finally:
        _context.install(previous)
        client.close()


def test_call_to_a_frozen_backend_fails_instead_of_hanging(own_cluster, own_client):
    c = Counter(0)
    c.make_persistent(backend="b0")
    c.inc()
    own_cluster.kill("b0", signal.SIGSTOP)
    try:
        start = time.monotonic()
        with pytest.raises(CommunicationError):
            c.inc()
        elapsed = time.monotonic() - start
        assert elapsed < 3.5, f"call to a frozen backend took {elapsed:.1f}s to fail (liveness timeout 2 s)"
    finally:
        own_cluster.kill("b0", signal.SIGCONT)
