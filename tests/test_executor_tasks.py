"""A task call behaves the same whether it runs in a local worker or on the backend holding a
persistent argument: its declared returns, the functions passed to it, what cannot travel. Each
test runs an app through the launcher against a real deployment and compares the two places."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from tests.conftest import ROOT, run_python
from tests.test_executor import run_launcher
from tests.test_executor_semantics import launch

# Every task takes an ``anchor`` first: a plain number keeps it in a local worker, a persistent
# block sends it to the backend holding the block.
APP = '''
import json, os, sys, threading, time
from pycompss.api.task import task
from pycompss.api.api import compss_wait_on, compss_barrier
from storage_api.errors import StoreError
from workflows.models.blocks import PersistentBlock

@task()
def emit(anchor):   # no return statement, a generator: no values declared
    yield anchor

@task(returns=0)
def start(anchor):
    return threading.Lock()   # a value nobody declared (and pickle refuses)

@task(returns=2)
def two(anchor):
    return 1

@task(returns=3)
def three(anchor):
    return 1, 2

@task(returns=2)
def extra(anchor):
    return 1, 2, 3   # PyCOMPSs keeps the first two

@task(returns=1)
def apply(anchor, f):
    return [os.getpid(), f(3)]

@task(returns=1, time_out=1)
def late(anchor, seconds):
    time.sleep(seconds)
    return seconds

def square(x):
    return x * x

class Point:   # a class of the app script: a backend knows it by the script's file
    def __init__(self, x):
        self.x = x

@task(returns=1)
def moved(anchor, p):
    return Point(p.x + 1)

def adder(k):
    def add(v):
        return v + k
    return add

def failure(call):
    try:
        compss_wait_on(call)
        return "no error"
    except Exception as exc:
        return [type(exc).__name__, isinstance(exc, StoreError), str(exc)]

def sections(anchor):
    out = {"undeclared": [emit(anchor), start(anchor)]}
    compss_barrier()   # it failed: the worker or the backend pickled the generator
    out["mismatch"] = [failure(two(anchor)[1]), failure(three(anchor)[0]), compss_wait_on(list(extra(anchor)))]
    calls = [apply(anchor, square), apply(anchor, lambda v: v + 1), apply(anchor, adder(10))]
    out["pids"] = sorted({pid for pid, _ in compss_wait_on(calls)})
    out["functions"] = [value for _, value in compss_wait_on(calls)]
    out["unsendable"] = failure(apply(anchor, threading.Lock()))
    point = compss_wait_on(moved(anchor, Point(1)))
    out["script_class"] = [type(point) is Point, point.x]
    began = time.monotonic()
    out["time_out"] = [failure(late(anchor, 4)), time.monotonic() - began, compss_wait_on(late(anchor, 0))]
    return out

if __name__ == "__main__":
    block = PersistentBlock([[5.0]])
    block.make_persistent()
    out = {"local": sections(0), "backend": sections(block), "app": os.getpid()}
    block.delete_persistent(keep_state=False)
    print("RESULT " + json.dumps(out))
'''


def test_a_task_behaves_the_same_in_a_local_worker_and_on_a_backend(cluster, tmp_path: Path) -> None:
    out = launch(tmp_path, APP, [], command=("-m", "storage_api", "run"),
                 env={"STORAGE_API_CONFIG": str(cluster.dep.config_path)})
    backend_pids = {b.pid for b in cluster.dep.backends}
    local, remote = out["local"], out["backend"]
    assert out["app"] not in local["pids"] + remote["pids"]
    assert set(local["pids"]).isdisjoint(backend_pids) and len(remote["pids"]) == 1 and set(remote["pids"]) <= backend_pids
    for place in (local, remote):
        # no values declared: none kept, so nothing pickled (the run failed on the generator)
        assert place["undeclared"] == [None, None]
        (kind2, store2, msg2), (kind3, store3, msg3), kept = place["mismatch"]
        assert kind2 == kind3 == "ReturnsMismatch" and not store2 and not store3
        assert "two" in msg2 and "declared 2 returns" in msg2 and "int" in msg2  # was TypeError: 'int' ... not subscriptable
        assert "three" in msg3 and "declared 3 returns" in msg3 and "got 2" in msg3  # was IndexError
        assert kept == [1, 2]
        # a function of the app script, a lambda, a closure (on backends: ClassNotFound, PicklingError)
        assert place["functions"] == [9, 4, 13]
        assert place["script_class"] == [True, 2]  # an object of a class of the app script, there and back
        kind, is_store_error, message = place["unsendable"]
        assert kind == "ArgumentNotSendable" and is_store_error
        assert "argument 'f'" in message and "apply" in message and "lock" in message
        (kind, _, message), waited, after = place["time_out"]
        assert kind == "TaskTimeout" and "late" in message and "time_out of 1 s" in message
        assert waited < 3.5 and after == 0  # it waited the 4 s and returned 4


def test_a_script_without_a_main_guard_is_named_when_its_top_level_fails_on_a_backend(cluster, tmp_path: Path) -> None:
    """A backend imports the app script to find its task functions, so code outside the
    ``__main__`` guard runs there too; when it fails there (here: it reads the app's arguments),
    the task's error says so and how to fix it (it was a bare ``RemoteError`` of the int() call)."""
    app = '''
import json, sys
from pycompss.api.task import task
from pycompss.api.api import compss_wait_on
from workflows.executor import TaskError
from workflows.models.blocks import PersistentBlock

SIZE = int(sys.argv[1])   # top-level code: a backend has no such argument

@task(returns=1)
def first(block):
    return SIZE

block = PersistentBlock([[5.0]])
block.make_persistent()
try:
    out = compss_wait_on(first(block))
except TaskError as exc:
    out = str(exc)
block.delete_persistent(keep_state=False)
print("RESULT " + json.dumps(out))
'''
    out = launch(tmp_path, app, ["7"], command=("-m", "storage_api", "run"),
                 env={"STORAGE_API_CONFIG": str(cluster.dep.config_path)})
    assert "top-level code raised" in out and "task __main__.first" in out and "backend" in out
    assert 'if __name__ == "__main__":' in out


def test_what_backends_keep_for_a_run_is_freed_once_the_app_drops_it(cluster, tmp_path: Path) -> None:
    """A backend task's answer stays on its backend for later tasks; it is freed there when the
    app's future is garbage-collected or deleted (not at the end of the run), and only after the
    tasks that read it ran. The app asks the backend itself whether it still keeps the answer."""
    app = '''
import gc, json, time
from pycompss.api.task import task
from pycompss.api.api import compss_wait_on, compss_delete_object, compss_barrier
from storage_api import _messages as m
from storage_api._context import current as client
from storage_api.errors import StoreError
from workflows.executor import current
from workflows.models.blocks import PersistentBlock

@task(returns=1)
def produce(block, i):
    return [i] * 1000

@task(returns=1)
def consume(block, xs, delay):
    time.sleep(delay)
    return sum(xs)

def kept(where):
    try:
        client().send(where[0], m.TaskResult(where[1], None))
        return True
    except StoreError:   # "no task result ... on this backend"
        return False

def place(fut):
    return (fut.task.where, fut.task.key)

if __name__ == "__main__":
    block = PersistentBlock([[5.0]])
    block.make_persistent()
    out = {}
    r = produce(block, 1)
    value = compss_wait_on(r)[0]
    where = place(r)
    before = kept(where)
    del r
    gc.collect()
    compss_barrier()
    out["collected"] = [value, before, kept(where)]
    r = produce(block, 2)
    total = consume(block, r, 1.0)   # still to run when r is deleted: it needs r on the backend
    compss_delete_object(r)
    out["deleted"] = [compss_wait_on(total), kept(place(r))]
    compss_barrier()
    out["deleted"].append(kept(place(r)))
    del r, total
    many = [produce(block, i) for i in range(300)]
    compss_wait_on(many)
    del many
    gc.collect()
    compss_barrier()
    out["held"] = current()._frees.held   # the app's own bookkeeping: one entry per task, kept until the end
    block.delete_persistent(keep_state=False)
    print("RESULT " + json.dumps(out))
'''
    out = launch(tmp_path, app, [], command=("-m", "storage_api", "run"),
                 env={"STORAGE_API_CONFIG": str(cluster.dep.config_path)})
    assert out["collected"] == [1, True, False]
    # the answer a pending task reads survives its deletion until that task ran
    assert out["deleted"] == [2000, True, False]
    assert out["held"] == 0


def test_a_dead_or_timed_out_local_worker_fails_only_its_task(tmp_path: Path) -> None:
    """``os._exit`` in a task (a crash, a kill) broke the whole worker pool: that task and every
    later one failed with BrokenProcessPool. Now that task fails alone, a task stopped with it runs
    again, and later tasks run in new workers. ``time_out`` stops a task (the worker's alarm), or
    kills its worker when the task does not get back to the interpreter."""
    app = '''
import json, os, signal, time
from pycompss.api.task import task
from pycompss.api.api import compss_wait_on

@task(returns=1)
def crash(x):
    time.sleep(0.3)
    os._exit(4)

@task(returns=1)
def slow(x):
    time.sleep(1.0)
    return x

@task(returns=1, time_out=1)
def sleepy(x):
    time.sleep(30)
    return x

@task(returns=1, time_out=1)
def stubborn(x):
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGALRM})   # the alarm cannot stop it
    time.sleep(30)
    return x

def attempt(f):
    try:
        return compss_wait_on(f)
    except Exception as e:
        return [type(e).__name__, str(e)]

if __name__ == "__main__":
    out = {}
    crashed, beside = crash(1), slow(2)   # two workers: slow runs while crash's worker dies
    out["crash"] = [attempt(crashed), attempt(beside), attempt([slow(i) for i in range(3)])]
    start = time.monotonic()
    out["sleepy"] = [attempt(sleepy(1)), time.monotonic() - start]
    start = time.monotonic()
    out["stubborn"] = [attempt(stubborn(1)), time.monotonic() - start, attempt(slow(9))]
    print("RESULT " + json.dumps(out))
'''
    out = launch(tmp_path, app, [])
    (kind, message), beside, later = out["crash"]
    assert kind == "TaskWorkerDied" and "crash" in message and "exit code 4" in message
    assert beside == 2 and later == [0, 1, 2]
    (kind, message), took = out["sleepy"]
    assert kind == "TaskTimeout" and "sleepy" in message and "time_out of 1 s" in message
    assert took < 10  # it slept 30 s and returned its value
    (kind, message), took, after = out["stubborn"]
    assert kind == "TaskTimeout" and "killed" in message and took < 15
    assert after == 9


def test_an_uncaught_app_error_shows_the_app_frames_only(tmp_path: Path) -> None:
    """As ``python APP.py`` would print it: the app's frames, and the task's own frame from the
    worker, not the launcher's and executor's (about 15 of them came first); all with
    STORAGE_API_DEBUG=1."""
    app = '''
from pycompss.api.task import task
from pycompss.api.api import compss_wait_on

@task(returns=1)
def boom(x):
    raise KeyError(f"bad {x}")

def helper():
    return compss_wait_on(boom(1))

if __name__ == "__main__":
    helper()
'''
    script = tmp_path / "app.py"
    script.write_text(app)
    trimmed = run_launcher(tmp_path, app)
    assert trimmed.returncode == 1
    files = [line.split('"')[1] for line in trimmed.stderr.splitlines() if line.startswith('  File "')]
    assert files == [str(script)] * 3, trimmed.stderr  # boom in the worker; <module> and helper in the app
    assert trimmed.stderr.rstrip().endswith("KeyError: 'bad 1'")
    full = run_launcher(tmp_path, app, env={"STORAGE_API_DEBUG": "1"})
    assert full.returncode == 1 and "_launch.py" in full.stderr and "_engine.py" in full.stderr


def test_an_uncaught_backend_task_error_shows_the_app_frames_only(cluster, tmp_path: Path) -> None:
    """The same for a task that ran on a backend: its remote traceback keeps the task's frames,
    not the backend's request handling and the executor's around them."""
    app = '''
from pycompss.api.task import task
from pycompss.api.api import compss_wait_on
from workflows.models.blocks import PersistentBlock

@task(returns=1)
def boom(block):
    raise KeyError("bad block")

if __name__ == "__main__":
    block = PersistentBlock([[5.0]])
    block.make_persistent()
    try:
        compss_wait_on(boom(block))
    finally:
        block.delete_persistent(keep_state=False)
'''
    script = tmp_path / "app.py"
    script.write_text(app)
    proc = subprocess.run([sys.executable, "-m", "storage_api", "run", "--workers", "1", str(script)],
                          capture_output=True, text=True, timeout=120, cwd=tmp_path,
                          env={**os.environ, "PYTHONPATH": str(ROOT), "STORAGE_API_CONFIG": str(cluster.dep.config_path)})
    assert proc.returncode == 1
    files = [line.split('"')[1] for line in proc.stderr.splitlines() if line.startswith('  File "')]
    assert files == [str(script)] * 2, proc.stderr  # <module> in the app, boom on the backend


def test_the_thin_client_does_not_import_cloudpickle() -> None:
    """cloudpickle serves the executor (task payloads pickle refuses); ``import storage_api`` and
    the COMPSs storage API leave it, numpy and the workflow layer unimported."""
    out = run_python("import sys, storage_api, storage.api\n"
                     "print(sorted(m for m in ('cloudpickle', 'numpy', 'workflows') if m in sys.modules))")
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"
