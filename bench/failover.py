"""Failover time: kill -9 of an object's primary until the first successful call, over N kills.

Run from the repository root::

    python -m bench.failover              # 20 kills with the default heartbeat (1 s, ttl 3 s)
    python -m bench.failover --fast       # ... and again with a 0.2 s heartbeat (ttl 0.6 s)

A local deployment with two backends holds one counter with a replica. Each round kills the
primary with SIGKILL while a client keeps calling ``inc()``; the time from the kill to the first
call that succeeds is the failover time (the client retries; the replica is promoted once the dead
primary's heartbeat has expired in Redis). The killed backend is restarted (it drops its stale
copy) and becomes the new replica, and the next round kills the other one. After every round the
counter must equal the number of acknowledged calls. Results go to ``bench/results/failover.json``.
Target: every failover within the heartbeat's ttl plus the longest retry pause (``retry_backoff_cap``);
``--check`` exits with status 1 when one took longer.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import tempfile
import sys
import time
from pathlib import Path

from bench._targets import Target, add_check_option, exit_status, report

from storage_api import _context
from storage_api._client import Client
from storage_api._config import Settings
from storage_api._deploy import _local


def _restart(dep: _local.Deployment, name: str) -> None:
    b = next(b for b in dep.backends if b.name == name)
    cmd = _local._backend_cmd(dep.config_path, Path(b.storage_dir), name, True, "WARNING")
    b.pid = _local._spawn(cmd, Path(b.log)).pid
    dep.save()


def _wait_alive(client: Client, dep: _local.Deployment, name: str) -> None:
    pid = next(b.pid for b in dep.backends if b.name == name)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if any(i.name == name and i.alive and i.pid == pid for i in client.backends()):
            return
        time.sleep(0.02)
    raise TimeoutError(f"{name} did not come back")


def run(kills: int, interval: float, ttl: float) -> dict:
    from bench._model import Bench

    with tempfile.TemporaryDirectory() as tmp:
        dep = _local.start(tmp, 2, log_level="WARNING",
                           settings={"heartbeat_interval": interval, "heartbeat_ttl": ttl})
        client = Client(dep.settings())
        _context.install(client)
        try:
            obj = Bench()
            obj.make_persistent(backend="b0")
            obj.new_replica("b1")
            acked = 0
            times = []
            names = {b.id: b.name for b in client.backends()}
            for i in range(kills):
                primary = names[client.placement(obj.getID()).backend]
                pid = next(b.pid for b in dep.backends if b.name == primary)
                obj.inc()
                acked += 1
                os.kill(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
                t0 = time.monotonic()
                obj.inc()  # retries through the failover
                times.append(time.monotonic() - t0)
                acked += 1
                value = obj.inc() - 1
                acked += 1
                if value != acked - 1:
                    raise AssertionError(f"round {i}: counter {value + 1}, acknowledged {acked}")
                _restart(dep, primary)
                _wait_alive(client, dep, primary)
                obj.new_replica(primary)
                print(f"  kill {i + 1:2d}: {primary} -> {names[client.placement(obj.getID()).backend]}"
                      f" in {times[-1] * 1000:7.1f} ms", flush=True)
        finally:
            _context.install(None)
            client.close()
            _local.stop(tmp)
    times.sort()
    return {
        "heartbeat_interval_s": interval,
        "heartbeat_ttl_s": ttl,
        "kills": kills,
        "median_ms": statistics.median(times) * 1000,
        "p90_ms": times[int(0.9 * (len(times) - 1))] * 1000,
        "min_ms": times[0] * 1000,
        "max_ms": times[-1] * 1000,
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_check_option(ap)
    ap.add_argument("--kills", type=int, default=20)
    ap.add_argument("--fast", action="store_true", help="also measure with a 0.2 s heartbeat (ttl 0.6 s)")
    args = ap.parse_args()
    configs = [(1.0, 3.0)] + ([(0.2, 0.6)] if args.fast else [])
    results = []
    targets: list[Target] = []
    values: dict[str, float] = {}
    for interval, ttl in configs:
        print(f"heartbeat every {interval} s, ttl {ttl} s: {args.kills} kills of the primary")
        r = run(args.kills, interval, ttl)
        results.append(r)
        print(f"  failover (kill -> first successful call): median {r['median_ms']:.0f} ms, "
              f"p90 {r['p90_ms']:.0f} ms, min {r['min_ms']:.0f} ms, max {r['max_ms']:.0f} ms "
              f"(bound: ttl {ttl * 1000:.0f} ms + retry backoff)")
        key = f"max_ms_ttl_{ttl:g}s"
        targets.append(Target(key, "<=", (ttl + Settings().retry_backoff_cap) * 1000, "ms"))
        values[key] = r["max_ms"]
    out = Path("bench/results")
    out.mkdir(parents=True, exist_ok=True)
    (out / "failover.json").write_text(json.dumps(results, indent=2))
    lines, met = report(targets, values)
    print("\n".join(lines))
    return exit_status(met, args.check)


if __name__ == "__main__":
    sys.exit(main())
