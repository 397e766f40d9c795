"""The LSTM report (paper Tables 1-5, Figures 9-10) regenerated end to end by its one command."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
METRICS = ("cpu_mse", "cpu_mae", "cpu_smape", "cpu_rmse", "mem_mse", "mem_mae", "mem_smape", "mem_rmse")


@pytest.mark.slow  # an embedded deployment whose backend imports torch, and two trainings
def test_one_seed_gives_every_table_and_figure_from_its_own_runs(tmp_path):
    out = tmp_path / "lstm"
    env = dict(os.environ, HOME=str(tmp_path / "home"), PYTHONPATH=str(ROOT))
    proc = subprocess.run([sys.executable, "-m", "apps.lstm_report", "--runs", "1", "--epochs", "1", "--no-envs",
                           "--out", str(out)], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]

    with open(out / "runs.csv", newline="") as fh:
        runs = {row["mode"]: row for row in csv.DictReader(fh)}
    assert set(runs) == {"baseline", "offload"}
    base, off = runs["baseline"], runs["offload"]
    assert base["seed"] == off["seed"] == "0" and base["epochs"] == off["epochs"] == "1"
    # the same seed trains the same model locally and on the backend: the same test-set metrics
    for m in METRICS:
        assert float(base[m]) == float(off[m]) and float(base[m]) > 0, m
    assert off["object_id"] and float(off["server_time"]) > 0 and float(off["client_rss_mb"]) > 0

    # the tables are made of those runs (one run: mean ± 0.00)
    with open(out / "table1.csv", newline="") as fh:
        (t1,) = list(csv.DictReader(fh))
    assert t1["Memory (MB)"] == f"{float(base['memory_mb']):.2f} ± 0.00"
    assert t1["Train Time"] == f"{float(base['train_time']):.2f} ± 0.00"
    with open(out / "table2-4.csv", newline="") as fh:
        scopes = {row["Scope"]: row for row in csv.DictReader(fh)}
    assert set(scopes) == {"Client", "Server", "Agg"}
    assert scopes["Client"]["Memory (MB)"] == f"{float(off['client_rss_mb']):.2f} ± 0.00"
    assert scopes["Server"]["Memory (MB)"] == f"{float(off['memory_mb']):.2f} ± 0.00"
    md = (out / "tables.md").read_text()
    for heading in ("## Table 1", "## Tables 2-4", "## Table 5"):
        assert heading in md
    assert not (out / "table6.csv").exists()  # --no-envs

    for fig in ("fig9_memory.png", "fig10_runtime.png"):
        data = (out / fig).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5_000, fig
    summary = json.loads((out / "summary.json").read_text())
    assert summary["runs"] == 1 and summary["epochs"] == 1 and summary["identical_metrics"] == 1
    assert summary["cpu_mse"] == float(off["cpu_mse"])
