"""The store across emulated hosts: calls and transfers over shaped links (root only).

Run from the repository root, as root::

    python -m bench.net                      # links at 1gbit, then 100mbit
    python -m bench.net --rates 1gbit --mb 64

Three emulated nodes (``slurm/netns_nodes.sh``, through ``tests/netkit.py``): the client on n1,
backend b0 on n2 and b1 on n3, Redis on this machine's side of the bridge; every link shaped to
the rate, both ways. For each rate it measures one TCP stream from n1 to n2 and back (the floor:
what the link carries), then, from a client on n1, over TLS: the no-op and durable call latency
(p50), persisting an array of ``--mb`` MB on b0 and fetching it back (MB/s), and the same array
written with a replica on b1 (the primary ships it to n3 before replying: twice the link time).
Results go to ``bench/results/net.json``. Target: a fetch at least 80% of the TCP stream's rate
(the link is what limits it); a persist also includes its durable write (the disk's time), so it
gets no target. ``--check`` exits with status 1 when one is missed.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

from bench._targets import Target, add_check_option, exit_status, report

RESULTS = Path("bench/results")


def client(mb: int) -> dict[str, float]:
    """The client's part, on n1 (``--client``): its figures as a dict."""
    import numpy as np

    import storage_api
    from bench._model import Bench

    storage_api.connect()
    data = np.random.default_rng(0).integers(0, 255, size=mb << 20, dtype=np.uint8)
    small = Bench()
    small.make_persistent(backend="b0")

    def p50(call, n: int = 300) -> float:
        times = []
        for _ in range(n):
            t = time.perf_counter()
            call()
            times.append(time.perf_counter() - t)
        return statistics.median(times) * 1e6

    out = {"noop_p50_us": p50(small.noop), "inc_p50_us": p50(small.inc)}
    big = Bench(data)
    t = time.perf_counter()
    big.make_persistent(backend="b0")
    out["persist_mb_s"] = mb / (time.perf_counter() - t)
    t = time.perf_counter()
    got = big.get()
    out["fetch_mb_s"] = mb / (time.perf_counter() - t)
    assert np.array_equal(got, data)
    del got
    big.new_replica("b1")
    t = time.perf_counter()
    big.put(data[::-1].copy())
    out["put_replicated_mb_s"] = mb / (time.perf_counter() - t)
    big.delete_persistent(keep_state=False)
    small.delete_persistent(keep_state=False)
    return out


def measure(rates: list[str], mb: int) -> list[dict]:
    from storage_api._deploy import _local
    from tests import netkit

    nodes = netkit.make(3, rates[0])
    results = []
    try:
        with tempfile.TemporaryDirectory() as tmp:
            dep = _local.start(tmp, 2, log_level="WARNING", redis_host=_local.Host(nodes.bridge),
                               backend_hosts=[nodes[1].host(), nodes[2].host()])
            try:
                for rate in rates:
                    nodes.shape(rate)
                    row: dict = {"rate": rate, "mb": mb}
                    row["tcp_up_mb_s"] = netkit.throughput(nodes, nodes[0], nodes[1], mb << 20) / 1e6
                    row["tcp_down_mb_s"] = netkit.throughput(nodes, nodes[1], nodes[0], mb << 20) / 1e6
                    proc = nodes.run(nodes[0], ["env", f"STORAGE_API_CONFIG={dep.config_path}", sys.executable, "-m",
                                                "bench.net", "--client", "--mb", str(mb)],
                                     capture_output=True, text=True, timeout=600)
                    if proc.returncode != 0:
                        raise RuntimeError(f"the client on {nodes[0].name} failed:\n{proc.stderr[-3000:]}")
                    row.update(json.loads(proc.stdout.strip().splitlines()[-1]))
                    results.append(row)
                    print(f"  {rate:>8}: TCP {row['tcp_up_mb_s']:6.1f} up / {row['tcp_down_mb_s']:6.1f} down MB/s; "
                          f"persist {row['persist_mb_s']:6.1f}, fetch {row['fetch_mb_s']:6.1f}, "
                          f"put with a replica {row['put_replicated_mb_s']:6.1f} MB/s; "
                          f"no-op p50 {row['noop_p50_us']:.0f} us, inc p50 {row['inc_p50_us']:.0f} us", flush=True)
            finally:
                _local.stop(tmp)
    finally:
        nodes.close()
    return results


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_check_option(ap)
    ap.add_argument("--rates", default="1gbit,100mbit", help="link rates, tc syntax, comma-separated")
    ap.add_argument("--mb", type=int, default=32, help="size of the transferred array (MB)")
    ap.add_argument("--client", action="store_true", help=argparse.SUPPRESS)  # the part that runs on n1
    args = ap.parse_args()
    if args.client:
        print(json.dumps(client(args.mb)))
        return 0
    from tests import netkit

    why = netkit.unavailable()
    if why:
        print(f"bench.net: {why}", file=sys.stderr)
        return 2
    rates = [r.strip() for r in args.rates.split(",") if r.strip()]
    print(f"client on n1, b0 on n2, b1 on n3; {args.mb} MB arrays; links shaped both ways")
    results = measure(rates, args.mb)
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "net.json").write_text(json.dumps(results, indent=2))
    targets, values = [], {}
    for row in results:
        key = f"fetch_vs_tcp_{row['rate']}"
        targets.append(Target(key, ">=", 80, "%"))
        values[key] = 100 * row["fetch_mb_s"] / row["tcp_down_mb_s"]
    lines, met = report(targets, values)
    print("\n".join(lines))
    return exit_status(met, args.check)


if __name__ == "__main__":
    sys.exit(main())
