"""The task engine: futures, data dependencies, and where each task runs.

A call of a ``@task`` function becomes a :class:`Task` whose results are :class:`Future` objects.
Dependencies come from the arguments: a future (or a collection holding futures) waits for the
task that makes it; an object passed INOUT, or an element of a collection a task writes, gets a
new version that later uses read, in whatever container they pass it (:mod:`._versions`); a persistent
object or a file orders its writers against its readers. One dispatcher thread starts tasks whose
inputs are ready, so the app's thread only records them.

Placement, first match wins:
1. an argument is a persistent object (``getID()`` not ``None``): the backend holding the first one;
2. an input is a result kept on a backend: the backend keeping the first one, unless it is much
   busier than another backend keeping an input (results of backend tasks stay where they were
   made, as COMPSs leaves outputs on the worker that wrote them);
3. otherwise a Dask worker (:mod:`._dask`), which gets the function by reference and its
   arguments pickled, and keeps its answer: the results of worker tasks that later worker tasks read
   go from worker to worker, and come to the app's process only for ``compss_wait_on`` (or a task
   that must run on a backend, which gets them from here).
A value sent to a backend from here is kept there (:class:`~storage_api._messages.Stash`)
and named (:class:`~storage_api._messages.Kept`), not re-sent, the next time. What backends keep
is freed once the app drops or deletes the futures (:mod:`._frees`), what workers keep once the
engine drops their Dask futures; dead workers and ``time_out`` are :mod:`._dask`'s.
"""

from __future__ import annotations

import collections
import inspect
import itertools
import queue
import threading
import uuid
from typing import Any

from storage_api._messages import Kept, Stash

from . import _returns
from ._decorators import Param, TaskSpec
from ._dask import Workers
from ._errors import TaskCancelled, TaskTimeout
from ._frees import Frees
from ._serial import dumps_task, for_backend, pending
from ._structure import SHARED_VALUES, at, leaf_paths, rebuild, set_at, write_back
from ._versions import Versions, followable
from ._worker import Ref
from ._remote import Backends


class Future:
    """A value a task will produce: element ``path`` of the task's answer."""

    __slots__ = ("task", "path", "__weakref__")

    def __init__(self, task: Task, path: tuple) -> None:
        self.task = task
        self.path = path

    def __repr__(self) -> str:
        return f"<Future of {self.task.spec.name} #{self.task.n}{list(self.path)}>"

    def __reduce_ex__(self, protocol: Any) -> Any:
        return pending(self)  # a future the engine did not see: see _serial.Pending

    def __copy__(self) -> Future:
        return self  # a reference to a value to come: copies of a structure share it

    def __deepcopy__(self, memo: dict) -> Future:
        return self


class Task:
    __slots__ = ("n", "spec", "args", "kwargs", "outputs", "writes", "pending", "dependents", "deps",
                 "finished", "error", "answer", "where", "key", "done", "cache", "stashed", "force_local", "after",
                 "n_returns", "holders", "users", "deleted", "release", "ordered", "dask", "parts", "__weakref__")

    def __init__(self, n: int, spec: TaskSpec) -> None:
        self.n = n
        self.spec = spec
        self.args: list = []
        self.kwargs: dict = {}
        self.outputs: list[tuple] = []  # paths into (args, kwargs) whose values after the call are results
        self.writes: list[str] = []  # persistent ids the task may mutate
        self.pending = 0
        self.dependents: list[Task] = []
        self.deps: list[Task] = []  # tasks whose results it reads: their failure is its failure
        # tasks it only runs after (earlier readers of what it writes): their failure is not its
        self.after: list[Task] = []
        self.finished = False
        self.error: BaseException | None = None
        self.answer: list | None = None  # local answer: [return value, *outputs]
        self.where: str | None = None  # backend id keeping the answer
        self.key = uuid.uuid4().hex
        self.done = threading.Event()
        self.cache: dict[tuple, Any] = {}  # remote values fetched to this process
        self.stashed: dict[tuple, set[str]] = {}  # local values already kept on these backends
        self.force_local = False
        self.n_returns = 1  # values the task declares (see _returns): its process keeps only those
        self.holders: set[str] = set()  # backends keeping its answer (where it ran, those that fetched it)
        self.users = 0  # tasks reading its results that have not finished: they need what backends keep
        self.deleted: set[tuple] = set()  # paths of its results the app compss_delete_object'ed
        self.release: Any = None  # frees what backends keep of it (see _frees), once
        self.ordered: list[Any] = []  # the persistent objects and files it reads or writes
        self.dask: Any = None  # the Dask future of its answer, kept on the worker that ran it
        self.parts: dict[tuple, Any] = {}  # Dask futures of elements of that answer, made where it is


def _empty_instance(cls: Any) -> Any:
    """``cls()`` for a user class that can be built without arguments, else ``None``."""
    if not inspect.isclass(cls) or cls.__module__ == "builtins":
        return None
    try:
        return cls()
    except TypeError:  # needs arguments: a plain future, as PyCOMPSs falls back to
        return None


def _is_psco(v: Any) -> bool:
    get = getattr(type(v), "getID", None)
    if get is None or isinstance(v, type):
        return False
    try:
        return v.getID() not in (None, "None")
    except TypeError:
        return False


def _config_file() -> str | None:
    """The configuration file this process reaches the store with, if it has one."""
    import os

    from storage_api._config import default_config_path

    path = os.environ.get("STORAGE_API_CONFIG")
    if path:
        return os.path.abspath(path)
    default = default_config_path()
    return str(default) if default.is_file() else None


class Engine:
    """One run's tasks. ``workers``: size of the local Dask cluster; ``scheduler``: the address of
    a running Dask scheduler whose workers run the tasks instead."""

    def __init__(self, workers: int, *, paths: list[str] | None = None, script: str | None = None,
                 backend_slots: int = 1, scheduler: str | None = None, dashboard: str | None = ":0") -> None:
        self.paths = list(paths or [])  # sys.path entries backends need to import the app's functions
        self.script = script
        self._lock = threading.RLock()
        self._idle = threading.Condition(self._lock)
        self._active = 0
        self._count = itertools.count(1)
        self._events: queue.SimpleQueue = queue.SimpleQueue()
        self._versions = Versions()
        self._writer: dict[Any, Task] = {}
        self._readers: dict[Any, dict[Task, None]] = {}  # of the current versions, until they finish
        self._failures: list[BaseException] = []
        self._local = Workers(max(1, workers), script=self.script, paths=self.paths, scheduler=scheduler,
                              dashboard=dashboard)
        self._aborted = False
        self._remote: Any = None
        self._frees = Frees(lambda: self._events.put(("flush", None, None)))
        self.backend_slots = max(1, backend_slots)  # tasks running at once on one backend
        self._inflight: dict[str, int] = {}
        self._queued: dict[str, collections.deque] = {}
        self.tasks_local = 0
        self.tasks_remote = 0
        self._backend_nodes: dict[str, int] = {}  # tasks sent to backends, by their node
        self._thread = threading.Thread(target=self._dispatch_loop, name="executor-dispatch", daemon=True)
        self._thread.start()

    # ================================================================= submission (app thread)
    def submit(self, spec: TaskSpec, args: tuple, kwargs: dict) -> Any:
        bound = spec.signature.bind(*args, **kwargs)
        n = spec.n_returns(bound)
        task = Task(next(self._count), spec)
        task.n_returns = n
        deps: list[Task] = []
        positional = self._positional(spec)
        n_positional = len(bound.args)
        registrations: list[Any] = []
        versions: list[Any] = []  # new versions the task makes: recorded once every argument is read
        given = dict(bound.arguments)  # the caller's objects (tracking replaces them by snapshots)
        with self._lock:
            for name, value in list(bound.arguments.items()):
                param = spec.direction(name)
                kind = spec.signature.parameters[name].kind
                if kind is inspect.Parameter.VAR_POSITIONAL:
                    param = Param("COLLECTION_IN", 1) if param.direction == "IN" else param
                base: tuple = (positional.index(name),) if name in positional and positional.index(name) < n_positional else (name,)
                if kind is inspect.Parameter.VAR_KEYWORD:
                    base = ()
                bound.arguments[name] = self._track(task, value, param, deps, base, registrations, versions)
            # An object passed twice (two INOUTs, in two collections) is read by both as it was
            # before the call: recording the task's own version of it before reading the second
            # made the task wait for itself, and the whole run hung.
            for record in versions:
                record()
            task.args = list(bound.args)
            task.kwargs = dict(bound.kwargs)
            readers, task.after = task.after, []
            for d in deps:
                if d is task or d in task.deps:
                    continue
                task.deps.append(d)
                d.users += 1
                if not d.finished:
                    d.dependents.append(task)
                    task.pending += 1
            for d in readers:
                if d is task or d in task.deps or d in task.after:
                    continue
                task.after.append(d)
                if not d.finished:
                    d.dependents.append(task)
                    task.pending += 1
            self._active += 1
            ready = task.pending == 0
        for register in registrations:
            register()
        if ready:
            self._events.put(("ready", task, None))
        if n == 0:
            return None
        if n == 1:
            return self._returned(task, Future(task, (0,)), 0, given)
        return tuple(self._returned(task, Future(task, (0, i)), i, given) for i in range(n))

    def _returned(self, task: Task, fut: Future, i: int, given: dict[str, Any]) -> Any:
        """What the caller holds for return value ``i``: the future, or as PyCOMPSs, an object
        that stands for it and whose next version it is: the argument ``returns="{{name}}"``
        names, or an empty instance of a user class declared in ``returns`` (so that the class's
        task methods can be called on it before it is computed)."""
        name = _returns.param_name(task.spec.returns)
        if name is not None:
            stand_in = given.get(name)
        else:
            stand_in = _empty_instance(task.spec.return_type(i))
        if stand_in is None or isinstance(stand_in, SHARED_VALUES):
            return fut
        with self._lock:
            self._versions.set(stand_in, fut)
        return stand_in

    def _track(self, task: Task, value: Any, param: Param, deps: list[Task], base: tuple,
               registrations: list, versions: list) -> Any:
        """Record the dependencies of one argument; return what the task will get (a snapshot)."""
        writes = param.writes

        def leaf(v: Any) -> Any:
            if isinstance(v, Future):
                deps.append(v.task)
                return v
            if _is_psco(v):
                self._order(task, ("psco", v.getID()), writes, deps)
                if writes:
                    task.writes.append(v.getID())
                return v
            if param.is_file and isinstance(v, str):
                task.force_local = True
                self._order(task, ("file", v), writes, deps)
            return v

        snapshot = (rebuild(value, leaf, self._latest) if param.collection or param.direction == "IN"
                    else leaf(self._latest(value)))
        if not base and param.direction != "IN":
            return snapshot
        if param.collection and param.writes:
            for lp in leaf_paths(value, param.depth, dicts=param.is_dictionary):
                element = at(value, lp)
                if _is_psco(element):  # its state is the store's: ordered above, nothing to return
                    continue
                index = len(task.outputs)
                task.outputs.append(base + lp)
                fut = Future(task, (1 + index,))
                for depth in range(len(lp)):  # a newer version of every element supersedes the rows'
                    versions.append(lambda row=at(value, lp[:depth]): self._versions.forget(row))
                if followable(element):  # by identity, in whichever container it is passed next
                    versions.append(lambda element=element, fut=fut: self._versions.set(element, fut))
                else:  # numbers, strings, plain object() placeholders: replaced where they are
                    registrations.append(lambda lp=lp, fut=fut: set_at(value, lp, fut))
        elif param.direction in ("INOUT", "OUT", "CONCURRENT", "COMMUTATIVE") and not _is_psco(value) \
                and not isinstance(value, SHARED_VALUES):  # 5 or "a" INOUT: every other 5 would follow it
            index = len(task.outputs)
            task.outputs.append(base)
            fut = Future(task, (1 + index,))
            versions.append(lambda: self._versions.set(value, fut))
        return snapshot

    def _latest(self, v: Any) -> Any:
        return self._versions.latest(v)

    def _order(self, task: Task, key: Any, writes: bool, deps: list[Task]) -> None:
        last = self._writer.get(key)
        if writes:
            # after the readers of the current version, which it must not change under them (only
            # ordered: as in PyCOMPSs, a reader's failure does not fail the next writer)
            task.after.extend(self._readers.pop(key, []))
            if last is not None:
                deps.append(last)
            self._writer[key] = task
        else:
            if last is not None:
                deps.append(last)
            self._readers.setdefault(key, {})[task] = None
        task.ordered.append(key)

    # ================================================================= dispatch (one thread)
    def _dispatch_loop(self) -> None:
        while True:
            kind, task, payload = self._events.get()
            if kind == "stop":
                return
            if kind == "flush":
                self._flush(wait=False)
                continue
            self._handle(kind, task, payload)
            del task, payload  # or the last task handled stays alive (and its results kept) until the next event

    def _handle(self, kind: str, task: Task, payload: Any) -> None:
        try:
            if kind == "ready":
                self._launch(task)
            elif kind == "expire":
                if not task.finished:
                    self._finish(task, ("error", TaskTimeout(
                        f"task {task.spec.name} ran past its time_out of {task.spec.time_out:g} s on a backend: "
                        "the app stopped waiting (the backend runs it to its end and its result is dropped)")))
            elif task.finished:  # a backend's late answer to a task that timed out
                self._late(task, payload)
            else:
                self._finish(task, payload)
        except BaseException as exc:  # noqa: BLE001 - a task's failure, never the loop's
            if not task.finished:
                self._finish(task, ("error", exc))

    def _launch(self, task: Task) -> None:
        for d in task.deps:
            if d.error is not None:
                policy = (d.spec.on_failure or {}).get("management")
                err = TaskCancelled(f"{d.spec.name} failed: {d.error!r}") if policy == "CANCEL_SUCCESSORS" else d.error
                self._finish(task, ("error", err))
                return
        target = None if task.force_local else self._placement(task)
        if target is None:
            self.tasks_local += 1
            inputs: list[Any] = []
            args = rebuild(task.args, lambda v: self._worker_value(v, inputs))
            kwargs = rebuild(task.kwargs, lambda v: self._worker_value(v, inputs))
            payload = dumps_task((task.spec.wrapper, args, kwargs, task.outputs, task.n_returns, task.spec.name),
                                 args, kwargs, self._positional(task.spec), task.spec.name)
            from workflows.quiet import kept_out

            fut = self._local.submit(task.key, task.spec.name, payload, kept_out(), task.spec.time_out, inputs)
            fut.add_done_callback(lambda f: self._events.put(("done", task, ("local", f))))
        elif self._inflight.get(target, 0) >= self.backend_slots:
            self._queued.setdefault(target, collections.deque()).append(task)
        else:
            self._send_remote(task, target)

    def _send_remote(self, task: Task, target: str) -> None:
        """Ship the task to ``target`` (at most ``backend_slots`` in flight there: the others queue)."""
        stashes: list[tuple[Task, tuple]] = []
        try:
            args = rebuild(task.args, lambda v: self._remote_value(v, target, stashes))
            kwargs = rebuild(task.kwargs, lambda v: self._remote_value(v, target, stashes))
            args, kwargs = for_backend(args, kwargs, self._positional(task.spec), task.spec.name, rebuild)
            fut = self.remote.submit(target, task, args, kwargs)
        except BaseException as exc:  # noqa: BLE001 - e.g. an argument that cannot be pickled
            self._finish(task, ("error", exc))
            return
        self._inflight[target] = self._inflight.get(target, 0) + 1
        self.tasks_remote += 1
        node = self.remote.node_of(target)
        self._backend_nodes[node] = self._backend_nodes.get(node, 0) + 1
        fut.add_done_callback(lambda f: self._events.put(("done", task, ("remote", f, target, stashes))))
        if task.spec.time_out:  # the app stops waiting; the backend runs the task to its end
            timer = threading.Timer(task.spec.time_out, self._events.put, (("expire", task, None),))
            timer.daemon = True
            timer.start()

    @staticmethod
    def _positional(spec: TaskSpec) -> list[str]:
        return [n for n, p in spec.signature.parameters.items()
                if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]

    def _placement(self, task: Task) -> str | None:
        """The backend of the first persistent argument; else the backend keeping the task's first
        remote input, unless it has more than ``2 x backend_slots`` tasks more to do than another
        backend keeping an input (then that one: locality first, but no pile-up); else ``None``
        (a Dask worker)."""
        pscos: list[str] = []
        holders: list[str] = []

        def leaf(v: Any) -> None:
            if pscos:
                return
            if _is_psco(v):
                pscos.append(self.remote.backend_of(v))
            elif isinstance(v, Future) and v.task.where is not None and v.task.where not in holders:
                holders.append(v.task.where)

        rebuild(task.args, leaf)
        rebuild(task.kwargs, leaf)
        if pscos:
            return pscos[0]
        if not holders:
            return None
        load = {b: self._inflight.get(b, 0) + len(self._queued.get(b, ())) for b in holders}
        best = min(holders, key=lambda b: (load[b], holders.index(b)))
        return best if load[holders[0]] - load[best] > 2 * self.backend_slots else holders[0]

    def _worker_value(self, v: Any, inputs: list) -> Any:
        """What a worker task gets for argument leaf ``v``: a future's value is a :class:`Ref` to
        what a worker holds (Dask brings it there), else the value itself (one this process has,
        or fetches from the backend keeping it)."""
        if not isinstance(v, Future):
            return v
        t = v.task
        if t.dask is not None and v.path not in t.cache:
            answer, path = self._held(t, v.path)
            inputs.append(answer)
            return Ref(len(inputs) - 1, path)
        return self.value(v)

    def _held(self, t: Task, path: tuple) -> tuple[Any, tuple]:
        """Where element ``path`` of worker task ``t``'s answer is: a Dask future and the path in
        its value. A task of one value (the answer is ``[value]``) has it in its answer; of an
        answer of several, each element read becomes a future of its own, so that only it moves."""
        if t.n_returns <= 1 and not t.outputs:
            return t.dask, path
        part = t.parts.get(path)
        if part is None:
            part = t.parts[path] = self._local.part(t.dask, path, t.key)
        return part, ()

    def _remote_value(self, v: Any, target: str, stashes: list) -> Any:
        if not isinstance(v, Future):
            return v
        t = v.task
        if t.where is not None:
            t.holders.add(target)  # the target fetches a copy and keeps it until this answer is freed
            return Kept(t.where, t.key, v.path)
        if target in t.stashed.get(v.path, ()):
            return Kept(target, f"{t.key}/{v.path}", (0,))
        if t.dask is not None and v.path not in t.cache and self._ship(t, v.path, target):
            return Kept(target, f"{t.key}/{v.path}", (0,))
        stashes.append((t, v.path))
        return Stash(f"{t.key}/{v.path}", self.value(v) if t.dask is not None else at(t.answer, v.path))

    def _ship(self, t: Task, path: tuple, target: str) -> bool:
        """Have the worker holding element ``path`` of worker task ``t``'s answer send it to backend
        ``target`` itself; whether it did (a worker that cannot reach the store leaves it to this
        process, which fetches the value and sends it along with the task)."""
        held, at_path = self._held(t, path)
        try:
            self._local.ship(held, at_path, f"{t.key}/{path}", target, _config_file()).result()
        except Exception:  # noqa: BLE001 - e.g. the worker has no configuration of the store
            return False
        t.stashed.setdefault(path, set()).add(target)
        self._frees.hold(t)
        return True

    def _late(self, task: Task, outcome: tuple) -> None:
        """What a backend answers for a task the app gave up on: its slot is free, its result freed."""
        f, target = outcome[1], outcome[2]
        self._backend_done(target)
        if f.exception() is None:
            task.holders.add(target)
            self._frees.hold(task)
            task.release()

    def _backend_done(self, target: str) -> None:
        self._inflight[target] -= 1
        waiting = self._queued.get(target)
        if waiting:
            self._send_remote(waiting.popleft(), target)

    def _finish(self, task: Task, outcome: tuple) -> None:
        if outcome[0] == "local":
            f = outcome[1]
            if f.status == "finished":
                task.dask = f
            else:
                task.error = self._local.failure(f, task.key, task.spec.name)
            self._local.done(task.key)
        elif outcome[0] == "remote":
            f, target, stashes = outcome[1], outcome[2], outcome[3]
            self._backend_done(target)
            try:
                f.result()
                task.where = target
                task.holders.add(target)
                self._frees.hold(task)
                for t, path in stashes:
                    t.stashed.setdefault(path, set()).add(target)
                    self._frees.hold(t)
            except BaseException as exc:  # noqa: BLE001
                task.error = exc
        else:
            task.error = outcome[1]
        if task.error is not None and task.spec.on_failure and \
                task.spec.on_failure.get("management") in ("IGNORE", "CANCEL_SUCCESSORS"):
            default = task.spec.on_failure.get("returns")
            task.answer = [default, *([None] * len(task.outputs))]
            if task.spec.on_failure["management"] == "IGNORE":
                task.error = None
        elif task.error is not None:
            self._failures.append(task.error)
        with self._lock:
            task.finished = True
            dependents, task.dependents = task.dependents, []
            task.args = task.kwargs = None  # type: ignore[assignment]
            for d in task.deps:
                d.users -= 1
                self._maybe_release(d)
            task.deps, task.after = [], []  # which would keep every earlier task of the run alive
            self._unorder(task)
            self._maybe_release(task)
            for d in dependents:
                d.pending -= 1
                if d.pending == 0:
                    self._events.put(("ready", d, None))
            self._active -= 1
            self._idle.notify_all()
        task.done.set()

    # ================================================================= values (any thread)
    def value(self, fut: Future) -> Any:
        """The value of a future (waiting for its task; fetched once if a backend keeps it)."""
        t = fut.task
        t.done.wait()
        if t.error is not None and t.answer is None:
            with self._lock:  # seen by the app: the final barrier does not raise it again
                self._failures = [f for f in self._failures if f is not t.error]
            raise t.error
        if t.dask is not None:
            if fut.path not in t.cache:
                held, path = self._held(t, fut.path)
                t.cache[fut.path] = at(self._local.fetch(held), path) if path else self._local.fetch(held)
            return t.cache[fut.path]
        if t.where is None:
            return at(t.answer, fut.path)
        if fut.path not in t.cache:
            t.cache[fut.path] = self.remote.fetch(t.where, t.key, fut.path)
        return t.cache[fut.path]

    def wait_on(self, obj: Any) -> Any:
        def leaf(v: Any) -> Any:
            if isinstance(v, Future):
                return self.value(v)
            if _is_psco(v):
                writer = self._writer.get(("psco", v.getID()))
                if writer is not None:
                    writer.done.wait()
                    if writer.error is not None:
                        raise writer.error
            return v

        synced = rebuild(obj, leaf, self._latest)
        if type(obj) is list and type(synced) is list and self._stale(obj):
            obj[:] = synced  # a list a task updated as a whole: as a sequential run leaves it
        else:
            write_back(obj, synced, self._stale)
        return synced

    def settle(self, obj: Any) -> None:
        """Wait until the submitted tasks that read or write persistent ``obj`` are done (before
        the app deletes it, as a sequential run would have run them first)."""
        if not _is_psco(obj):
            return
        key = ("psco", obj.getID())
        with self._lock:  # a writer runs after the readers before it: the last one and its readers
            pending = [t for t in (self._writer.get(key), *self._readers.get(key, ())) if t is not None]
        for t in pending:
            t.done.wait()

    def _stale(self, v: Any) -> bool:
        return isinstance(v, Future) or self._latest(v) is not v

    def forget(self, obj: Any) -> None:
        """``compss_delete_object``: stop tracking versions of ``obj`` (persistent objects stay); a
        future, or the future of the version a task made of ``obj``, is deleted: once every result
        of its task is, and the tasks reading them ran, what backends keep of it is freed."""
        with self._lock:
            fut = obj if isinstance(obj, Future) else self._versions.latest(obj)
            self._versions.forget(obj)
            if isinstance(fut, Future):
                t = fut.task
                t.deleted.add(fut.path)
                t.cache.pop(fut.path, None)
                self._maybe_release(t)

    def _unorder(self, task: Task) -> None:
        """A finished task orders nothing any more: a later writer need not wait for it, and a later
        reader needs it only if it failed (whose error that reader then gets)."""
        for key in task.ordered:
            readers = self._readers.get(key)
            if readers is not None:
                readers.pop(task, None)
            if self._writer.get(key) is task and task.error is None:
                del self._writer[key]
        task.ordered = []

    def _maybe_release(self, t: Task) -> None:
        if t.release is not None and t.finished and t.users == 0 and t.deleted \
                and len(t.deleted) >= t.n_returns + len(t.outputs):
            t.release()

    def _flush(self, wait: bool, everything: bool = False) -> None:
        batch = self._frees.take(everything)
        if batch:
            self.remote.drop(batch, wait=wait)

    def barrier(self) -> None:
        """Wait until every submitted task finished; raise the first failure since the last barrier."""
        with self._idle:
            while self._active:
                self._idle.wait()
            failures, self._failures = self._failures, []
        self._flush(wait=True)
        if failures:
            raise failures[0]

    # ================================================================= machinery
    @property
    def remote(self) -> Any:
        if self._remote is None:
            self._remote = Backends(self)
        return self._remote

    def by_node(self) -> dict[str, dict[str, int]]:
        """Tasks started so far, by node: ``{"workers": {host: n}, "backends": {node: n}}``."""
        return {"workers": dict(self._local.by_node), "backends": dict(self._backend_nodes)}

    def worker_moved(self) -> int:
        """Bytes moved for worker tasks so far (see :func:`workflows.executor.bytes_moved`)."""
        return self._local.moved()

    @property
    def workers(self) -> int:
        """Workers the tasks off the store spread over."""
        return self._local.size()

    def start_pool(self) -> None:
        """Start the workers now (see :meth:`._dask.Workers.start`), from the app's thread before the
        app runs, so that Dask's imports never race the app's (numpy "partially initialized")."""
        self._local.start()

    def abort(self) -> None:
        """Stop now (Ctrl-C, or the app failed): queued tasks are dropped, the local cluster stopped
        (they ignore Ctrl-C, so that it does not print a traceback per worker), and :meth:`close`
        does not wait for tasks still running on backends."""
        self._aborted = True
        self._local.abort()

    def warm_up(self, modules: list[str], hide: tuple[str, ...] = (), backends: bool = False) -> None:
        """Have each Dask worker, and with ``backends`` each live backend, import ``modules`` now
        (quietly, without ``hide``), while the app prepares its run, instead of in the middle of
        the first tasks that need them."""
        self._local.warm(list(modules), tuple(hide))
        if backends:
            self.remote.warm(list(modules), tuple(hide))

    def close(self) -> None:
        try:
            if not self._aborted:
                self.barrier()
        finally:
            self._events.put(("stop", None, None))
            self._local.close()
            if self._remote is not None:
                self._flush(wait=True, everything=True)
