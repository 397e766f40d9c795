"""The benchmarks' targets: each printed as met or NOT met; ``--check`` turns a miss into exit status 1."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from bench._targets import Target, exit_status, report
from tests.conftest import ROOT


def test_report_and_check() -> None:
    targets = [Target("p50_us", "<=", 60.0, "us"), Target("rate", ">=", 1000.0, "/s"), Target("missing", "<=", 1.0)]
    lines, met = report(targets[:2], {"p50_us": 59.5, "rate": 1000.0})
    assert met and [line.split()[-1] for line in lines[1:]] == ["met", "met"]
    lines, met = report(targets, {"p50_us": 61.0, "rate": 1000.0})  # too slow, and one not measured
    assert not met and [line.rsplit("  ", 1)[-1] for line in lines[1:]] == ["NOT met", "met", "not measured (counts as missed)"]
    assert exit_status(True, check=True) == 0 and exit_status(False, check=False) == 0
    load, cores = os.getloadavg()[0], os.cpu_count() or 1
    assert lines[0].startswith("targets (for an otherwise idle machine")
    assert ("the machine was busy" in lines[0]) == (load > cores) or abs(load - cores) < 0.5  # load moves
    assert exit_status(False, check=True) == 1


def test_every_benchmark_takes_check() -> None:
    for module in ("bench.calls", "bench.failover", "bench.lstm_offload", "bench.csvm_scaling", "bench.net"):
        out = subprocess.run([sys.executable, "-m", module, "--help"], capture_output=True, text=True, cwd=ROOT,
                             timeout=60)
        assert out.returncode == 0, out.stderr
        assert "--check" in out.stdout, module


def _running(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    except FileNotFoundError:
        return False


def test_the_loaded_mode_runs_busy_processes_and_kills_them_on_an_error() -> None:
    from bench._load import cpu_load

    seen: list[int] = []
    with pytest.raises(RuntimeError, match="benchmark failed"):
        with cpu_load(per_core=1) as pids:
            seen = list(pids)
            assert len(pids) == len(os.sched_getaffinity(0)) and all(_running(p) for p in pids)
            raise RuntimeError("benchmark failed")
    assert seen and not any(_running(p) for p in seen)


def test_loaded_comparisons_with_pyro5_and_one_fsync() -> None:
    from bench.calls import LOADED_TARGETS, _targets, relative

    ours = {"noop_p50_us": 50.0, "inc_p50_us": 300.0, "inc_held_p50_us": {"128": 900.0}}
    pyro = {"system": "Pyro5 5.17", "noop_p50_us": 100.0, "inc_p50_us": 100.0}
    floors = {"fsync_us": 400.0}
    assert relative(ours, [pyro], floors) == {"noop_over_pyro5": 0.5, "inc_over_pyro5_fsync": 0.6}
    targets, values, _heading = _targets(ours, [pyro], floors, "loaded: 4 busy processes")
    lines, met = report(targets, values)
    assert targets == LOADED_TARGETS and met and len(lines) == 1 + len(targets)
    targets, values, _heading = _targets(ours, [], floors, "loaded: 4 busy processes")  # no Pyro5: not measured
    assert values["vs.noop_over_pyro5"] is None and not report(targets, values)[1]
