"""Figures 11-12 with a network in the way: weak-scaling Cascade SVM (apps/csvm.py) over 1, 2 and 4
emulated nodes of two processors each, with and without the store, in one run (root only).

    python bench/csvm_scaling.py [--rate 20mbit] [--nodes 1 2 4] [--sizes 128:8 1024:1] [--cores-per-processor 1]

Nodes are emulated hosts (``slurm/netns_nodes.sh``, through ``tests/netkit.py``) whose links are
shaped to ``--rate`` each way. The master (the app), Redis and the Dask scheduler run on this
machine's side of the bridge, as on a cluster's login or master node; each node runs one ``dask
worker`` of two processes (one thread each) and, for the runs with the store, two backends (one
per processor): the executor runs the tasks on blocks in the backend holding them and every other
task on the Dask workers, so without the store all of them run there. A processor holds
``cores-per-processor x blocks-per-core`` blocks (``--sizes POINTS:BLOCKS_PER_CORE``; the paper's 8
blocks of 128 points or 1 block of 1024 points per core). Cascade arity 2, 5 iterations. Before
the timed runs of each node count, one small run with and one without the store, untimed, have
the new backends and workers import their libraries (as COMPSs' workers have them loaded).

Per run: the execution time (the fit, as the paper's figures), the bytes the executor counts as
moved between processes during the fit, and the bytes that crossed the nodes' links during the
whole run (each link's counters, both ways: a byte from node to node crosses two links and counts
twice; the master's side has no link of its own). Writes ``bench/results/csvm_scaling.json`` and
``.png`` (execution time and bytes over the links against processors, store and no store, for each
block size) and prints both side by side with their ratios. Target: at the largest node count the
store moves at least 10x fewer bytes over the links for each block size; the execution-time
ratio (no store / store) is reported, not targeted. ``--check`` exits with status 1 when a
target is missed.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
OUT = ROOT / "bench" / "results"

from bench._targets import Target, add_check_option, exit_status, report  # noqa: E402 - after sys.path


def link_bytes(nodes: list) -> int:
    """Bytes the links of ``nodes`` carried so far, both ways (their host ends' counters)."""
    total = 0
    for node in nodes:
        for way in ("rx_bytes", "tx_bytes"):
            total += int(Path(f"/sys/class/net/{node.name}/statistics/{way}").read_text())
    return total


def run_app(scheduler: str, processors: int, ppb: int, bpc: int, cpp: int, storage: bool, config: str | None,
            nodes: list, iterations: int, arity: int) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        figures = Path(tmp) / "f.json"
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        env.pop("STORAGE_API_CONFIG", None)
        if config:
            env["STORAGE_API_CONFIG"] = config
        cmd = [sys.executable, "-m", "workflows.executor", "--scheduler", scheduler, "apps/csvm.py",
               "--processors", str(processors), "--cores-per-processor", str(cpp), "--blocks-per-core", str(bpc),
               "--points-per-block", str(ppb), "--arity", str(arity), "--iterations", str(iterations),
               "--storage" if storage else "--no-storage", "--json", str(figures)]
        before = link_bytes(nodes)
        started = time.monotonic()
        proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
        if proc.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd)} failed:\n{proc.stderr[-3000:]}")
        out = json.loads(figures.read_text())
        out["link_bytes"] = link_bytes(nodes) - before
        out["wall"] = time.monotonic() - started
        return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_check_option(p)
    p.add_argument("--rate", default="20mbit", help="each node's link, each way (a tc rate; default 20mbit)")
    p.add_argument("--nodes", type=int, nargs="+", default=[1, 2, 4], help="node counts (default 1 2 4)")
    p.add_argument("--sizes", nargs="+", default=["128:8", "1024:1"], metavar="POINTS:BLOCKS_PER_CORE",
                   help="block sizes and blocks per core (default 128:8 1024:1, the paper's)")
    p.add_argument("--cores-per-processor", type=int, default=1,
                   help="cores each processor stands for (sizes only: each processor gets one process)")
    p.add_argument("--iterations", type=int, default=5)
    p.add_argument("--arity", type=int, default=2)
    args = p.parse_args()
    sizes = [tuple(int(x) for x in s.split(":")) for s in args.sizes]
    from tests import netkit

    problem = netkit.unavailable()
    if problem:
        print(f"csvm_scaling: {problem}", file=sys.stderr)
        return 2
    from storage_api._deploy import _local
    from storage_api._deploy._local import Host

    kit = netkit.make(max(args.nodes), args.rate)
    rows = []
    try:
        print(f"{max(args.nodes)} emulated nodes, links at {args.rate} each way; master, Redis and the Dask "
              f"scheduler at {kit.bridge}", flush=True)
        for n in args.nodes:
            nodes = kit.nodes[:n]
            processors = 2 * n
            with tempfile.TemporaryDirectory() as tmp:
                dask = netkit.DaskCluster(nodes, kit.bridge, 2, Path(tmp))
                dep = None
                try:
                    dep = _local.start(Path(tmp) / "dep", processors, fsync=False, log_level="WARNING",
                                       redis_host=Host(kit.bridge), backend_hosts=[node.host() for node in nodes])
                    for storage in (True, False):  # untimed: the backends and workers import dislib first
                        run_app(dask.address, processors, 128, 1, 1, storage, str(dep.config_path), nodes, 1, 2)
                    for ppb, bpc in sizes:
                        common = (dask.address, processors, ppb, bpc, args.cores_per_processor)
                        with_store = run_app(*common, True, str(dep.config_path), nodes, args.iterations, args.arity)
                        without = run_app(*common, False, None, nodes, args.iterations, args.arity)
                        row = {"nodes": n, "processors": processors, "points_per_block": ppb,
                               "blocks": with_store["blocks"], "rate": args.rate,
                               "exec_store": with_store["execution_time"], "exec_plain": without["execution_time"],
                               "init_store": with_store["initialization_time"],
                               "init_plain": without["initialization_time"],
                               "link_store": with_store["link_bytes"], "link_plain": without["link_bytes"],
                               "moved_store": with_store["bytes_exec"], "moved_plain": without["bytes_exec"],
                               "tasks_store": with_store["tasks_by_node"], "tasks_plain": without["tasks_by_node"],
                               "score_store": with_store["score"], "score_plain": without["score"]}
                        row["link_ratio"] = row["link_plain"] / max(1, row["link_store"])
                        row["moved_ratio"] = row["moved_plain"]["total"] / max(1, row["moved_store"]["total"])
                        row["time_ratio"] = row["exec_plain"] / row["exec_store"]
                        rows.append(row)
                        print(f"nodes={n} P={processors} ppb={ppb:5d} blocks={row['blocks']:3d}  fit: store "
                              f"{row['exec_store']:6.2f} s  no store {row['exec_plain']:6.2f} s (no store / store "
                              f"x{row['time_ratio']:.2f})  over the links: store {row['link_store']:>11,} B  no store "
                              f"{row['link_plain']:>11,} B ({row['link_ratio']:.1f}x fewer)  executor's count "
                              f"{row['moved_ratio']:.1f}x fewer", flush=True)
                finally:
                    if dep is not None:
                        _local.stop(dep.dir)
                    dask.stop()
    finally:
        kit.close()
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "csvm_scaling.json").write_text(json.dumps(rows, indent=2))
    plot(rows, args.rate)
    targets, values = [], {}
    top = max(args.nodes)
    for r in rows:
        if r["nodes"] == top:
            name = f"{r['nodes']}nodes_{r['points_per_block']}pts_fewer_link_bytes"
            targets.append(Target(name, ">=", 10.0, "x"))
            values[name] = r["link_ratio"]
    lines, met = report(targets, values)
    print("\n".join(lines))
    return exit_status(met, args.check)


def plot(rows: list[dict], rate: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sizes = sorted({r["points_per_block"] for r in rows})
    fig, axes = plt.subplots(len(sizes), 2, figsize=(10, 3.6 * len(sizes)), squeeze=False)
    for row_axes, ppb in zip(axes, sizes):
        sel = [r for r in rows if r["points_per_block"] == ppb]
        ps = [r["processors"] for r in sel]
        row_axes[0].plot(ps, [r["exec_store"] for r in sel], "o-", label="with the store")
        row_axes[0].plot(ps, [r["exec_plain"] for r in sel], "s--", label="without (Dask workers)")
        row_axes[0].set(xlabel="processors", ylabel="execution time (s)", xticks=ps,
                        title=f"CSVM weak scaling, {ppb}-point blocks, links at {rate}")
        row_axes[1].plot(ps, [r["link_store"] for r in sel], "o-", label="with the store")
        row_axes[1].plot(ps, [r["link_plain"] for r in sel], "s--", label="without (Dask workers)")
        row_axes[1].set(xlabel="processors", ylabel="bytes over the links (whole run)", yscale="log", xticks=ps)
        for a in row_axes:
            a.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(OUT / "csvm_scaling.png")


if __name__ == "__main__":
    sys.exit(main())
