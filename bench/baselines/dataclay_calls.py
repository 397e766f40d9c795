"""dataClay 4.3.1 baseline for ``bench/calls.py``: call latency, calls/s and bulk transfer.

Run with the dataClay venv (``bash bench/setup_baselines.sh`` creates it)::

    bench/.venvs/dataclay/bin/python bench/baselines/dataclay_calls.py [--quick] [--threads 1,4,16]

It starts a whole dataClay deployment on 127.0.0.1, on free ports, in a temporary directory:
its own ``redis-server`` (the metadata key/value store), ``python -m dataclay.metadata`` and one
``python -m dataclay.backend``, all stopped again (process groups) however the run ends. The
services log at WARNING (at INFO the backend logs every call). The model class is
``_dc_model.Bench``, importable by the backend through PYTHONPATH.

Measured from one client process, after warm-up:

* ``noop`` / ``inc`` latency: sequential calls of a persistent object's activemethods.
* calls/s of ``noop``: 1 thread = the main thread; 4 and 16 = plain ``threading.Thread`` s sharing
  the client. dataClay keeps its session (dataset, user, token) in a ``contextvars.ContextVar`` set
  by ``Client.start()`` in the starting thread, so calls from any other thread fail with
  ``LookupError``; the error is reported instead of a number. ``calls_per_s_context_copy`` adds the
  numbers for threads that each run in a copy of the starting thread's context (a workaround we
  found in the source, not documented usage).
* persist = ``make_persistent()`` of a new ``Bench`` holding the array: the way dataClay users put
  data into the store (the state is pickled and sent to the backend in one gRPC message). dataClay
  keeps it in the backend's memory; it reaches disk only under memory pressure or at shutdown,
  so unlike ours it is not durable when the call returns.
* fetch = ``get()`` activemethod returning the array, checked equal to the original; ``inc``
  latency again while the object holds the array.

Each size (1, 16, 128 MB of float64; MB = 2**20 bytes) gets one untimed warm-up then 3 timed
repeats (2 with ``--quick``); the MBps fields are the medians, ``*_best`` the fastest.
Prints one JSON object on stdout; everything else goes to stderr.
"""

from __future__ import annotations

import contextvars
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from _common import (SIZES_MB, Children, claim_stdout, emit, exit_on_sigterm, free_port, held_inc, latency, log,
                     parse_args, record_bulk, throughput, timed_fetches, wait_port)

HERE = Path(__file__).resolve().parent


def start_dataclay(children: Children, tmp: Path) -> int:
    """Start redis, the metadata service and one backend; return the metadata service's port."""
    redis = shutil.which("redis-server") or "/usr/bin/redis-server"
    kv_port, mds_port, backend_port = free_port(), free_port(), free_port()
    storage = tmp / "storage"
    storage.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DATACLAY_", "DC_"))}
    env.update(
        PYTHONPATH=os.pathsep.join([str(HERE)] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else [])),
        DATACLAY_KV_HOST="127.0.0.1", DATACLAY_KV_PORT=str(kv_port),
        DATACLAY_METADATA_HOST="127.0.0.1", DATACLAY_METADATA_PORT=str(mds_port),
        DATACLAY_METADATA_LISTEN_ADDRESS="127.0.0.1",
        DATACLAY_BACKEND_HOST="127.0.0.1", DATACLAY_BACKEND_PORT=str(backend_port),
        DATACLAY_BACKEND_LISTEN_ADDRESS="127.0.0.1", DATACLAY_BACKEND_NAME="bench",
        DATACLAY_STORAGE_PATH=str(storage), DATACLAY_LOGLEVEL="WARNING",
    )
    log(f"redis-server on {kv_port}")
    proc = children.spawn([redis, "--port", str(kv_port), "--bind", "127.0.0.1", "--save", "",
                           "--appendonly", "no", "--dir", str(tmp)], env, tmp, stdout=sys.stderr)
    wait_port(kv_port, proc)
    log(f"dataclay.metadata on {mds_port}")
    proc = children.spawn([sys.executable, "-m", "dataclay.metadata"], env, tmp)
    wait_port(mds_port, proc, timeout=60)
    log(f"dataclay.backend on {backend_port}")
    proc = children.spawn([sys.executable, "-m", "dataclay.backend"], env, tmp)
    wait_port(backend_port, proc, timeout=60)
    return mds_port


def connect(mds_port: int, timeout: float = 60.0) -> Any:
    """Start a client and wait until the backend has registered itself."""
    from dataclay import Client

    client = Client(host="127.0.0.1", port=mds_port)
    client.start()
    deadline = time.monotonic() + timeout
    while not client.get_backends():
        if time.monotonic() > deadline:
            raise TimeoutError("the dataClay backend never registered with the metadata service")
        time.sleep(0.2)
    return client


def measure(quick: bool, threads: list[int]) -> dict[str, Any]:
    from _dc_model import Bench

    out: dict[str, Any] = {"system": "dataClay 4.3.1", "errors": {}}
    n = 500 if quick else 2000
    seconds = 1.0 if quick else 2.0
    obj = Bench()
    obj.make_persistent()
    log("latency")
    out["noop_p50_us"], out["noop_p99_us"] = latency(obj.noop, n)
    out["inc_p50_us"], out["inc_p99_us"] = latency(lambda: obj.inc(1), n)

    log("calls/s")
    out["calls_per_s"], out["calls_per_s_context_copy"] = {}, {}
    main_ctx = contextvars.copy_context()

    def in_copied_context() -> Callable[[], Any]:
        ctx = main_ctx.copy()
        return lambda: ctx.run(obj.noop)

    for t in threads:
        rate, err = throughput(lambda: obj.noop, t, seconds)
        out["calls_per_s"][str(t)] = rate
        if err:
            out["errors"][f"calls_per_s.{t}"] = err
        rate, err = throughput(in_copied_context, t, seconds)
        out["calls_per_s_context_copy"][str(t)] = rate
        if err:
            out["errors"][f"calls_per_s_context_copy.{t}"] = err
        log(f"  {t} threads: {out['calls_per_s'][str(t)]} plain, {rate} with a context copy")

    repeats = 2 if quick else 3
    for mb in SIZES_MB:
        log(f"persist/fetch {mb} MB")
        arr = np.random.default_rng(mb).random(mb * 2**20 // 8)
        persist = []
        for i in range(repeats + 1):  # the first is a warm-up
            holder = Bench(arr)
            t0 = time.perf_counter()
            holder.make_persistent()
            if i:
                persist.append(time.perf_counter() - t0)
            if i < repeats:
                holder.put(None)  # dataClay 4.3.1 has no delete: free the backend's copy
        fetch = timed_fetches(holder.get, arr, repeats)
        log(f"inc() next to {mb} MB")
        held_inc(out, mb, lambda: holder.inc(1), quick)
        holder.put(None)
        record_bulk(out, mb, persist, fetch)
    out["notes"] = (
        "persist = make_persistent() of a new object holding the array (kept in the backend's memory, "
        "not on disk, when it returns); fetch = get() activemethod returning it; MBps = median of "
        f"{repeats} repeats after a warm-up (*_best = fastest); inc is in memory only (not durable); "
        "services at log level WARNING; calls/s with 1 thread = the main thread; calls from other threads "
        "than the one that started the Client fail (session in a ContextVar): calls_per_s_context_copy "
        "runs the threads in copies of its context")
    return out


def main() -> None:
    args = parse_args(__doc__)
    threads = [int(t) for t in args.threads.split(",")]
    out = claim_stdout()
    exit_on_sigterm()
    children = Children()
    with tempfile.TemporaryDirectory(prefix="bench-dataclay-") as tmp_name:
        tmp = Path(tmp_name)
        os.chdir(tmp)  # dataClay reads a .env from the working directory
        for key in [k for k in os.environ if k.startswith(("DATACLAY_", "DC_"))]:
            del os.environ[key]
        os.environ["DATACLAY_LOGLEVEL"] = "WARNING"
        client = None
        try:
            client = connect(start_dataclay(children, tmp))
            result = measure(args.quick, threads)
        finally:
            if client is not None:
                try:
                    client.stop()
                except Exception as e:  # noqa: BLE001 - shutting down anyway
                    log(f"client.stop() failed: {e!r}")
            children.stop()
    emit(out, result)


if __name__ == "__main__":
    main()
