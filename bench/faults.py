"""The fault suite, long version: nothing acknowledged is ever lost.

Run from the repository root (as root for the disk-full run, which mounts a small tmpfs)::

    python -m bench.faults                    # every scenario at full size
    python -m bench.faults --only kill9,moves # some of them
    python -m bench.faults --quick            # small sizes: a smoke test of the benchmark itself

Scenarios (the workloads are in ``tests/faultkit.py``, shared with ``tests/test_faults.py``):

- ``kill9``: two writers of 20-50 MB arrays (streamed persists, large arguments, deletes) into one
  backend whose log rolls every 64 MiB, so that compactions run among the writes; kill -9 at a
  random moment each round, restart, every acknowledged object read back from that backend.
- ``redis``: Redis killed and restarted empty under four calling threads, several rounds; the
  objects must answer by id and alias again without restarting the backends.
- ``diskfull``: a backend on a 200 MiB tmpfs written until the disk is full, then freed,
  written again and killed with SIGKILL.
- ``moves``: 100 moves of a counter between two backends under 6 calling threads.
- ``link``: a 2 GiB argument and a 2 GiB ``make_persistent`` to a backend behind a 50 MB/s
  throttling proxy, timed against the link's own time for the bytes (size / rate), in the same run.

Printed per scenario: rounds, acknowledged operations, lost, corrupt, and for ``kill9`` the log's
disk use against the live data after each restart. Results go to ``bench/results/faults.json``.
Targets (``--check`` exits with status 1 when one is missed): nothing acknowledged lost or corrupt,
no call error during the moves or the Redis restarts' retries, the log at most 3x the live data
after each kill -9 round, each slow-link transfer within 1.5x the link's own time.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

from bench._targets import Target, add_check_option, exit_status, report
from storage_api import _context
from storage_api._client import Client
from storage_api._deploy import _local
from tests import faultkit
from tests.conftest import Cluster

SCENARIOS = ("kill9", "redis", "diskfull", "moves", "link")
FAST_HEARTBEAT = {"heartbeat_interval": 0.25, "heartbeat_ttl": 1.0}  # backends notice a lost Redis within 0.25 s


class _Deployment:
    """A deployment in a temporary directory with an installed client, for one scenario."""

    def __init__(self, backends: int, settings: dict | None = None, prepare=None) -> None:
        self.tmp = tempfile.mkdtemp(prefix="storage-api-faults-")
        if prepare is not None:
            prepare(Path(self.tmp))
        self.cluster = Cluster(_local.start(self.tmp, backends, log_level="INFO", settings=settings))
        self.client = Client(self.cluster.dep.settings())
        _context.install(self.client)

    def close(self) -> None:
        _context.install(None)
        self.client.close()
        _local.stop(self.tmp, purge=True)


def kill9(quick: bool) -> dict:
    dep = _Deployment(1, {"log_segment_mb": 16 if quick else 64})
    try:
        t = faultkit.kill9_large_writers(dep.cluster, dep.client, rounds=3 if quick else 20,
                                         mib=(4, 12) if quick else (20, 50), say=print)
        t["compactions"] = Path(dep.cluster.backend("b0").log).read_text().count("compacted ")
    finally:
        dep.close()
    ratios = [u / max(v, 1) for u, v in zip(t["log_bytes"], t["live_bytes"])]
    t["log_to_live_max"] = round(max(ratios), 2)
    t["log_to_live_median"] = round(sorted(ratios)[len(ratios) // 2], 2)
    return t


def redis(quick: bool) -> dict:
    dep = _Deployment(2, FAST_HEARTBEAT)
    try:
        t = faultkit.empty_redis_rounds(dep.cluster, dep.client, rounds=2 if quick else 5, say=print)
    finally:
        dep.close()
    return t


def diskfull(quick: bool) -> dict:
    if os.geteuid() != 0:
        print("diskfull: skipped (mounting a tmpfs needs root)")
        return {"skipped": "needs root"}
    disk: list[Path] = []

    def prepare(d: Path) -> None:
        disk.append(faultkit.mount_tmpfs(d / "backends" / "b0", 96 if quick else 200))

    dep = _Deployment(1, prepare=prepare)
    try:
        t = faultkit.disk_full_run(dep.cluster, dep.client, disk[0], say=print)
    finally:
        dep.close()
        faultkit.unmount(disk[0])
    return t


def moves(quick: bool) -> dict:
    dep = _Deployment(2)
    try:
        t = faultkit.moves_under_calls(moves=20 if quick else 100, threads=6)
    finally:
        dep.close()
    print(f"moves: {t['moves']} moves under 6 threads, {t['calls']} calls, {t['errors']} call errors, "
          f"each increment applied once: {bool(t['final_matches'])}")
    t["lost"] = t["lost"] + t["repeated"] + (0 if t["final_matches"] else 1)
    return t


def link(quick: bool, gib: float, rate: float) -> dict:
    import numpy as np

    from tests.models import Holder

    size = int((0.0625 if quick else gib) * (1 << 30))
    dep = _Deployment(1)
    _proc, throttle = faultkit.slow_backend(dep.cluster.dep, "slow", rate)
    try:
        dep.cluster.wait_alive("slow")
        data = np.full(size // 8, 7, dtype=np.int64)
        link_s = size / rate  # the link's own time for these bytes
        t0 = time.monotonic()
        h = Holder(data)
        h.make_persistent(backend="slow")
        persist_s = time.monotonic() - t0
        t0 = time.monotonic()
        h.put(data)  # the same bytes as an argument of a mutating call
        argument_s = time.monotonic() - t0
        corrupt = int(h.total() != float(7 * (size // 8)))
    finally:
        throttle.stop()
        dep.close()
    print(f"link: {size / 2**30:.2f} GiB at {rate / 1e6:.0f} MB/s (link alone: {link_s:.1f} s): "
          f"make_persistent {persist_s:.1f} s ({persist_s / link_s:.2f}x), argument {argument_s:.1f} s "
          f"({argument_s / link_s:.2f}x)")
    return {"bytes": size, "rate": rate, "link_s": round(link_s, 2), "persist_s": round(persist_s, 2),
            "argument_s": round(argument_s, 2), "corrupt": corrupt}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--only", default=",".join(SCENARIOS), help=f"comma-separated subset of {', '.join(SCENARIOS)}")
    ap.add_argument("--quick", action="store_true", help="small sizes and few rounds")
    ap.add_argument("--link-gib", type=float, default=2.0, help="payload of the slow-link scenario (GiB)")
    ap.add_argument("--link-rate", type=float, default=50e6, help="bytes/s of the slow link")
    add_check_option(ap)
    args = ap.parse_args()
    chosen = [s.strip() for s in args.only.split(",") if s.strip()]
    unknown = [s for s in chosen if s not in SCENARIOS]
    if unknown:
        ap.error(f"unknown scenario(s) {', '.join(unknown)}; choose from {', '.join(SCENARIOS)}")
    results = {}
    for name in chosen:
        print(f"== {name}", flush=True)
        t0 = time.monotonic()
        if name == "link":
            results[name] = link(args.quick, args.link_gib, args.link_rate)
        else:
            results[name] = globals()[name](args.quick)
        results[name]["seconds"] = round(time.monotonic() - t0, 1)
    out = Path("bench/results")
    out.mkdir(parents=True, exist_ok=True)
    (out / "faults.json").write_text(json.dumps(results, indent=2))
    print("\nscenario  " + "figures")
    for name, r in results.items():
        keys = ("rounds", "acked_ops", "acked_persists", "acked_increments", "refused_storage_full", "calls",
                "lost", "corrupt", "call_errors", "errors", "log_to_live_max", "persist_s", "argument_s", "link_s")
        print(f"{name:9} " + ", ".join(f"{k}={r[k]}" for k in keys if k in r))
    targets, values = _targets(results)
    lines, met = report(targets, values)
    print("\n".join(lines))
    return exit_status(met, args.check)


def _targets(results: dict) -> tuple[list[Target], dict[str, float | None]]:
    targets: list[Target] = []
    values: dict[str, float | None] = {}
    for name, r in results.items():
        if r.get("skipped"):
            continue
        for key in ("lost", "corrupt", "errors", "other_errors"):
            if isinstance(r.get(key), (int, float)):
                targets.append(Target(f"{name} {key}", "<=", 0))
                values[f"{name} {key}"] = r[key]
        if name == "redis":
            targets.append(Target("redis unanswered", "<=", 0))
            values["redis unanswered"] = r["missing_by_id"] + r["missing_by_alias"] + r["replicas_lost"] + \
                r["new_persist_failed"] + len(r["other_errors"])
        if "log_to_live_max" in r:
            targets.append(Target(f"{name} log / live", "<=", 3.0, "x"))
            values[f"{name} log / live"] = r["log_to_live_max"]
        if "link_s" in r:
            for key in ("persist_s", "argument_s"):
                targets.append(Target(f"link {key[:-2]} / link", "<=", 1.5, "x"))
                values[f"link {key[:-2]} / link"] = r[key] / r["link_s"]
    return targets, values


if __name__ == "__main__":
    sys.exit(main())
