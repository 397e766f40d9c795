"""The workers that run the tasks no backend runs: a Dask cluster (``distributed``).

By default a local cluster of ``workers`` processes of one thread each, started with the run; with
``scheduler`` (``storage-api run --scheduler ADDRESS``) the workers of a running Dask scheduler,
wherever they are (``slurm/weak_scaling.sh`` starts one per node with ``srun``).

A task's answer stays in the worker that computed it, as a Dask future the engine holds: a task
that reads it gets it from that worker, worker to worker, and the app's process gets it only for
``compss_wait_on``. Each element of an answer a later task reads alone becomes a future of its own,
made on the worker that holds the answer (:meth:`Workers.part`), so that only that element moves.
Every worker, and every worker that replaces a dead one, runs the app's set-up (:class:`._appsetup.AppSetup`):
its import path, Ctrl-C ignored, the app script as ``__main__`` (see :mod:`._worker`).

Failures: a worker that dies under a task (a crash, ``os._exit``, a kill) is replaced by its
nanny, and Dask runs the tasks it held again on other workers; a task that took
``allowed-failures + 1`` workers down with it fails with :class:`TaskWorkerDied`.
``@task(time_out=S)``: a task cannot be interrupted in a worker's thread, so after ``S`` seconds the
task fails with :class:`TaskTimeout` and the worker running it is killed and replaced.
"""

from __future__ import annotations

# distributed is imported only where a run uses it: backends import this package to run tasks, and
# importing distributed there would change how their exceptions pickle (it installs tblib's pickling)

import logging
import os
import re
import sys
import threading
from typing import Any

from ._errors import TaskTimeout, TaskWorkerDied

CONNECT_TIMEOUT = 15  # seconds a --scheduler has to answer
TOPIC = "storage-api-task"  # the event each task's worker logs as it starts: (task key, pid, address, host)

_deaths = re.compile(r"Worker process (\d+) (?:exited with status (\d+)|was killed by signal (\d+))")


class _Deaths(logging.Handler):
    """How the nannies of a local cluster (in this process) saw their workers end: pid -> text."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.seen: dict[int, str] = {}

    def emit(self, record: logging.LogRecord) -> None:
        match = _deaths.search(record.getMessage())
        if match:
            pid, code, sig = match.groups()
            self.seen[int(pid)] = f"exit code {code}" if code is not None else f"killed by signal {sig}"


class Workers:
    """The run's Dask cluster and client: :meth:`submit` a task, :meth:`fetch` a value."""

    def __init__(self, workers: int, *, script: str | None = None, paths: list[str] | None = None,
                 scheduler: str | None = None, dashboard: str | None = ":0") -> None:
        self.workers = workers
        self.script = script
        self.paths = list(paths or [])
        self.scheduler = scheduler
        self.dashboard = dashboard
        self.client: Any = None
        self.cluster: Any = None
        self._lock = threading.Lock()
        self._closed = False
        self._starts: dict[str, tuple[int, str]] = {}  # task key -> (pid, worker address) it started on
        self._limits: dict[str, tuple[Any, str, float]] = {}  # task key -> (its future, name, time_out)
        self._expired: dict[str, BaseException] = {}  # task key -> the TaskTimeout it failed with
        self._deaths = _Deaths()
        self.sent = 0  # payload bytes sent to workers
        self.fetched = 0  # bytes of values brought to this process
        self._warming: list = []
        self._announced = False
        self._scratch: str | None = None
        self.by_node: dict[str, int] = {}  # tasks started, by the host name of their worker's node

    def start(self) -> Any:
        """The client, its cluster started now if it is not."""
        with self._lock:
            if self._closed:
                raise RuntimeError("the run was stopped: no more worker tasks")
            if self.client is not None:
                return self.client
            import signal

            from distributed import Client, LocalCluster

            main = threading.current_thread() is threading.main_thread()
            previous = signal.signal(signal.SIGINT, signal.SIG_IGN) if main else None
            try:  # the workers are spawned ignoring Ctrl-C: it is the launcher's to handle
                if self.scheduler:
                    client = self._connect(Client)
                else:
                    logging.getLogger("distributed.nanny").addHandler(self._deaths)
                    import tempfile

                    import dask

                    self._scratch = tempfile.mkdtemp(prefix="storage-api-dask-")  # the workers' spill files
                    dask.config.set({"temporary-directory": self._scratch})  # the scheduler's, the nannies'
                    self.cluster = LocalCluster(n_workers=self.workers, threads_per_worker=1, processes=True,
                                                local_directory=self._scratch,
                                                dashboard_address=self.dashboard if _dashboard_works() else None,
                                                silence_logs=logging.CRITICAL, host="127.0.0.1")
                    client = Client(self.cluster, set_as_default=False)
            finally:
                if main:
                    signal.signal(signal.SIGINT, previous)
            from ._appsetup import AppSetup

            client.register_plugin(AppSetup(self.paths, self.script))
            client.subscribe_topic(TOPIC, self._started)
            self.client = client
            return client

    def _connect(self, client_class: Any) -> Any:
        """A client of the scheduler ``--scheduler`` names (an address, or a scheduler file);
        :class:`~storage_api.errors.ConfigError` if none answers there."""
        from storage_api.errors import ConfigError

        where = self.scheduler
        is_file = os.path.isfile(where)  # dask scheduler --scheduler-file
        if not is_file and not re.fullmatch(r"(\w+://)?\[?[\w.:-]+\]?:\d+", where):
            raise ConfigError(f"--scheduler {where}: neither a scheduler file (no such file) nor an address "
                              "(tcp://HOST:PORT)")
        try:
            if is_file:
                return client_class(scheduler_file=where, set_as_default=False, timeout=CONNECT_TIMEOUT)
            return client_class(where, set_as_default=False, timeout=CONNECT_TIMEOUT)
        except (OSError, ValueError, TypeError) as exc:  # TimeoutError is an OSError
            raise ConfigError(f"--scheduler {where}: no Dask scheduler answers there ({exc})") from None

    def _announce(self, client: Any) -> None:
        """Say, once, where the tasks go and where the dashboard is (at the first task: an app that
        runs none prints nothing of ours)."""
        if self._announced:
            return
        self._announced = True
        link = client.dashboard_link if self._serves_dashboard(client) else None
        where = f"the scheduler at {self.scheduler}" if self.scheduler else f"{self.workers} local workers"
        sys.stderr.write(f"storage-api run: tasks off the store run on Dask ({where})"  # one write: a line of its own
                         + (f"; dashboard: {link}" if link else "") + "\n")
        sys.stderr.flush()

    def _serves_dashboard(self, client: Any) -> bool:
        if self.cluster is not None:
            return bool(self.dashboard) and _dashboard_works()
        try:
            return "dashboard" in client.scheduler_info(n_workers=0).get("services", {})
        except Exception:  # noqa: BLE001 - only for the notice
            return False

    def _started(self, event: tuple) -> None:
        """A worker started task ``key``: its ``time_out``, if it has one, counts from now."""
        _, (key, pid, address, host) = event
        self._starts[key] = (pid, address)
        self.by_node[host] = self.by_node.get(host, 0) + 1
        limit = self._limits.get(key)
        if limit is not None:
            timer = threading.Timer(limit[2], self._expire, (key,))
            timer.daemon = True
            timer.start()

    def size(self) -> int:
        """Workers the tasks spread over (as ``compss_get_number_of_resources`` counts them)."""
        if self.scheduler and self.client is not None:
            return max(1, len(self.client.scheduler_info(n_workers=-1).get("workers", ())))
        return self.workers

    def submit(self, key: str, name: str, payload: bytes, keep_out: tuple, time_out: float | None,
               inputs: list) -> Any:
        """Run the task ``payload`` on a worker; ``inputs``: the Dask futures it reads, in the order
        of its :class:`._worker.Ref` placeholders."""
        from ._worker import run

        client = self.start()
        self._announce(client)
        self.sent += len(payload)
        fut = client.submit(run, payload, keep_out, key, *inputs, key=f"task-{key}", pure=False)
        if time_out:
            self._limits[key] = (fut, name, time_out)
        return fut

    def done(self, key: str) -> None:
        """Task ``key`` is over: forget it."""
        self._limits.pop(key, None)
        self._starts.pop(key, None)
        self._expired.pop(key, None)

    def part(self, answer: Any, path: tuple, key: str) -> Any:
        """Element ``path`` of the answer ``answer`` holds, as a future of its own, made on the
        worker holding the answer."""
        from ._worker import element

        return self.start().submit(element, answer, path, key=f"part-{key}-{'.'.join(map(str, path))}", pure=False)

    def ship(self, held: Any, path: tuple, key: str, bid: str, config: str | None) -> Any:
        """Have a worker holding ``held`` send element ``path`` of it to backend ``bid`` under
        ``key`` (see :func:`._worker.stash`); a future of that."""
        from ._worker import stash

        return self.start().submit(stash, held, path, key, bid, config, key=f"stash-{key}-{bid}", pure=False)

    def fetch(self, fut: Any) -> Any:
        """The value of ``fut``, brought here."""
        from distributed.protocol import serialize_bytelist

        value = fut.result()
        try:
            self.fetched += sum(len(b) for b in serialize_bytelist(value))
        except Exception:  # noqa: BLE001 - counting only
            pass
        return value

    def failure(self, fut: Any, key: str, name: str) -> BaseException:
        """What task ``key`` (named ``name``), whose future ``fut`` failed, fails with: its own error
        (with the worker's traceback as its cause, as a process pool gives it), or
        :class:`TaskWorkerDied` when workers kept dying under it."""
        from concurrent.futures.process import _RemoteTraceback

        from distributed import KilledWorker

        if key in self._expired:
            return self._expired[key]
        if fut.cancelled():
            from ._errors import TaskCancelled

            return TaskCancelled(f"task {name} was cancelled: the run is stopping")
        exc = fut.exception()
        if isinstance(exc, KilledWorker):
            pid, address = self._starts.get(key, (None, None))
            how = self._deaths.seen.get(pid) if pid is not None else None
            where = f" (last pid {pid} at {address}{', ' + how if how else ''})" if pid is not None else ""
            return TaskWorkerDied(f"task {name}: the worker process running it ended abruptly{where}, each time it "
                                  "ran; the other tasks run on in new workers")
        tb = fut.traceback()
        if tb is not None and exc.__cause__ is None:
            import traceback

            exc.__cause__ = _RemoteTraceback('\n"""\n' + "".join(traceback.format_exception(type(exc), exc, tb))
                                             + '"""')
        exc.__traceback__ = None
        return exc

    def _expire(self, key: str) -> None:
        """Task ``key`` ran past its ``time_out``: it fails, and its worker is killed and replaced
        (its future's cancellation tells the engine)."""
        limit = self._limits.get(key)
        if limit is None or limit[0].done():
            return
        fut, name, time_out = limit
        pid, address = self._starts.get(key, (None, None))
        self._expired[key] = TaskTimeout(f"task {name} ran past its time_out of {time_out:g} s: its worker"
                                         f"{f' (pid {pid})' if pid else ''} was killed and replaced")
        fut.cancel()
        self._kill(pid, address)

    def _kill(self, pid: int | None, address: str | None) -> None:
        """Kill a worker process: its nanny starts another. One of the local cluster is this
        process's child; another one is restarted through the scheduler (its nanny kills it)."""
        if self.cluster is not None and pid is not None:
            import signal

            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        elif address is not None and self.client is not None:
            client = self.client
            threading.Thread(target=_quietly, args=(client.restart_workers, [address]), daemon=True).start()

    def warm(self, modules: list[str], hide: tuple) -> None:
        """Have each worker import ``modules`` now, as a task of its own (one each, as a rule: a
        worker that misses it imports them with its first task)."""
        from ._worker import warm

        client = self.start()
        try:
            addresses = list(client.scheduler_info(n_workers=-1).get("workers", ()))
        except Exception:  # noqa: BLE001 - best effort
            return
        self._warming = [client.submit(warm, modules, hide, workers=[address], allow_other_workers=True, pure=False)
                         for address in addresses]  # held: a future nobody holds is cancelled

    def run_everywhere(self, fn: Any, *args: Any) -> dict:
        """``fn(*args)`` on every worker now (not as a task); their answers by worker address."""
        try:
            return self.start().run(fn, *args)
        except Exception:  # noqa: BLE001 - warming and counting are best effort
            return {}

    def moved(self) -> int:
        """Bytes moved for worker tasks so far: payloads sent to workers, values brought back here,
        and what the (live) workers sent each other and exchanged with backends."""
        from ._worker import moved

        between = sum(self.run_everywhere(moved).values()) if self.client is not None else 0
        return self.sent + self.fetched + between

    def abort(self) -> None:
        """Stop now: queued tasks are dropped, the local workers stopped; nothing starts after this."""
        with self._lock:
            self._closed = True
        self._stop()

    def close(self, wait: bool) -> None:
        with self._lock:
            self._closed = True
        self._stop()

    def _stop(self) -> None:
        with self._lock:  # after a start in progress
            client, cluster, self.client, self.cluster = self.client, self.cluster, None, None
        for thing in (client, cluster):
            if thing is not None:
                try:
                    thing.close()
                except Exception:  # noqa: BLE001 - closing a broken cluster
                    pass
        logging.getLogger("distributed.nanny").removeHandler(self._deaths)
        if self._scratch is not None:
            import shutil

            shutil.rmtree(self._scratch, ignore_errors=True)
            self._scratch = None


def _quietly(fn: Any, *args: Any) -> None:
    try:
        fn(*args)
    except Exception:  # noqa: BLE001 - the worker is gone already, or the run ended
        pass


def _dashboard_works() -> bool:
    """Whether Dask can serve its dashboard here (it needs bokeh)."""
    try:
        import bokeh  # noqa: F401
    except ImportError:
        return False
    return True
