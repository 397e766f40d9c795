"""Intra-op thread pools (torch, BLAS, OpenMP) sized to the cores a backend was given.

Left alone, torch and the BLAS/OpenMP libraries start one thread per core of the machine in every
process, and split every large operation across all of them. A backend shares its machine (with
the other backends, the tasks it runs, other jobs): with more threads than free cores, each
parallel operation waits for the thread that is not running, and a training loop gets many times
slower on a busy machine instead of a little. Worse, OpenMP threads that wait for the others spin
on their core by default, taking it from the thread they wait for: their waits are made passive
(``OMP_WAIT_POLICY=PASSIVE``, unless the user chose a policy): on a 2-core machine with two busy
processes per core, a 10-epoch LSTM training on a backend then took 1.3-2.5x its idle time, not 34x.

The count is, in order: the ``intra_op_threads`` setting (``--threads``); else the user's own
``OMP_NUM_THREADS``; else the CPUs the process may run on (its affinity, as ``numactl``,
``taskset``, ``srun --cpu-bind`` or a cgroup cpuset leave it). A pool variable the user set
(``OPENBLAS_NUM_THREADS``, ...) is kept unless ``intra_op_threads`` is given. The variables are
set before anything imports numpy: the libraries read them once, when loaded. torch's own pools
are sized just after torch is imported (by an import hook: importing torch at start-up would cost
every backend seconds, used or not).
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import importlib.util
import logging
import os
import sys
from collections.abc import Callable, MutableMapping, Sequence
from types import ModuleType

from ..errors import ConfigError

log = logging.getLogger("storage.backend")

# The variables the OpenMP runtimes and BLAS libraries size their pools from.
POOL_VARIABLES = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMEXPR_NUM_THREADS",
                  "VECLIB_MAXIMUM_THREADS")
WAIT_POLICY = "OMP_WAIT_POLICY"  # set to PASSIVE unless the user set it


def affinity_cores() -> int:
    """How many CPUs this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def choose(setting: int, environ: MutableMapping[str, str] | None = None) -> int:
    """The intra-op thread count: ``setting`` if positive, else ``OMP_NUM_THREADS``, else the affinity's CPUs."""
    if setting > 0:
        return setting
    env = os.environ if environ is None else environ
    given = env.get("OMP_NUM_THREADS", "").split(",")[0].strip()  # OpenMP allows a list, one per nesting level
    if given:
        if not given.isdigit() or int(given) < 1:
            raise ConfigError(f"OMP_NUM_THREADS={env['OMP_NUM_THREADS']!r} is not a positive thread count")
        return int(given)
    return affinity_cores()


def size_pools(setting: int, environ: MutableMapping[str, str] | None = None) -> int:
    """Size every intra-op pool of this process (and of the processes it starts); return the count."""
    env = os.environ if environ is None else environ
    threads = choose(setting, env)
    for name in POOL_VARIABLES:
        if setting > 0 or not env.get(name):
            env[name] = str(threads)
    env.setdefault(WAIT_POLICY, "PASSIVE")
    if "numpy" in sys.modules:  # too late for BLAS: it sized its pool when numpy loaded
        log.warning("numpy was imported before the thread pools were sized: BLAS keeps its own count")
    after_import("torch", lambda torch: _size_torch(torch, threads))
    return threads


def _size_torch(torch: ModuleType, threads: int) -> None:
    torch.set_num_threads(threads)
    try:
        torch.set_num_interop_threads(threads)
    except RuntimeError:  # the inter-op pool already ran something: it keeps its size
        log.info("torch's inter-op pool had started: it keeps %d threads", torch.get_num_interop_threads())


def after_import(name: str, then: Callable[[ModuleType], None]) -> None:
    """Run ``then(module)`` once module ``name`` is imported (at once if it already is)."""
    if name in sys.modules:
        then(sys.modules[name])
    else:
        sys.meta_path.insert(0, _AfterImport(name, then))


class _AfterImport(importlib.abc.MetaPathFinder):
    """Finds ``name`` through the other finders and wraps its loading; gone once it has run
    (a mere ``find_spec`` of the name, without an import, leaves it in place)."""

    def __init__(self, name: str, then: Callable[[ModuleType], None]) -> None:
        self.name, self.then = name, then
        self._finding = False

    def find_spec(self, fullname: str, path: Sequence[str] | None = None,
                  target: ModuleType | None = None) -> importlib.machinery.ModuleSpec | None:
        if fullname != self.name or self._finding:
            return None
        self._finding = True
        try:
            spec = importlib.util.find_spec(fullname)
        finally:
            self._finding = False
        if spec is None or spec.loader is None or not hasattr(spec.loader, "exec_module"):
            return spec
        load = spec.loader.exec_module

        def exec_module(module: ModuleType) -> None:
            load(module)
            if self in sys.meta_path:
                sys.meta_path.remove(self)
            self.then(module)

        spec.loader.exec_module = exec_module  # type: ignore[method-assign]
        return spec
