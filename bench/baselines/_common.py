"""Helpers shared by the baseline harnesses (``dataclay_calls.py`` and ``pyro5_calls.py``).

Both run in their own virtual environment with only the system under test and numpy, so this
module uses the standard library alone. The measuring loops mirror ``bench/calls.py``:
latency = warm-up then one timed call at a time; throughput = N threads calling for a fixed time.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import re
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import IO, Any

SIZES_MB = (1, 16, 128)  # MB = 2**20 bytes


def parse_args(doc: str | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="fewer calls and repeats (all sizes are kept)")
    ap.add_argument("--threads", default="1,4,16", help="client thread counts for calls/s (default 1,4,16)")
    return ap.parse_args()


def claim_stdout() -> IO[str]:
    """Keep the real stdout for the final JSON and send everything else (ours, libraries', children's) to stderr."""
    sys.stdout.flush()
    real = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    return real


def log(msg: str) -> None:
    print(f"[baseline] {msg}", file=sys.stderr, flush=True)


def exit_on_sigterm() -> None:
    """Turn SIGTERM into SystemExit so that ``finally`` blocks stop the children."""
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_port(port: int, proc: subprocess.Popen[Any], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{proc.args!r} exited with {proc.returncode} before listening on {port}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"nothing listening on 127.0.0.1:{port} after {timeout:.0f} s")


def _die_with_parent() -> None:  # runs in the child between fork and exec
    try:
        ctypes.CDLL(None).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG: killed if the harness dies
    except (OSError, AttributeError):
        pass


class Children:
    """Subprocesses, each in its own process group, all stopped (group-wide) on ``stop()``."""

    def __init__(self) -> None:
        self.procs: list[subprocess.Popen[Any]] = []

    def spawn(self, cmd: Sequence[str], env: dict[str, str], cwd: Path, **kw: Any) -> subprocess.Popen[Any]:
        proc = subprocess.Popen(list(cmd), env=env, cwd=cwd, start_new_session=True,
                                preexec_fn=_die_with_parent, **kw)
        self.procs.append(proc)
        return proc

    def stop(self, grace: float = 10.0) -> None:
        for proc in reversed(self.procs):  # last started first
            self._signal(proc, signal.SIGTERM)
            try:
                proc.wait(timeout=grace)
            except subprocess.TimeoutExpired:
                log(f"{proc.args[:3]!r} ignored SIGTERM; killing it")
            self._signal(proc, signal.SIGKILL)  # the rest of its group, if any
            proc.wait()
        self.procs.clear()

    @staticmethod
    def _signal(proc: subprocess.Popen[Any], sig: int) -> None:
        try:
            os.killpg(proc.pid, sig)
        except (ProcessLookupError, PermissionError):
            pass


def describe(e: BaseException) -> str:
    """``Type: message`` without memory addresses (they only make report cells longer)."""
    return re.sub(r" at 0x[0-9a-fA-F]+", "", f"{type(e).__name__}: {e}")[:500]


def _percentiles_us(samples: list[float]) -> tuple[float, float]:
    samples = sorted(samples)
    return samples[len(samples) // 2] * 1e6, samples[int(len(samples) * 0.99)] * 1e6


def latency(fn: Callable[[], Any], n: int) -> tuple[float, float]:
    """p50 and p99 in microseconds of ``n`` sequential calls, after a warm-up."""
    for _ in range(min(500, n)):
        fn()
    samples = []
    for _ in range(n):
        t = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - t)
    return _percentiles_us(samples)


def throughput(make_caller: Callable[[], Callable[[], Any]], threads: int, seconds: float) -> tuple[float | None, str | None]:
    """Calls/s of ``threads`` threads calling for ``seconds``; or (None, "Type: message") if a call raised.

    ``make_caller`` runs inside each thread before the clock starts and returns what it calls
    (so a system can give each thread its own connection). One thread means the calling thread
    itself, as a single-threaded client would run; more threads are all new ``threading.Thread`` s.
    """
    if threads == 1:
        return _throughput_here(make_caller, seconds)
    ready = threading.Barrier(threads + 1)
    go = threading.Event()
    counts = [0] * threads
    errors: list[BaseException] = []
    stop_at = 0.0

    def work(i: int) -> None:
        try:
            call = make_caller()
        except Exception as e:  # noqa: BLE001 - reported, not hidden
            errors.append(e)
            ready.wait()
            return
        ready.wait()
        go.wait()
        n = 0
        try:
            while time.monotonic() < stop_at:
                call()
                n += 1
        except Exception as e:  # noqa: BLE001 - reported, not hidden
            errors.append(e)
        counts[i] = n

    ts = [threading.Thread(target=work, args=(i,), daemon=True) for i in range(threads)]
    for t in ts:
        t.start()
    ready.wait()
    start = time.monotonic()
    stop_at = start + seconds
    go.set()
    for t in ts:
        t.join(seconds + 60)
    elapsed = time.monotonic() - start
    if errors:
        return None, f"{describe(errors[0])} ({len(errors)} of {threads} threads failed)"
    return sum(counts) / elapsed, None


def _throughput_here(make_caller: Callable[[], Callable[[], Any]], seconds: float) -> tuple[float | None, str | None]:
    try:
        call = make_caller()
        n, start = 0, time.monotonic()
        stop_at = start + seconds
        while time.monotonic() < stop_at:
            call()
            n += 1
        return n / (time.monotonic() - start), None
    except Exception as e:  # noqa: BLE001 - reported, not hidden
        return None, describe(e)


def held_inc(out: dict[str, Any], mb: int, inc: Callable[[], Any], quick: bool) -> None:
    """p50/p99 of ``inc()`` on an object that also holds an ``mb`` MB array, in ``out["inc_held_p50_us"][mb]``
    (``..._p99_us``): what a small change costs next to large state."""
    p50, p99 = latency(inc, 20 if quick else 100)
    out.setdefault("inc_held_p50_us", {})[str(mb)] = p50
    out.setdefault("inc_held_p99_us", {})[str(mb)] = p99


def summarize_MBps(mb: int, seconds: list[float]) -> tuple[float, float]:
    """(median, best) MB/s of timed repeats."""
    return mb / statistics.median(seconds), mb / min(seconds)


def timed_fetches(get: Callable[[], Any], expected: Any, repeats: int) -> list[float]:
    """Durations of ``repeats`` calls of ``get`` after one warm-up, each result checked equal to ``expected``."""
    import numpy as np  # only the harnesses' venvs call this, and they have numpy

    times = []
    for i in range(repeats + 1):
        t0 = time.perf_counter()
        back = get()
        if i:
            times.append(time.perf_counter() - t0)
        if not np.array_equal(back, expected):
            raise AssertionError(f"fetched array of {expected.nbytes} bytes differs from the original")
        del back
    return times


def record_bulk(out: dict[str, Any], mb: int, persist: list[float], fetch: list[float]) -> None:
    """Store the persist/fetch medians and bests of one size in ``out``."""
    for name in ("persist_MBps", "persist_MBps_best", "fetch_MBps", "fetch_MBps_best"):
        out.setdefault(name, {})
    out["persist_MBps"][str(mb)], out["persist_MBps_best"][str(mb)] = summarize_MBps(mb, persist)
    out["fetch_MBps"][str(mb)], out["fetch_MBps_best"][str(mb)] = summarize_MBps(mb, fetch)


def emit(out: IO[str], result: dict[str, Any]) -> None:
    out.write(json.dumps(result) + "\n")
    out.flush()
