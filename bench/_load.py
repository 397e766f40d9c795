"""A fixed CPU load for the benchmarks' loaded mode (``--loaded``).

Busy processes, two per core by default (a machine whose cores all run other work, with more of
it waiting), at the benchmark's own priority. The benchmark starts them and stops them however it
ends: they are killed when it leaves the ``with`` block, on an error too, and by the kernel if the
benchmark itself dies (``PR_SET_PDEATHSIG``).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from .baselines._common import Children

PER_CORE = 2
_SPIN = "while True: pass"


@contextmanager
def cpu_load(per_core: int = PER_CORE) -> Iterator[list[int]]:
    """Keep ``per_core`` busy processes per CPU of this process running; yields their pids."""
    n = per_core * len(os.sched_getaffinity(0))
    children = Children()
    try:
        for _ in range(n):
            children.spawn([sys.executable, "-c", _SPIN], dict(os.environ), Path.cwd())
        yield [p.pid for p in children.procs]
    finally:
        children.stop(grace=2.0)


def describe(pids: list[int]) -> str:
    return f"loaded: {len(pids)} busy processes ({len(pids) // len(os.sched_getaffinity(0))} per core) ran throughout"
