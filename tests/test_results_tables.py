"""The results tables the sbatch scripts rewrite after every run (apps/slurm_results.py)."""

from __future__ import annotations

import csv
import json
from pathlib import Path

from apps import slurm_results


def _csvm_run(processors: int, storage: bool, ppb: int = 128, moved: int | None = 1000) -> dict:
    return {"processors": processors, "points_per_block": ppb, "storage": storage, "blocks": 4 * processors,
            "points": 4 * processors * ppb, "points_per_processor": 4 * ppb, "placement": "contiguous",
            "initialization_time": 1.23456789, "execution_time": 2.5, "score": 1.0,
            "bytes_exec": {"total": moved} if moved is not None else None}


def _table(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def test_csvm_table_one_sorted_row_per_complete_run(tmp_path: Path, capsys) -> None:
    runs = tmp_path / "runs"
    runs.mkdir()
    for name, run in {"p2-on": _csvm_run(2, True), "p1-off": _csvm_run(1, False, moved=None),
                      "p1-on": _csvm_run(1, True), "p1-big-on": _csvm_run(1, True, ppb=1024)}.items():
        (runs / f"{name}.json").write_text(json.dumps(run))
    (runs / "p4-on.json").write_text('{"processors": 4, "points_per')  # a run killed while writing
    assert slurm_results.main(["csvm", str(tmp_path)]) == 0
    out = capsys.readouterr()
    assert "skipping" in out.err and "p4-on.json" in out.err
    assert out.out.strip() == f"4 runs in {tmp_path / 'results.csv'}"
    with open(tmp_path / "results.csv", newline="") as fh:
        assert next(csv.reader(fh)) == slurm_results.CSVM_COLUMNS
    rows = _table(tmp_path / "results.csv")
    assert [(r["points_per_block"], r["storage"], r["processors"]) for r in rows] == [
        ("128", "off", "1"), ("128", "on", "1"), ("128", "on", "2"), ("1024", "on", "1")]
    assert rows[0]["bytes_moved"] == "" and rows[1]["bytes_moved"] == "1000"  # null under COMPSs: blank
    assert rows[1]["initialization_time"] == "1.234568"


def test_lstm_table_and_the_summary_line_of_one_run(tmp_path: Path, capsys) -> None:
    runs = tmp_path / "runs"
    runs.mkdir()
    metrics = {var: {"mse": 7.5811, "mae": 2.11, "smape": 6.16, "rmse": 2.75} for var in ("cpu", "mem")}
    run = {"seed": 3, "epochs": 100, "passes": 2, "device": "cpu", "metrics": metrics, "train_time": 4.02,
           "eval_time": 0.3, "server_time": 4.4, "memory_mb": 484.6, "client_total": 4.23, "overhead": 0.058,
           "call_overhead": 0.0023, "client_rss_mb": 24.7}
    for seed in (3, 4):
        (runs / f"run-{seed}.json").write_text(json.dumps({**run, "seed": seed}))
    assert slurm_results.main(["lstm", str(tmp_path), "--show", str(runs / "run-3.json")]) == 0
    line = capsys.readouterr().out.strip()
    assert line == ("CPU MSE 7.581  MEM MSE 7.581; train 4.02 s, eval 0.300 s on cpu; client RSS 24.7 MiB, "
                    "overhead 58 ms")
    rows = _table(tmp_path / "results.csv")
    assert [r["run"] for r in rows] == ["run-3", "run-4"] and [r["seed"] for r in rows] == ["3", "4"]
    assert rows[0]["cpu_mse"] == "7.5811" and rows[0]["client_rss_mb"] == "24.7"
    assert list(rows[0]) == slurm_results.LSTM_COLUMNS
