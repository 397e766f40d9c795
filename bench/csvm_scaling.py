"""Weak scaling of apps/csvm.py on this machine: 1 and 2 backends (processors), both block sizes,
with the store (--storage, blocks on the backends) and without it (the same number of local workers).

    python bench/csvm_scaling.py [--blocks-per-core-small 8] [--blocks-per-core-big 1] [--cores-per-processor 4]

One processor = one backend (--storage) or one local worker (--no-storage), one real core each; it
holds cores-per-processor x blocks-per-core blocks (the paper's 8 blocks of 128 points or 1 block of
1024 points per core). Cascade arity 2, 5 iterations.
Blocks are placed contiguously (the app's default); each configuration also runs with round-robin
blocks. Writes bench/results/csvm_scaling.json and .png; prints execution time and bytes moved
side by side, with their ratios. Targets, for each size with contiguous blocks: the store moves at
least 10x fewer bytes, and its execution time is at most 1.25x the time without it; ``--check``
exits with status 1 when one is missed.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
OUT = ROOT / "bench" / "results"

from bench._targets import Target, add_check_option, exit_status, report  # noqa: E402 - after sys.path


def run_app(processors: int, ppb: int, bpc: int, cpp: int, storage: bool, config: str | None,
            placement: str = "contiguous") -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        figures = Path(tmp) / "f.json"
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        if config:
            env["STORAGE_API_CONFIG"] = config
        cmd = [sys.executable, "-m", "workflows.executor", "--workers", str(processors), "apps/csvm.py",
               "--processors", str(processors), "--cores-per-processor", str(cpp), "--blocks-per-core", str(bpc),
               "--points-per-block", str(ppb), "--arity", "2", "--storage" if storage else "--no-storage", "--placement", placement,
               "--json", str(figures)]
        subprocess.run(cmd, check=True, cwd=ROOT, env=env, capture_output=True, text=True)
        return json.loads(figures.read_text())


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_check_option(p)
    p.add_argument("--blocks-per-core-small", type=int, default=8)
    p.add_argument("--blocks-per-core-big", type=int, default=1)
    p.add_argument("--cores-per-processor", type=int, default=4,
                   help="cores each processor stands for (sizes only: each processor gets one real core)")
    args = p.parse_args()
    from storage_api._deploy import _local

    rows = []
    for processors in (1, 2):
        with tempfile.TemporaryDirectory() as tmp:
            dep = _local.start(Path(tmp) / "dep", processors, fsync=False, log_level="WARNING")
            try:
                for ppb, bpc in ((128, args.blocks_per_core_small), (1024, args.blocks_per_core_big)):
                    with_store = run_app(processors, ppb, bpc, args.cores_per_processor, True, str(dep.config_path))
                    without = run_app(processors, ppb, bpc, args.cores_per_processor, False, None)
                    row = {"processors": processors, "points_per_block": ppb, "blocks": with_store["blocks"],
                           "exec_store": with_store["execution_time"], "exec_plain": without["execution_time"],
                           "bytes_store": with_store["bytes_exec"]["total"], "bytes_plain": without["bytes_exec"]["total"],
                           "score_store": with_store["score"], "score_plain": without["score"]}
                    row["bytes_ratio"] = row["bytes_plain"] / max(1, row["bytes_store"])
                    row["time_ratio"] = row["exec_store"] / row["exec_plain"]
                    row["points_per_processor"] = with_store["points_per_processor"]
                    row["bytes_store_parts"] = with_store["bytes_exec"]
                    row["bytes_plain_parts"] = without["bytes_exec"]
                    rows.append(row)
                    print(f"P={processors} ppb={ppb:5d} blocks={row['blocks']:3d}  exec store {row['exec_store']:7.2f} s"
                          f"  plain {row['exec_plain']:7.2f} s  (x{row['time_ratio']:.2f})   bytes store "
                          f"{row['bytes_store']:>11,}  plain {row['bytes_plain']:>11,}  ({row['bytes_ratio']:.1f}x fewer)",
                          flush=True)
                    rr = run_app(processors, ppb, bpc, args.cores_per_processor, True, str(dep.config_path),
                                 "round-robin")
                    row.update(exec_store_rr=rr["execution_time"], bytes_store_rr=rr["bytes_exec"]["total"],
                               score_store_rr=rr["score"])
                    print(f"      round-robin blocks: exec store {rr['execution_time']:7.2f} s (x"
                          f"{rr['execution_time'] / row['exec_plain']:.2f})   bytes store {row['bytes_store_rr']:>11,}"
                          f"  ({row['bytes_plain'] / max(1, row['bytes_store_rr']):.1f}x fewer)", flush=True)
            finally:
                _local.stop(dep.dir)
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "csvm_scaling.json").write_text(json.dumps(rows, indent=2))
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for ppb, style in ((128, "o-"), (1024, "s--")):
        sel = [r for r in rows if r["points_per_block"] == ppb]
        ps = [r["processors"] for r in sel]
        axes[0].plot(ps, [r["exec_store"] for r in sel], style, label=f"store, {ppb} pts/block")
        axes[0].plot(ps, [r["exec_plain"] for r in sel], style, alpha=0.5, label=f"no store, {ppb} pts/block")
        axes[1].plot(ps, [r["bytes_store"] for r in sel], style, label=f"store, {ppb}")
        axes[1].plot(ps, [r["bytes_plain"] for r in sel], style, alpha=0.5, label=f"no store, {ppb}")
    axes[0].set(xlabel="processors", ylabel="execution time (s)", title="CSVM weak scaling")
    axes[1].set(xlabel="processors", ylabel="bytes moved during fit", yscale="log")
    for a in axes:
        a.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(OUT / "csvm_scaling.png")
    targets, values = [], {}
    for r in rows:
        size = f"P{r['processors']}_{r['points_per_block']}pts"
        targets += [Target(f"{size}_fewer_bytes", ">=", 10.0, "x"), Target(f"{size}_time_ratio", "<=", 1.25, "x")]
        values.update({f"{size}_fewer_bytes": r["bytes_ratio"], f"{size}_time_ratio": r["time_ratio"]})
    lines, met = report(targets, values)
    print("\n".join(lines))
    return exit_status(met, args.check)


if __name__ == "__main__":
    sys.exit(main())
