"""Pyro5 baseline for ``bench/calls.py``: call latency, calls/s and bulk transfer.

Run with the Pyro5 venv (``bash bench/setup_baselines.sh`` creates it)::

    bench/.venvs/pyro5/bin/python bench/baselines/pyro5_calls.py [--quick] [--threads 1,4,16]

It starts a Pyro5 daemon (the default thread-pool server) on 127.0.0.1, on a free port, in a
subprocess of its own (this script with ``--serve``; it prints its URI on its stdout), with one
registered ``Bench`` object (registered as an instance, so every connection shares it), no name
server. The subprocess is stopped however the run ends.

Serializer: ``marshal`` for everything. Pyro5 has no pickle; of its serializers marshal is the
fastest for small calls and the only one in the standard library that carries ``bytes`` as they
are (serpent base64-encodes them, json cannot). Arrays travel as ``(arr.tobytes(), dtype, shape)``
and are rebuilt with ``np.frombuffer`` on the other side; that wrapping is counted in the timings.

Measured from one client process, after warm-up:

* ``noop`` / ``inc`` latency: sequential calls through one proxy. ``inc`` changes a Python int in
  the daemon's memory: nothing is durable in Pyro5.
* calls/s of ``noop`` from 1 (the main thread), 4 and 16 threads, each with its own proxy (a Pyro5 proxy belongs to
  the thread that uses it; one connection per proxy, one daemon worker thread per connection).
* persist = ``put(array)`` onto the remote object (memory only); fetch = ``get()`` back, checked
  equal to the original; ``inc`` latency again while the object holds the array.

Each size (1, 16, 128 MB of float64; MB = 2**20 bytes) gets one untimed warm-up then 3 timed
repeats (2 with ``--quick``); the MBps fields are the medians, ``*_best`` the fastest.
Prints one JSON object on stdout; everything else goes to stderr.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import Pyro5
import Pyro5.api

from _common import (SIZES_MB, Children, claim_stdout, emit, exit_on_sigterm, held_inc, latency, log, parse_args,
                     record_bulk, throughput, timed_fetches)

Payload = tuple[bytes, str, list[int]]


def pack(arr: np.ndarray) -> Payload:
    return arr.tobytes(), arr.dtype.str, list(arr.shape)


def unpack(payload: Payload | list[Any]) -> np.ndarray:
    raw, dtype, shape = payload
    return np.frombuffer(raw, dtype=dtype).reshape(shape)


@Pyro5.api.expose
class Bench:
    def __init__(self) -> None:
        self.value = 0
        self.data: np.ndarray | None = None
        self._lock = threading.Lock()

    def noop(self) -> None:
        return None

    def inc(self, n: int = 1) -> int:
        with self._lock:
            self.value += n
            return self.value

    def put(self, payload: Payload | None) -> None:
        self.data = None if payload is None else unpack(payload)

    def get(self) -> Payload | None:
        return None if self.data is None else pack(self.data)


def serve() -> None:
    """The daemon subprocess: print the URI, then serve until killed."""
    daemon = Pyro5.api.Daemon(host="127.0.0.1", port=0)
    uri = daemon.register(Bench(), "bench")
    print(uri, flush=True)
    daemon.requestLoop()


def proxy(uri: str) -> Any:
    p = Pyro5.api.Proxy(uri)
    p._pyroSerializer = "marshal"
    p._pyroBind()
    return p


def measure(uri: str, quick: bool, threads: list[int]) -> dict[str, Any]:
    out: dict[str, Any] = {"system": f"Pyro5 {Pyro5.__version__}", "errors": {}}
    n = 500 if quick else 2000
    seconds = 1.0 if quick else 2.0
    obj = proxy(uri)
    log("latency")
    out["noop_p50_us"], out["noop_p99_us"] = latency(obj.noop, n)
    out["inc_p50_us"], out["inc_p99_us"] = latency(lambda: obj.inc(1), n)

    log("calls/s")
    out["calls_per_s"] = {}
    opened: list[Any] = []

    def own_proxy() -> Callable[[], Any]:
        p = proxy(uri)
        opened.append(p)
        return p.noop

    for t in threads:
        rate, err = throughput(own_proxy, t, seconds)
        out["calls_per_s"][str(t)] = rate
        if err:
            out["errors"][f"calls_per_s.{t}"] = err
        for p in opened:
            p._pyroClaimOwnership()
            p._pyroRelease()
        opened.clear()
        log(f"  {t} threads: {rate}")

    repeats = 2 if quick else 3
    for mb in SIZES_MB:
        log(f"persist/fetch {mb} MB")
        arr = np.random.default_rng(mb).random(mb * 2**20 // 8)
        persist = []
        for i in range(repeats + 1):  # the first is a warm-up
            t0 = time.perf_counter()
            obj.put(pack(arr))
            if i:
                persist.append(time.perf_counter() - t0)
        fetch = timed_fetches(lambda: unpack(obj.get()), arr, repeats)
        log(f"inc() next to {mb} MB")
        held_inc(out, mb, lambda: obj.inc(1), quick)
        obj.put(None)
        record_bulk(out, mb, persist, fetch)
    obj._pyroRelease()
    out["notes"] = (
        "serializer marshal, arrays sent as (tobytes(), dtype, shape) and rebuilt with np.frombuffer; "
        "persist = put(array) onto the remote object, fetch = get() back; both in memory only, nothing "
        "in Pyro5 is durable (inc too); MBps = median of "
        f"{repeats} repeats after a warm-up (*_best = fastest); one proxy (connection) per client thread, "
        "default thread-pool server")
    return out


def main() -> None:
    if sys.argv[1:] == ["--serve"]:
        serve()
        return
    args = parse_args(__doc__)
    threads = [int(t) for t in args.threads.split(",")]
    out = claim_stdout()
    exit_on_sigterm()
    children = Children()
    here = Path(__file__).resolve().parent
    try:
        daemon = children.spawn([sys.executable, str(Path(__file__).resolve()), "--serve"], dict(os.environ), here,
                                stdout=subprocess.PIPE, text=True)
        uri = daemon.stdout.readline().strip()  # type: ignore[union-attr]
        if not uri.startswith("PYRO:"):
            raise RuntimeError(f"the Pyro5 daemon did not start (exit code {daemon.poll()})")
        log(f"daemon at {uri}")
        result = measure(uri, args.quick, threads)
    finally:
        children.stop()
    emit(out, result)


if __name__ == "__main__":
    main()
