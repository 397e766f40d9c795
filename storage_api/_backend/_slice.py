"""A short CPU time slice for the backend, so that its wake-ups run at once on a busy machine.

A durable call sleeps three times: the backend waits for the request, then for ``fdatasync``,
and the caller waits for the reply. On a machine whose cores all run other work, a task that
wakes up runs at once only if the Linux scheduler (EEVDF, 6.6 and later) puts its virtual
deadline before the running task's; a deadline is the task's slice after the moment it became
eligible, so with the default slice (0.7 ms per CPU doubling, 1.4 ms on 2 CPUs) a process that
used the CPU for a while often waits for the next scheduler tick instead (4 ms at HZ=250). Since
6.12 a process may ask for a shorter slice with no privilege (``sched_setattr``, ``sched_runtime``
of a ``SCHED_OTHER`` task): its deadlines come earlier and its wake-ups preempt the busy work.
Its share of the CPU is unchanged (its policy and nice value are kept); a long computation is
only cut into shorter turns.

Measured on 2 cores with two busy processes per core in the caller's own session: a durable
``inc()`` p50 2.2-4.0 ms with the default slice, 0.8-1.4 ms with 300 us. Work the kernel does for
the backend in its own threads (an ``fdatasync``'s completion) keeps the default: with the busy
processes in other sessions (``bench.calls --loaded``), every fdatasync still costs a tick.

The backend asks once, at start-up, before it starts any thread: threads (torch's and OpenMP's
pools included) and child processes inherit the slice. Older kernels and other systems ignore or
refuse the request; the backend then runs with the default (logged, never an error).
"""

from __future__ import annotations

import ctypes
import logging
import os
import platform
import struct
import sys

log = logging.getLogger("storage.backend")

# sched_setattr's system call number, where it is not the generic one (274).
_SYSCALL = {"x86_64": 314, "i386": 351, "i686": 351, "armv7l": 380, "ppc64le": 355, "ppc64": 355, "s390x": 345}
_GENERIC = {"aarch64", "arm64", "riscv64", "loongarch64"}
# struct sched_attr (version 0): size, policy, flags, nice, priority, runtime, deadline, period
_ATTR = struct.Struct("IIQiIQQQ")
_FAIR = {0, 3, 5}  # SCHED_OTHER, SCHED_BATCH, SCHED_IDLE: the policies a slice applies to


def request_slice(us: float) -> bool:
    """Ask for a CPU slice of ``us`` microseconds for this thread and those it starts (0: keep the
    kernel's); True if the kernel took it."""
    if not us or not sys.platform.startswith("linux"):
        return False
    machine = platform.machine()
    number = _SYSCALL.get(machine, 274 if machine in _GENERIC else None)
    if number is None:
        log.debug("cpu slice: no sched_setattr number known for %s", machine)
        return False
    # The call sets policy and nice too: pass the current ones (a backend started with `nice`, or
    # as SCHED_BATCH/IDLE, stays so; lowering nice would also need a privilege).
    policy, nice = os.sched_getscheduler(0), os.getpriority(os.PRIO_PROCESS, 0)
    if policy not in _FAIR:
        log.info("cpu slice not set: the backend runs under real-time policy %d", policy)
        return False
    attr = ctypes.create_string_buffer(_ATTR.pack(_ATTR.size, policy, 0, nice, 0, int(us * 1000), 0, 0))
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.syscall(number, 0, attr, 0) != 0:
        log.info("cpu slice of %g us not set (sched_setattr: errno %d): the kernel's default applies",
                 us, ctypes.get_errno())
        return False
    return True
