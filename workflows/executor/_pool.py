"""The local worker processes: a process pool that outlives the death of one of its workers.

concurrent.futures' pool breaks for good when a worker dies (``os._exit`` in a task, a crash, a
kill): every task in it fails, and so does every later submission. Here a broken pool is replaced;
the task whose worker died fails alone (:class:`TaskWorkerDied`, or :class:`TaskTimeout` when it
was killed for its ``time_out``), and the tasks that the pool stopped with it run again. Each worker
reports ``(task key, pid)`` as it starts a task, so a dead worker's exit code points at its task.

``@task(time_out=S)``: the worker stops its own task with an alarm after ``S`` seconds (as PyCOMPSs'
worker does), the task fails with :class:`TaskTimeout` and the worker serves on. A task that does
not get back to the interpreter for the alarm (blocked in native code, with signals masked) has its
worker killed :data:`GRACE` seconds later, and the pool is replaced.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from concurrent.futures import Future
from concurrent.futures.process import BrokenProcessPool
from typing import Any, Callable

from ._errors import TaskTimeout, TaskWorkerDied

GRACE = 2.0  # seconds past a time_out before the worker itself is killed
RERUNS = 3  # times a task may be stopped with another task's dead worker before it fails too


class LocalPool:
    """``workers`` spawned processes; :meth:`submit` a task by key, :meth:`verdict` when it broke."""

    def __init__(self, workers: int, script: str | None = None) -> None:
        self.workers = workers
        self.script = script  # the app script, which each worker runs when one of its tasks arrives
        self._pool: Any = None
        self._lock = threading.Condition()
        self._procs: list[dict] = []  # each pool's pid -> Process (the pool's own, updated as it spawns)
        self._started: Any = None  # the pipe workers report (task key, pid) on as each task starts
        self._inflight: dict[str, float | None] = {}  # submitted task key -> its time_out
        self._running: dict[str, int] = {}  # task key -> pid of the worker running it
        self._killed: set[str] = set()  # tasks whose worker was killed for their time_out
        self._closed = False
        self._managers: list[threading.Thread] = []  # manager threads of pools shut down without waiting

    def start(self) -> Any:
        """The pool, started now if it is not (spawned, not forked: the app's process has client
        threads and sockets). Each worker runs the app script when a task first needs one of its
        names (see ``_worker.setup``), so the app's functions resolve there.

        Workers ignore Ctrl-C (a terminal sends it to the whole process group; the launcher stops
        them): they are spawned while this process ignores it, as a child inherits an ignored
        signal from its very start, before its interpreter could fail on it; a Ctrl-C during those
        few milliseconds is lost."""
        with self._lock:
            if self._closed:
                raise RuntimeError("the run was stopped: no more local tasks")
            if self._pool is None:
                import multiprocessing
                from concurrent.futures import ProcessPoolExecutor

                from ._worker import ready, setup

                context = multiprocessing.get_context("spawn")
                if self._started is None:
                    # a pipe, not a queue: each report is one write of a few bytes (atomic), with no
                    # lock that a worker killed while reporting could leave held
                    reader, self._started = context.Pipe(duplex=False)
                    threading.Thread(target=self._read_starts, args=(reader,), name="executor-starts",
                                     daemon=True).start()
                main = threading.current_thread() is threading.main_thread()
                previous = signal.signal(signal.SIGINT, signal.SIG_IGN) if main else None
                try:
                    self._pool = ProcessPoolExecutor(self.workers, mp_context=context, initializer=setup,
                                                     initargs=(self._started, self.script))
                    for _ in range(self.workers):  # one submission per worker starts them all now
                        self._pool.submit(ready)
                    self._procs.append(self._pool._processes)
                finally:
                    if main:
                        signal.signal(signal.SIGINT, previous)
            return self._pool

    def submit(self, key: str, time_out: float | None, fn: Callable, *args: Any) -> Future:
        """Run ``fn(*args)`` in a worker for task ``key`` (a replaced pool if this one broke)."""
        with self._lock:
            self._inflight[key] = time_out
        try:
            return self.start().submit(fn, *args)
        except BrokenProcessPool:  # broken since the last task: the next pool takes it
            self._replace()
            return self.start().submit(fn, *args)

    def done(self, key: str) -> None:
        """Task ``key`` is over (its verdict, if it broke the pool, was taken)."""
        with self._lock:
            self._inflight.pop(key, None)
            self._running.pop(key, None)
            self._killed.discard(key)

    def verdict(self, key: str, name: str) -> BaseException | None:
        """Task ``key`` failed with BrokenProcessPool: the error it fails with if its own worker
        died, else ``None`` (the pool stopped it because another worker died: run it again)."""
        self._replace()
        with self._lock:  # its start report may still be on its way
            self._lock.wait_for(lambda: key in self._running, timeout=1.0)
            pid = self._running.get(key)
            killed = key in self._killed
            limit = self._inflight.get(key)
        if killed:
            return TaskTimeout(f"task {name} ran past its time_out of {limit:g} s without returning to the "
                               f"interpreter: its worker (pid {pid}) was killed and replaced")
        code = self._exit_code(pid)
        if code is None or code == -signal.SIGTERM:  # alive, or stopped by the pool as it broke
            return None
        how = f"killed by signal {signal.Signals(-code).name}" if code < 0 else f"exit code {code}"
        return TaskWorkerDied(f"task {name}: its worker process (pid {pid}) ended abruptly ({how}); "
                              "the other tasks run on in new workers")

    def _exit_code(self, pid: int | None) -> int | None:
        """How worker ``pid`` ended. The broken pool stops all its workers; a dead one's pipe
        closes a moment before its exit status can be read, so wait for that (at most 2 s)."""
        for procs in self._procs:
            proc = procs.get(pid) if pid is not None else None
            if proc is not None:
                deadline = time.monotonic() + 2.0
                while proc.exitcode is None and time.monotonic() < deadline:
                    proc.join(0.05)
                return proc.exitcode
        return None

    def _replace(self) -> None:
        with self._lock:
            pool = self._pool
            if pool is not None and getattr(pool, "_broken", False):
                self._pool = None  # the next start() makes a new one
                self._shut(pool)

    def _read_starts(self, reader: Any) -> None:
        while True:
            try:
                item = reader.recv()
            except (EOFError, OSError):
                return
            if item is None:
                return
            key, pid = item
            with self._lock:
                if key not in self._inflight:
                    continue
                self._running[key] = pid
                limit = self._inflight[key]
                self._lock.notify_all()
            if limit:
                timer = threading.Timer(limit + GRACE, self._expire, (key, pid))
                timer.daemon = True
                timer.start()

    def _expire(self, key: str, pid: int) -> None:
        """The worker's alarm did not stop task ``key``: kill its worker."""
        with self._lock:
            if self._running.get(key) != pid:
                return
            self._killed.add(key)
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass

    @property
    def pool(self) -> Any:
        return self._pool

    def abort(self) -> None:
        """Stop the workers now (queued tasks are dropped); no pool is started after this."""
        import multiprocessing

        with self._lock:
            self._closed = True
            pool = self._pool
        if pool is not None:
            self._shut(pool, cancel_futures=True)
            for child in multiprocessing.active_children():  # only our workers: multiprocessing's own
                child.terminate()

    def _shut(self, pool: Any, **options: Any) -> None:
        """Shut ``pool`` down without waiting, keeping its manager thread for :meth:`join`:
        ``shutdown`` forgets it."""
        manager = getattr(pool, "_executor_manager_thread", None)
        if manager is not None:
            self._managers.append(manager)
        pool.shutdown(wait=False, **options)

    def close(self, wait: bool) -> None:
        """Shut the pool down (waiting for its tasks with ``wait``), then let the manager thread of
        every pool shut down without waiting finish closing its wake-up pipe: at interpreter exit
        concurrent.futures writes to the pipe of each manager thread still registered, and racing
        its close that printed an "Exception ignored ... Bad file descriptor" traceback after the
        app's own last line (Python < 3.12)."""
        pool = self._pool
        if pool is not None:
            if wait:
                pool.shutdown(wait=True)
            else:
                self._shut(pool)
        for manager in self._managers:
            manager.join(10.0)

    def stop_reading(self) -> None:
        if self._started is not None:
            self._started.send(None)
