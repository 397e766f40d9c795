"""The short CPU slice a backend asks the Linux scheduler for (``cpu_slice_us``)."""

from __future__ import annotations

import os
import re
import sys

import pytest

from storage_api._config import load
from storage_api.errors import ConfigError
from tests.conftest import run_python


def _kernel_takes_slices() -> bool:
    """Linux 6.12+ (custom slices for SCHED_OTHER), with the slice shown in /proc."""
    if not sys.platform.startswith("linux"):
        return False
    major, minor = (int(x) for x in re.match(r"(\d+)\.(\d+)", os.uname().release).groups())
    try:
        shown = "se.slice" in open("/proc/self/sched").read()
    except OSError:
        return False
    return (major, minor) >= (6, 12) and shown


needs_slices = pytest.mark.skipif(not _kernel_takes_slices(), reason="needs Linux 6.12+ with se.slice in /proc")


def _slices(pid: int) -> dict[int, int]:
    """Each thread of ``pid``: its CPU slice in nanoseconds, as the scheduler shows it."""
    out = {}
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            text = open(f"/proc/{pid}/task/{tid}/sched").read()
        except FileNotFoundError:  # the thread ended
            continue
        out[int(tid)] = int(re.search(r"se\.slice\s*:\s*(\d+)", text).group(1))
    return out


@needs_slices
def test_every_thread_of_a_backend_runs_with_the_short_slice_and_status_says_so(cluster):
    for b in cluster.dep.backends:
        slices = _slices(b.pid)
        assert len(slices) > 3, slices  # the server's threads, not only the main one
        assert set(slices.values()) == {300_000}, f"backend {b.name}: {slices}"
    client = cluster.client()
    try:
        assert {b.name: b.slice_us for b in client.backends()} == {b.name: 300.0 for b in cluster.dep.backends}
    finally:
        client.close()
    table = run_python("from storage_api._cli import main; main(['status'])",
                       env={"STORAGE_API_CONFIG": str(cluster.dep.config_path)})
    header, *rows = table.stdout.splitlines()
    assert header.split()[9] == "SLICE" and all(row.split()[8] == "300us" for row in rows[:2]), table.stdout


@needs_slices
def test_threads_started_after_the_request_inherit_it_and_zero_keeps_the_default():
    """... and the request keeps the process's nice value and policy (a backend started with
    `nice`, or as SCHED_BATCH, stays so)."""
    code = (
        "import os, re, threading\n"
        "os.nice(5); os.sched_setscheduler(0, os.SCHED_BATCH, os.sched_param(0))\n"
        "from storage_api._backend._slice import request_slice\n"
        "def mine():\n"
        "    text = open(f'/proc/self/task/{threading.get_native_id()}/sched').read()\n"
        "    return int(re.search(r'se\\.slice\\s*:\\s*(\\d+)', text).group(1))\n"
        "before = mine()\n"
        "assert request_slice(0) is False and mine() == before\n"
        "assert request_slice(450) is True\n"
        "seen = []\n"
        "t = threading.Thread(target=lambda: seen.append(mine())); t.start(); t.join()\n"
        "assert os.getpriority(os.PRIO_PROCESS, 0) == 5 and os.sched_getscheduler(0) == os.SCHED_BATCH\n"
        "print(before, mine(), seen[0])\n"
    )
    out = run_python(code)
    assert out.returncode == 0, out.stderr
    before, after, child = map(int, out.stdout.split())
    assert after == child == 450_000 and before != 450_000


@pytest.mark.parametrize("value", [-1, 50, 200_000])
def test_a_slice_out_of_the_kernels_range_is_a_config_error(value):
    with pytest.raises(ConfigError, match="cpu_slice_us"):
        load(use_default_file=False, cpu_slice_us=value)
