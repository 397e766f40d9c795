"""Run one command of a suite with a time limit, in a process group of its own.

The launcher starts worker processes; on a timeout the whole group is stopped, so no worker of a
hung run is left behind.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path


@dataclass
class Finished:
    returncode: int | None  # None: stopped at its time limit
    stdout: str
    stderr: str
    seconds: float
    started: float = 0.0  # wall-clock time (time.time()) it started at

    @property
    def timed_out(self) -> bool:
        return self.returncode is None


def run(cmd: list[str], *, cwd: Path, env: dict[str, str], timeout: float) -> Finished:
    start, started = time.monotonic(), time.time()
    proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, start_new_session=True)
    try:
        out, err = proc.communicate(timeout=timeout)
        code: int | None = proc.returncode
    except subprocess.TimeoutExpired:
        _stop_group(proc)
        out, err = proc.communicate()
        code = None
    except BaseException:  # the harness itself interrupted: leave no process of the run behind
        _stop_group(proc)
        raise
    return Finished(code, out, err, round(time.monotonic() - start, 1), started)


def _stop_group(proc: subprocess.Popen) -> None:
    """SIGINT first (the launcher then cancels its tasks), then SIGKILL for whatever of the group is left."""
    _signal_group(proc, signal.SIGINT)
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        pass
    _signal_group(proc, signal.SIGKILL)  # also the workers that outlived their leader


def _signal_group(proc: subprocess.Popen, sig: int) -> None:
    try:
        os.killpg(proc.pid, sig)
    except ProcessLookupError:
        pass
