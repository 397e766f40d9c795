"""The backend's gate on its own: start and stop in either order, from different threads.

A SIGTERM during start-up runs the backend's stop in a signal-handling thread while the main
thread may still be starting the gate; neither may fail or hang, and a stopped gate never starts.
"""

from __future__ import annotations

import socket
import threading

from storage_api._backend._gate import Gate, Limits


def _gate() -> tuple[Gate, socket.socket]:
    listener = socket.create_server(("127.0.0.1", 0))
    return Gate([(listener, lambda s: None)], lambda accepted, host: False, Limits()), listener


def _gate_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "storage-api-gate"]


def test_a_gate_stopped_before_it_starts_never_starts():
    gate, listener = _gate()
    before = len(_gate_threads())
    gate.stop()
    gate.start()
    assert len(_gate_threads()) == before
    listener.close()  # nothing took it over: closing it is all it needs
    gate.stop()  # twice is fine


def test_start_and_stop_racing_in_two_threads_neither_fails_nor_leaves_a_thread():
    before = len(_gate_threads())
    for _ in range(200):
        gate, listener = _gate()
        errors: list[BaseException] = []
        barrier = threading.Barrier(2)

        def run(step):
            barrier.wait()
            try:
                step()
            except BaseException as exc:  # noqa: BLE001 - the test reports any
                errors.append(exc)

        threads = [threading.Thread(target=run, args=(gate.start,)), threading.Thread(target=run, args=(gate.stop,))]
        for t in threads:
            t.start()
        for t in threads:
            t.join(10)
        assert not errors, errors
        gate.stop()  # whichever won, the gate is stopped now and its thread gone
        listener.close()
    assert len(_gate_threads()) == before
