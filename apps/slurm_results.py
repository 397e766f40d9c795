"""Results tables (and the weak-scaling plot) of the sbatch scripts in ``slurm/``.

    python apps/slurm_results.py csvm RESULTS_DIR [--plot]   # weak_scaling.sh
    python apps/slurm_results.py lstm RESULTS_DIR [--show RUN.json]   # lstm_offload.sh

Each reads the per-run JSON files the scripts leave in ``RESULTS_DIR/runs/`` (``apps/csvm.py
--json`` and ``apps/lstm_offload.py --json``) and rewrites ``RESULTS_DIR/results.csv`` with one row
per run; the scripts call it after every run, so a job that dies keeps a table of what it measured.
``--plot`` also draws ``weak_scaling.png``: execution time and bytes moved against processors, one
line per block size and storage mode (the paper's Figures 11-12).
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from pathlib import Path
from typing import Any

CSVM_COLUMNS = ["processors", "points_per_block", "storage", "blocks", "points", "points_per_processor",
                "placement", "initialization_time", "execution_time", "bytes_moved", "score", "tasks_by_node"]
LSTM_COLUMNS = ["run", "seed", "epochs", "passes", "device", "cpu_mse", "cpu_mae", "cpu_smape", "cpu_rmse",
                "mem_mse", "mem_mae", "mem_smape", "mem_rmse", "train_time", "eval_time", "server_time",
                "memory_mb", "client_total", "overhead", "call_overhead", "client_rss_mb"]


def _runs(results: Path) -> list[tuple[str, dict[str, Any]]]:
    """(name, figures) of every complete run file, in name order."""
    out = []
    for path in sorted((results / "runs").glob("*.json")):
        try:
            out.append((path.stem, json.loads(path.read_text())))
        except (OSError, ValueError) as exc:  # a run killed while writing: skip it, say so
            print(f"slurm_results: skipping {path}: {exc}", file=sys.stderr)
    return out


def csvm_rows(results: Path) -> list[dict[str, Any]]:
    rows = []
    for _name, f in _runs(results):
        moved = f.get("bytes_exec")
        rows.append({
            "processors": f["processors"], "points_per_block": f["points_per_block"],
            "storage": "on" if f["storage"] else "off", "blocks": f["blocks"], "points": f["points"],
            "points_per_processor": f["points_per_processor"], "placement": f.get("placement") or "",
            "initialization_time": round(f["initialization_time"], 6), "execution_time": round(f["execution_time"], 6),
            "bytes_moved": moved["total"] if moved else "", "score": f["score"],
            "tasks_by_node": _by_node(f.get("tasks_by_node")),
        })
    rows.sort(key=lambda r: (r["points_per_block"], r["storage"], r["processors"]))
    return rows


def _by_node(counts: dict[str, dict[str, int]] | None) -> str:
    """``node:tasks`` pairs, Dask workers' and backends' tasks together, e.g. ``sa-n2:41 sa-n3:40``."""
    if not counts:
        return ""
    total: dict[str, int] = {}
    for per_node in counts.values():
        for node, n in per_node.items():
            total[node] = total.get(node, 0) + n
    return " ".join(f"{node}:{n}" for node, n in sorted(total.items()))


def lstm_rows(results: Path) -> list[dict[str, Any]]:
    rows = []
    for name, f in _runs(results):
        row = {"run": name, "seed": f.get("seed"), "epochs": f.get("epochs"), "passes": f.get("passes"),
               "device": f.get("device")}
        for var in ("cpu", "mem"):
            for metric in ("mse", "mae", "smape", "rmse"):
                row[f"{var}_{metric}"] = f["metrics"][var][metric]
        for key in LSTM_COLUMNS[13:]:
            row[key] = f.get(key)
        rows.append(row)
    return rows


def lstm_summary(f: dict[str, Any]) -> str:
    """One line of a run's figures for the job's output."""
    m = f["metrics"]
    return (f"    CPU MSE {m['cpu']['mse']:.3f}  MEM MSE {m['mem']['mse']:.3f}; train {f['train_time']:.2f} s, "
            f"eval {f['eval_time']:.3f} s on {f['device']}; client RSS {f['client_rss_mb']:.1f} MiB, "
            f"overhead {f['overhead'] * 1000:.0f} ms")


def write_csv(path: Path, columns: list[str], rows: list[dict[str, Any]]) -> None:
    tmp = path.with_suffix(".tmp")
    with open(tmp, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=columns)
        w.writeheader()
        w.writerows(rows)
    tmp.replace(path)


def plot_csvm(rows: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (times, moved) = plt.subplots(1, 2, figsize=(11, 4.2))
    for ppb in sorted({r["points_per_block"] for r in rows}):
        for storage, style in (("on", "-o"), ("off", "--s")):
            sel = sorted((r for r in rows if r["points_per_block"] == ppb and r["storage"] == storage),
                         key=lambda r: r["processors"])
            if not sel:
                continue
            label = f"{ppb} points/block, {'with' if storage == 'on' else 'without'} the store"
            ps = [r["processors"] for r in sel]
            times.plot(ps, [r["execution_time"] for r in sel], style, label=label)
            counted = [r for r in sel if r["bytes_moved"] != ""]
            if counted:
                moved.plot([r["processors"] for r in counted], [max(1, r["bytes_moved"]) for r in counted], style,
                           label=label)
    times.set(xlabel="processors (backends)", ylabel="execution time (s)", title="Cascade SVM, weak scaling")
    moved.set(xlabel="processors (backends)", ylabel="bytes moved between processes during fit", yscale="log",
              title="data movement")
    processors = sorted({r["processors"] for r in rows})
    for ax in (times, moved):
        ax.set_xscale("log", base=2)
        ax.set_xticks(processors, [str(n) for n in processors])
        ax.minorticks_off()
        ax.grid(alpha=0.3)
        if ax.has_data():
            ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("kind", choices=("csvm", "lstm"))
    p.add_argument("results", type=Path, help="the RESULTS_DIR of the job")
    p.add_argument("--plot", action="store_true", help="csvm: also draw weak_scaling.png")
    p.add_argument("--show", type=Path, help="lstm: print a summary line of this run's JSON file")
    a = p.parse_args(argv)
    if a.kind == "csvm":
        rows = csvm_rows(a.results)
        write_csv(a.results / "results.csv", CSVM_COLUMNS, rows)
        if a.plot and rows:
            plot_csvm(rows, a.results / "weak_scaling.png")
    else:
        rows = lstm_rows(a.results)
        write_csv(a.results / "results.csv", LSTM_COLUMNS, rows)
        if a.show:
            print(lstm_summary(json.loads(a.show.read_text())))
            return 0
    print(f"{len(rows)} runs in {a.results / 'results.csv'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
