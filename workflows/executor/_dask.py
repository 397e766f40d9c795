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

import json
import logging
import os
import re
import sys
import threading
from typing import Any

from ._errors import TaskTimeout, TaskWorkerDied

CONNECT_TIMEOUT = 15  # seconds a --scheduler has to answer
START_LIMIT = 60  # seconds a start may take in all (a local cluster on a loaded machine takes a few)
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
        self._lock = threading.Lock()  # held while starting
        self._refs = threading.Lock()  # guards client, cluster and _closed, never held for long
        self._maker: threading.Thread | None = None  # the thread starting the cluster
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
        """The client, its cluster started now if it is not.

        The cluster is made in a thread of its own while this one waits, at most :data:`START_LIMIT`
        seconds: a signal (SIGTERM, Ctrl-C) is handled meanwhile, its handler's :meth:`abort` never
        waits for a lock the start holds, and a ``--scheduler`` that never answers (a server that
        is not Dask's) is an error, not a hang."""
        with self._lock:  # starters only: abort() and close() never take it
            if self._closed:
                raise RuntimeError("the run was stopped: no more worker tasks")
            if self.client is not None:
                return self.client
            made: dict[str, Any] = {}
            maker = self._maker = threading.Thread(target=self._make, args=(made,), name="executor-dask-start",
                                                   daemon=True)
            maker.start()
            maker.join(limit := CONNECT_TIMEOUT + 10 if self.scheduler else START_LIMIT)
            with self._refs:
                if self.client is None and "error" not in made:
                    made["abandoned"] = True  # what the maker still makes, it closes
            if "error" in made:
                raise made["error"]
            if self.client is None:
                from storage_api.errors import ConfigError

                if self.scheduler:
                    raise ConfigError(f"--scheduler {self.scheduler}: no Dask scheduler answered within {limit} s")
                raise ConfigError(f"the local Dask cluster did not start within {START_LIMIT} s")
            return self.client

    def _make(self, made: dict) -> None:
        """Make the client (and the local cluster), then hand them over, unless the run was stopped
        or :meth:`start` gave up meanwhile: then close them."""
        client = cluster = None
        try:
            import signal

            # the workers this thread spawns start with Ctrl-C blocked (a child inherits the mask,
            # then their set-up ignores it): it is the launcher's, whose own thread still takes it
            signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
            from distributed import Client, LocalCluster

            if self.scheduler:
                client = self._connect(Client)
            else:
                logging.getLogger("distributed.nanny").addHandler(self._deaths)
                import atexit
                import shutil
                import tempfile

                import dask

                scratch = self._scratch = tempfile.mkdtemp(prefix="storage-api-dask-")  # the workers' spill files
                atexit.register(shutil.rmtree, scratch, True)  # again at exit: a dying worker may write late
                dask.config.set({"temporary-directory": scratch})  # the scheduler's, the nannies'
                cluster = LocalCluster(n_workers=self.workers, threads_per_worker=1, processes=True,
                                       local_directory=scratch,
                                       dashboard_address=self.dashboard if _dashboard_works() else None,
                                       silence_logs=logging.CRITICAL, host="127.0.0.1")
                client = Client(cluster, set_as_default=False)
            from ._appsetup import AppSetup

            client.register_plugin(AppSetup(self.paths, self.script))
            client.subscribe_topic(TOPIC, self._started)
        except BaseException as exc:  # noqa: BLE001 - start() raises it
            made["error"] = exc
            for thing in (client, cluster):
                _quietly(getattr(thing, "close", lambda: None))
            return
        with self._refs:
            keep = not self._closed and not made.get("abandoned")
            if keep:
                self.client, self.cluster = client, cluster
        if not keep:
            for thing in (client, cluster):
                _quietly(thing.close if thing is not None else (lambda: None))
            self._remove_scratch()

    def _connect(self, client_class: Any) -> Any:
        """A client of the scheduler ``--scheduler`` names (an address, or a scheduler file);
        :class:`~storage_api.errors.ConfigError` if none answers there."""
        from storage_api.errors import ConfigError

        where = self.scheduler
        is_file = os.path.isfile(where)  # dask scheduler --scheduler-file
        if not is_file and not re.fullmatch(r"(\w+://)?\[?[\w.:-]+\]?:\d+", where):
            raise ConfigError(f"--scheduler {where}: neither a scheduler file (no such file) nor an address "
                              "(tcp://HOST:PORT)")
        if is_file:  # what `dask scheduler --scheduler-file` writes: JSON with the scheduler's address
            try:
                with open(where) as fh:
                    address = json.load(fh)["address"]
                if not isinstance(address, str) or "://" not in address:
                    raise ValueError(address)
            except (OSError, ValueError, KeyError, TypeError):
                raise ConfigError(f"--scheduler {where}: not a Dask scheduler file (JSON with the scheduler's "
                                  "address)") from None
            where = address
        _quiet_failed_clients()
        try:
            return client_class(where, set_as_default=False, timeout=CONNECT_TIMEOUT)
        except Exception as exc:  # noqa: BLE001 - whatever answered there, it was no Dask scheduler
            raise ConfigError(f"--scheduler {self.scheduler}: no Dask scheduler answers there "
                              f"({type(exc).__name__}: {str(exc)[:200]})") from None

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
        """The value of ``fut``, brought here (counted as Dask sizes it: not serialized again)."""
        from dask.sizeof import sizeof

        value = fut.result()
        self.fetched += sizeof(value)
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
        """Stop now: queued tasks are dropped, the local workers stopped; nothing starts after this.
        (From a signal handler too: it takes no lock a start holds, and gives a start in progress
        up to 20 s to close what it made.)"""
        with self._refs:
            self._closed = True
            maker = self._maker
        if maker is not None and maker is not threading.current_thread():
            maker.join(20)  # a start in progress: it closes what it made, its workers included
        self._stop()

    close = abort  # at the end of a run: no start is in progress, and the tasks are done

    def _stop(self) -> None:
        with self._refs:
            client, cluster, self.client, self.cluster = self.client, self.cluster, None, None
        for thing in (client, cluster):
            if thing is not None:
                _quietly(thing.close)
        logging.getLogger("distributed.nanny").removeHandler(self._deaths)
        if cluster is not None:
            self._remove_scratch()

    def _remove_scratch(self) -> None:
        scratch, self._scratch = self._scratch, None
        if scratch is not None:
            import shutil

            shutil.rmtree(scratch, ignore_errors=True)


def _quiet_failed_clients() -> None:
    """A Dask client whose connection failed is collected later, and its ``__del__`` times out
    closing what never opened: a traceback after the run's own one-line error. Keep those out."""
    previous = sys.unraisablehook
    if getattr(previous, "_sa_quiet", False):
        return

    def hook(unraisable: Any) -> None:
        if getattr(unraisable.object, "__qualname__", "") != "Client.__del__":
            previous(unraisable)

    hook._sa_quiet = True  # type: ignore[attr-defined]
    sys.unraisablehook = hook


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
