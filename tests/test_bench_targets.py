"""The benchmarks' targets: each printed as met or NOT met; ``--check`` turns a miss into exit status 1."""

from __future__ import annotations

import os
import subprocess
import sys

from bench._targets import Target, exit_status, report
from tests.conftest import ROOT


def test_report_and_check() -> None:
    targets = [Target("p50_us", "<=", 60.0, "us"), Target("rate", ">=", 1000.0, "/s"), Target("missing", "<=", 1.0)]
    lines, met = report(targets[:2], {"p50_us": 59.5, "rate": 1000.0})
    assert met and [line.split()[-1] for line in lines[1:]] == ["met", "met"]
    lines, met = report(targets, {"p50_us": 61.0, "rate": 1000.0})  # too slow, and one not measured
    assert not met and [line.rsplit("  ", 1)[-1] for line in lines[1:]] == ["NOT met", "met", "NOT met"]
    assert exit_status(True, check=True) == 0 and exit_status(False, check=False) == 0
    load, cores = os.getloadavg()[0], os.cpu_count() or 1
    assert lines[0].startswith("targets (for an otherwise idle machine")
    assert ("the machine was busy" in lines[0]) == (load > cores) or abs(load - cores) < 0.5  # load moves
    assert exit_status(False, check=True) == 1


def test_every_benchmark_takes_check() -> None:
    for module in ("bench.calls", "bench.failover", "bench.lstm_offload", "bench.csvm_scaling"):
        out = subprocess.run([sys.executable, "-m", module, "--help"], capture_output=True, text=True, cwd=ROOT,
                             timeout=60)
        assert out.returncode == 0, out.stderr
        assert "--check" in out.stdout, module
