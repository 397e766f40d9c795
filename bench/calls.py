"""Call latency, call throughput, bulk transfer and thin-client footprint, with baselines side by side.

Run from the repository root::

    python -m bench.calls                 # storage_api + the raw-socket floor
    bash bench/setup_baselines.sh         # once: venvs for dataClay 4.3.1 and Pyro5
    python -m bench.calls --baselines     # ... plus dataClay and Pyro5, measured in the same run
    python -m bench.calls --baselines --loaded   # all of it with two busy processes per core running

Everything runs on this machine against one local backend (fsync on, as deployed), first over its
Unix socket (a client on the backend's host), then, for the latency, throughput and bulk rows,
over TCP with TLS 1.3 (a client on another host; loopback here). The reference
rows are raw moves between two Python processes: a blocking Unix-socket echo (no framing, no
pickling, no authentication, but a sleep and a wake-up per message) with both processes on one CPU
and on two, a 128 MB socket transfer into fresh memory and a 128 MB write + fdatasync (the limits
of the bulk rows), and a 4 KB write + fdatasync (the least a durable call can pay). Ratios compare
each system with storage_api measured in the same run; all systems are measured by the same loops
(``bench/baselines/_common.py``). A mutating call is also timed on objects that hold a 1, 16 and
128 MB array beside the counter it changes, and on one holding 128 MB with a replica on a second
backend (ours only: neither baseline replicates writes). ``--loaded`` runs everything under a fixed CPU load
(``bench/_load.py``: two busy processes per core, started and stopped by the benchmark) and
compares our no-op with Pyro5's, and our durable mutating call with Pyro5's in-memory one plus
one fdatasync. Results are also written to ``bench/results/calls.json`` (``calls-loaded.json``).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from . import _load
from ._targets import Target, add_check_option, exit_status
from ._targets import report as report_targets
from .baselines._common import held_inc, latency, throughput  # the same loops measure every system

ROOT = Path(__file__).resolve().parent.parent
SIZES_MB = (1, 16, 128)
TARGETS = [  # what the project promises on its 2-core machine (README, Benchmarks); keys of the result, see _get
    Target("noop_p50_us", "<=", 30.0, "us"),
    Target("inc_p50_us", "<=", 250.0, "us"),
    Target("inc_held_p50_us.128", "<=", 1000.0, "us"),
    Target("calls_per_s.16", ">=", 20_000.0, "/s"),
    Target("persist_MBps.128", ">=", 1024.0, "MB/s"),
    Target("fetch_MBps.128", ">=", 1024.0, "MB/s"),
    Target("tls.noop_p50_us", "<=", 60.0, "us"),
    Target("tls.persist_MBps.128", ">=", 800.0, "MB/s"),
    Target("tls.fetch_MBps.128", ">=", 800.0, "MB/s"),
    Target("thin_import_ms", "<=", 60.0, "ms"),
    Target("thin_rss_MB", "<=", 25.0, "MB"),
]
LOADED_TARGETS = [  # under --loaded: against Pyro5 in the same run (see relative())
    Target("vs.noop_over_pyro5", "<=", 1.0, "x"),
    Target("vs.inc_over_pyro5_fsync", "<=", 1.0, "x"),
    Target("inc_held_p50_us.128", "<=", 1000.0, "us"),
]


def _rate(fn: Any, threads: int, seconds: float) -> float:
    rate, error = throughput(lambda: fn, threads, seconds)
    if rate is None:
        raise RuntimeError(f"calls from {threads} threads failed: {error}")
    return rate


# ------------------------------------------------------------------ the floor
_ECHO = r"""
import socket, sys, os
os.sched_setaffinity(0, {int(sys.argv[1])})
if sys.argv[2] == "tcp":
    s = socket.create_server(("127.0.0.1", 0)); print(s.getsockname()[1], flush=True)
else:
    s = socket.socket(socket.AF_UNIX); s.bind("\0bench-echo-%d" % os.getpid()); s.listen(); print(os.getpid(), flush=True)
c, _ = s.accept()
if sys.argv[2] == "tcp":
    c.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
while True:
    d = c.recv(65536)
    if not d:
        break
    c.sendall(d)
"""


def echo_reference(n: int) -> dict[str, float]:
    """p50 of a raw blocking echo between two processes: over a Unix socket on one CPU and across
    two, and over TCP loopback across two (the floor of the TCP+TLS rows).

    The scheduler decides where our client and backend run; these bound what placement does to a
    round trip on this machine (waking a process on another CPU is the costly part on a VM).
    """
    import socket

    out: dict[str, float] = {}
    cpus = sorted(os.sched_getaffinity(0))
    placements = {"same_cpu": (cpus[0], cpus[0], "unix")}
    if len(cpus) > 1:
        placements["cross_cpu"] = (cpus[0], cpus[1], "unix")
        placements["tcp_cross_cpu"] = (cpus[0], cpus[1], "tcp")
    mine = os.sched_getaffinity(0)
    try:
        for name, (here, there, family) in placements.items():
            os.sched_setaffinity(0, {here})
            proc = subprocess.Popen([sys.executable, "-c", _ECHO, str(there), family], stdout=subprocess.PIPE, text=True)
            try:
                token = int(proc.stdout.readline())  # type: ignore[union-attr]
                if family == "tcp":
                    sock = socket.create_connection(("127.0.0.1", token))
                    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                else:
                    sock = socket.socket(socket.AF_UNIX)
                    sock.connect(f"\0bench-echo-{token}")
                msg = b"x" * 100

                def once() -> None:
                    sock.sendall(msg)
                    got = 0
                    while got < len(msg):
                        got += len(sock.recv(65536))

                out[name], _ = latency(once, n)
                sock.close()
            finally:
                proc.wait(timeout=10)
    finally:
        os.sched_setaffinity(0, mine)
    return out


_BULK = r"""
import socket, sys, os
s = socket.socket(socket.AF_UNIX); s.bind("\0bench-bulk-%d" % os.getpid()); s.listen(); print(os.getpid(), flush=True)
c, _ = s.accept()
src = bytearray(os.urandom(1 << 20)) * int(sys.argv[1])
while c.recv(1):
    c.sendall(src)
"""


def bulk_floor(mb: int, repeats: int) -> dict[str, float]:
    """Raw 128 MB moves: one Unix-socket transfer into fresh memory, one write + fdatasync."""
    import socket

    proc = subprocess.Popen([sys.executable, "-c", _BULK, str(mb)], stdout=subprocess.PIPE, text=True)
    n = mb << 20
    try:
        token = int(proc.stdout.readline())  # type: ignore[union-attr]
        sock = socket.socket(socket.AF_UNIX)
        sock.connect(f"\0bench-bulk-{token}")
        net = []
        for _ in range(repeats + 1):
            t = time.perf_counter()
            sock.sendall(b"x")
            buf = bytearray(n)
            view, got = memoryview(buf), 0
            while got < n:
                got += sock.recv_into(view[got:])
            net.append(time.perf_counter() - t)
            del view, buf
        sock.close()
    finally:
        proc.wait(timeout=30)
    disk = []
    data = bytearray(os.urandom(1 << 20)) * mb
    with tempfile.NamedTemporaryFile(dir=ROOT / "bench") as fh:
        for i in range(repeats + 1):
            t = time.perf_counter()
            os.pwrite(fh.fileno(), data, i * n)
            os.fdatasync(fh.fileno())
            disk.append(time.perf_counter() - t)
            os.posix_fadvise(fh.fileno(), i * n, n, os.POSIX_FADV_DONTNEED)
    return {"net": mb / statistics.median(net[1:]), "disk": mb / statistics.median(disk[1:])}


def fsync_floor(n: int) -> float:
    """p50 (us) of a 4 KB write + fdatasync into a preallocated file, as the log writes a small
    record, in the directory the benchmark's backend stores into (the system's temporary one)."""
    block = os.urandom(4096)
    samples = []
    with tempfile.NamedTemporaryFile(prefix="bench-fsync-") as fh:
        os.posix_fallocate(fh.fileno(), 0, n * len(block))
        os.fsync(fh.fileno())
        for i in range(n):
            t = time.perf_counter()
            os.pwrite(fh.fileno(), block, i * len(block))
            os.fdatasync(fh.fileno())
            samples.append(time.perf_counter() - t)
    return statistics.median(samples) * 1e6


# --------------------------------------------------------------- storage_api
def measure_ours(quick: bool, threads: list[int]) -> dict[str, Any]:
    """Everything over the backend's Unix socket (a client on its host), then the calls and bulk
    rows again over TCP with TLS 1.3 (``local_socket = false``: a client on another host)."""
    import dataclasses

    import storage_api
    from storage_api import _context
    from storage_api._client import Client

    out: dict[str, Any] = {"system": f"storage_api {storage_api.__version__}", "errors": {}}
    with tempfile.TemporaryDirectory(prefix="bench-") as tmp:
        with storage_api.local_cluster(backends=1, directory=tmp) as client:
            oid = _measure_client(out, quick, threads)
            _measure_held(out, quick)
            tls = Client(dataclasses.replace(client.settings, local_socket=False))
            previous = _context.install(tls)
            try:
                out["tls"] = {}
                _measure_client(out["tls"], quick, threads)
                out["tls"]["transport"] = type(next(iter(tls._channels.values())).fs.io).__name__
            finally:
                _context.install(previous)
                tls.close()
            out.update(thin_client(client.settings, oid))
        with storage_api.local_cluster(backends=2, directory=f"{tmp}/replicated"):
            _measure_replicated(out, quick)
    out["notes"] = ("persist = make_persistent() of a new object holding the array (on disk before the reply); "
                    "fetch = a read-only method returning it; medians after one warm-up repetition; "
                    "TCP+TLS rows: the same client code over TCP with TLS 1.3 (as from another host)")
    return out


def _measure_client(out: dict[str, Any], quick: bool, threads: list[int]) -> str:
    """Latency, calls/s and bulk rows through the installed client; return the no-op object's id."""
    from ._model import Bench

    n = 2000 if quick else 10000
    obj = Bench()
    obj.make_persistent()
    out["noop_p50_us"], out["noop_p99_us"] = latency(obj.noop, n)
    out["inc_p50_us"], out["inc_p99_us"] = latency(obj.inc, n // 2)
    out["calls_per_s"] = {str(t): _rate(obj.noop, t, 1.0 if quick else 2.0) for t in threads}
    out["persist_MBps"], out["fetch_MBps"] = {}, {}
    repeats = 3 if quick else 5
    for mb in SIZES_MB:
        arr = np.random.default_rng(mb).random(mb * 2**20 // 8)
        persist, fetch = [], []
        for _ in range(repeats):  # new objects, each on disk before make_persistent returns
            holder = Bench(arr)
            t = time.perf_counter()
            holder.make_persistent()
            persist.append(time.perf_counter() - t)
            holder.delete_persistent(keep_state=False)
        holder = Bench(arr)
        holder.make_persistent()
        for _ in range(repeats):  # the same object fetched again and again
            t = time.perf_counter()
            back = holder.get()
            fetch.append(time.perf_counter() - t)
            if not np.array_equal(back, arr):
                raise AssertionError("fetched array differs")
            del back
        holder.delete_persistent(keep_state=False)
        # the first repetition pays first-touch page faults: report the median of the rest
        out["persist_MBps"][str(mb)] = mb / statistics.median(persist[1:])
        out["fetch_MBps"][str(mb)] = mb / statistics.median(fetch[1:])
    oid = obj.getID()
    assert oid is not None
    return oid


def _measure_held(out: dict[str, Any], quick: bool) -> None:
    """``inc()`` on objects holding 1, 16 and 128 MB arrays beside the counter it changes."""
    from ._model import Bench

    for mb in SIZES_MB:
        holder = Bench(np.random.default_rng(mb).random(mb * 2**20 // 8))
        holder.make_persistent()
        held_inc(out, mb, holder.inc, quick)
        holder.delete_persistent(keep_state=False)


def _measure_replicated(out: dict[str, Any], quick: bool) -> None:
    """``inc()`` on an object holding 128 MB with a replica on a second backend: the write reaches
    the replica's log too before the reply."""
    from ._model import Bench

    holder = Bench(np.random.default_rng(0).random(128 * 2**20 // 8))
    holder.make_persistent(backend="b0")
    holder.new_replica("b1")
    holder.inc()  # a new replica's first write carries the whole state
    out["inc_replicated_p50_us"], out["inc_replicated_p99_us"] = latency(holder.inc, 20 if quick else 100)
    holder.delete_persistent(keep_state=False)


_THIN = r"""
import sys, time
class _Blocked:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("numpy", "torch", "bench"):
            raise ImportError(name)
sys.meta_path.insert(0, _Blocked())
t = time.perf_counter()
import storage_api
imported = time.perf_counter() - t
storage_api.connect(sys.argv[1])
obj = storage_api.get_by_id(sys.argv[2])
obj.noop()
rss = int(open("/proc/self/status").read().split("VmRSS:")[1].split()[0]) / 1024
print(imported * 1000, rss)
"""


def thin_client(settings: Any, oid: str) -> dict[str, float]:
    """Import time and resident memory of a client that has neither numpy nor the model, nor the
    deployment's keys: an edge device with its own credential, calling over TCP with TLS."""
    from storage_api import _credentials

    with tempfile.TemporaryDirectory(prefix="bench-thin-") as tmp:
        config = _credentials.issue(settings, "bench-thin-client", Path(tmp))
        runs = []
        for _ in range(5):
            env = {k: v for k, v in os.environ.items() if not k.startswith("STORAGE_API_")}
            env["STORAGE_API_LOCAL_SOCKET"] = "false"
            proc = subprocess.run([sys.executable, "-c", _THIN, str(config), oid], capture_output=True, text=True,
                                  env=env, cwd=ROOT, timeout=60)
            if proc.returncode:
                raise RuntimeError(proc.stderr)
            ms, rss = map(float, proc.stdout.split())
            runs.append((ms, rss))
        _credentials.revoke(settings, "bench-thin-client")
    return {"thin_import_ms": statistics.median(r[0] for r in runs), "thin_rss_MB": statistics.median(r[1] for r in runs)}


# ------------------------------------------------------------------ baselines
def run_baseline(name: str, quick: bool) -> dict[str, Any] | None:
    python = ROOT / "bench" / ".venvs" / name / "bin" / "python"
    script = ROOT / "bench" / "baselines" / f"{name}_calls.py"
    if not python.exists() or not script.exists():
        print(f"[bench] {name}: not set up (run bash bench/setup_baselines.sh)", file=sys.stderr)
        return None
    cmd = [str(python), str(script)] + (["--quick"] if quick else [])
    print(f"[bench] running {name} baseline ...", file=sys.stderr)
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=900)
    if proc.returncode:
        print(f"[bench] {name} failed:\n{proc.stderr[-2000:]}", file=sys.stderr)
        return None
    return json.loads(proc.stdout.strip().splitlines()[-1])


# --------------------------------------------------------------------- report
def _get(result: dict[str, Any], key: str) -> float | None:
    value: Any = result
    for part in key.split("."):
        value = value.get(part) if isinstance(value, dict) else None
    return float(value) if isinstance(value, (int, float)) else None


_TRANSPORT_ROWS = [
    ("read-only no-op call p50 (us)", "noop_p50_us", "lower"),
    ("read-only no-op call p99 (us)", "noop_p99_us", "lower"),
    ("mutating call p50 (us)", "inc_p50_us", "lower"),
    ("mutating call p99 (us)", "inc_p99_us", "lower"),
    ("no-op calls/s, 1 thread", "calls_per_s.1", "higher"),
    ("no-op calls/s, 4 threads", "calls_per_s.4", "higher"),
    ("no-op calls/s, 16 threads", "calls_per_s.16", "higher"),
    *[(f"persist {mb} MB (MB/s)", f"persist_MBps.{mb}", "higher") for mb in SIZES_MB],
    *[(f"fetch {mb} MB (MB/s)", f"fetch_MBps.{mb}", "higher") for mb in SIZES_MB],
]
# (label, our key, better, the baselines' key): each TCP+TLS row is compared with the same
# baseline figure as its Unix-socket row (the baselines run over plain TCP).
ROWS = [
    *[(label, key, better, key) for label, key, better in _TRANSPORT_ROWS],
    *[(f"mutating call p50, object holding {mb} MB (us)", f"inc_held_p50_us.{mb}", "lower",
       f"inc_held_p50_us.{mb}") for mb in SIZES_MB],
    ("mutating call p50, object holding 128 MB, one replica (us; no baseline replicates writes)",
     "inc_replicated_p50_us", "lower", None),
    *[(f"{label}, TCP+TLS", f"tls.{key}", better, key) for label, key, better in _TRANSPORT_ROWS],
    ("thin client import (ms)", "thin_import_ms", "lower", "thin_import_ms"),
    ("thin client RSS after a call over TCP+TLS (MB)", "thin_rss_MB", "lower", "thin_rss_MB"),
]


def _latencies(ours: dict[str, Any], others: list[dict[str, Any]]) -> tuple[float | None, ...]:
    """Our no-op and mutating p50, then Pyro5's (None where not measured)."""
    pyro = next((o for o in others if o["system"].startswith("Pyro5")), {})
    return tuple(_get(system, key) for system in (ours, pyro) for key in ("noop_p50_us", "inc_p50_us"))


def relative(ours: dict[str, Any], others: list[dict[str, Any]], floors: dict[str, float]) -> dict[str, float | None]:
    """Our no-op p50 over Pyro5's; our durable mutating p50 over Pyro5's in-memory one plus one
    fdatasync (what durability must cost at least); None without Pyro5 in the run."""
    noop, inc, p_noop, p_inc = _latencies(ours, others)
    return {"noop_over_pyro5": noop / p_noop if noop and p_noop else None,
            "inc_over_pyro5_fsync": inc / (p_inc + floors["fsync_us"]) if inc and p_inc else None}


def _relative_lines(ours: dict[str, Any], others: list[dict[str, Any]], floors: dict[str, float]) -> list[str]:
    noop, inc, p_noop, p_inc = _latencies(ours, others)
    vs = relative(ours, others, floors)
    if None in vs.values():
        return ["no-op and mutating p50 against Pyro5's: not measured (run with --baselines, after "
                "bash bench/setup_baselines.sh)"]
    fsync = floors["fsync_us"]
    return [f"no-op p50: ours {noop:,.1f} us, Pyro5 {p_noop:,.1f} us ({vs['noop_over_pyro5']:.2f}x Pyro5's)",
            f"mutating p50: ours {inc:,.1f} us (durable), Pyro5 {p_inc:,.1f} us (in memory) + one fdatasync "
            f"{fsync:,.1f} us = {p_inc + fsync:,.1f} us ({vs['inc_over_pyro5_fsync']:.2f}x that)"]


def report(ours: dict[str, Any], others: list[dict[str, Any]], floors: dict[str, float], loaded: str = "") -> str:
    head = ["metric", ours["system"]] + [f"{o['system']} (x ours)" for o in others]
    lines = [" | ".join(head), " | ".join("---" for _ in head)]
    for label, key, better, base_key in ROWS:
        mine = _get(ours, key)
        cells = [label, "-" if mine is None else f"{mine:,.1f}"]
        for other in others:
            if base_key is None:  # a row only we measure
                cells.append("-")
                continue
            theirs = _get(other, base_key)
            if theirs is None or mine is None:
                errors = other.get("errors", {})
                err = errors.get(base_key) or next((v for k, v in errors.items()
                                                    if k.startswith(base_key.split(".")[0] + ".")
                                                    and k.split(".")[-1] == base_key.split(".")[-1]), None)
                cells.append("failed: " + err[:70] if err else "-")
                continue
            ratio = (theirs / mine) if better == "lower" else (mine / theirs if theirs else float("inf"))
            cells.append(f"{theirs:,.1f} ({ratio:.1f}x better)" if ratio >= 1 else f"{theirs:,.1f} ({1/ratio:.1f}x worse)")
        lines.append(" | ".join(cells))
    lines.append("")
    for system in (ours, *others):
        if system.get("notes"):
            lines.append(f"{system['system']}: {system['notes']}")
    lines.append("")
    lines.append(f"reference (raw blocking echo between two processes, p50): Unix socket "
                 f"{floors.get('same_cpu', 0):.1f} us on one CPU, {floors.get('cross_cpu', 0):.1f} us across two "
                 f"(it sleeps in recv and pays the wake-ups our polling avoids); over TCP loopback across two "
                 f"{floors.get('tcp_cross_cpu', 0):.1f} us (no TLS)")
    lines.append(f"reference (raw 128 MB moves): Unix socket into fresh memory {floors['net_MBps']:,.0f} MB/s, "
                 f"write + fdatasync {floors['disk_MBps']:,.0f} MB/s")
    lines.append(f"reference (one durable small write): 4 KB write + fdatasync p50 {floors['fsync_us']:,.1f} us")
    lines.append("")
    lines += [*([loaded] if loaded else []), *_relative_lines(ours, others, floors), ""]
    lines += report_targets(*_targets(ours, others, floors, loaded))[0]
    return "\n".join(lines)


def _targets(ours: dict[str, Any], others: list[dict[str, Any]], floors: dict[str, float],
             loaded: str) -> tuple[list[Target], dict[str, Any], str]:
    """The targets of the mode, their values and their heading."""
    values = {**ours, "vs": relative(ours, others, floors)}
    targets = LOADED_TARGETS if loaded else TARGETS
    return targets, {t.key: _get(values, t.key) for t in targets}, loaded


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_check_option(ap)
    ap.add_argument("--quick", action="store_true", help="fewer iterations")
    ap.add_argument("--baselines", action="store_true", help="also run dataClay 4.3.1 and Pyro5")
    ap.add_argument("--threads", default="1,4,16")
    ap.add_argument("--loaded", action="store_true",
                    help=f"run everything under a CPU load ({_load.PER_CORE} busy processes per core)")
    args = ap.parse_args()
    threads = [int(t) for t in args.threads.split(",")]
    if args.loaded:
        with _load.cpu_load() as busy:
            return run(args, threads, _load.describe(busy))
    return run(args, threads, "")


def run(args: argparse.Namespace, threads: list[int], loaded: str) -> int:
    n = 2000 if args.quick else 10000
    print("[bench] floor: raw socket echo, fdatasync", file=sys.stderr)
    floors = echo_reference(n)
    bulk = bulk_floor(128, 3 if args.quick else 5)
    floors.update(net_MBps=bulk["net"], disk_MBps=bulk["disk"], fsync_us=fsync_floor(200 if args.quick else 1000))
    print("[bench] storage_api ...", file=sys.stderr)
    ours = measure_ours(args.quick, threads)
    others = [r for r in (run_baseline(name, args.quick) for name in ("dataclay", "pyro5")) if r] if args.baselines else []
    text = report(ours, others, floors, loaded)
    print(text)
    out = ROOT / "bench" / "results"
    out.mkdir(exist_ok=True)
    name = "calls-loaded" if loaded else "calls"
    (out / f"{name}.json").write_text(json.dumps({"ours": ours, "baselines": others, "floor_p50_us": floors,
                                                  "relative": relative(ours, others, floors), "loaded": loaded,
                                                  "machine": os.uname().nodename, "time": time.time()}, indent=2))
    (out / f"{name}.md").write_text(text + "\n")
    return exit_status(report_targets(*_targets(ours, others, floors, loaded))[1], args.check)


if __name__ == "__main__":
    sys.exit(main())
