"""The development executor runs a plain PyCOMPSs-style script (no dislib) through its launcher."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

SCRIPT = '''
import json, time
from pycompss.api.task import task
from pycompss.api.parameter import IN, INOUT, COLLECTION_IN, COLLECTION_OUT, COLLECTION_INOUT, Type, Depth
from pycompss.api.on_failure import on_failure
from pycompss.api.api import compss_wait_on, compss_barrier, compss_delete_object

@task(returns=1)
def inc(x):
    return x + 1

@task(returns=2)
def pair(a, b):
    return a // b, a % b

@task(returns=(list, int))
def typed(n):
    return list(range(n)), n

@task(returns="n")
def many(n):
    return tuple(range(n))

@task(xs={Type: COLLECTION_IN, Depth: 2}, returns=int)
def total(xs):
    return sum(sum(r) for r in xs)

@task(lst=INOUT)
def append_slow(lst, v, delay):
    time.sleep(delay)
    lst.append(v)

@task(out={Type: COLLECTION_OUT, Depth: 2})
def fill(out, v):
    for i, row in enumerate(out):
        for j in range(len(row)):
            row[j] = v * 10 * i + j

@task(c=COLLECTION_INOUT)
def double(c):
    for i in range(len(c)):
        c[i] = c[i] * 2

@on_failure(management="IGNORE", returns=-1)
@task(returns=1)
def fragile(x):
    raise RuntimeError("ignored")

@on_failure(management="CANCEL_SUCCESSORS", returns=0)
@task(returns=1)
def fragile_cancel(x):
    raise RuntimeError("cancels")

class Counter:
    def __init__(self):
        self.n = 0

    @task()
    def bump(self, k):
        self.n += k

    @task(target_direction=IN, returns=1)
    def peek(self):
        return self.n

@task(returns=1)
def boom(x):
    raise KeyError(f"bad {x}")

@task(returns=1)
def after_boom(x):
    return x

if __name__ == "__main__":
    out = {}
    nested = [[inc(i) for i in range(3)] for _ in range(2)]
    out["total"] = compss_wait_on(total(nested))
    out["nested"] = compss_wait_on(nested)
    q, r = pair(inc(6), 3)
    out["pair"] = compss_wait_on([q, r])
    lst, n = typed(3)
    out["typed"] = [compss_wait_on(lst), compss_wait_on(n)]
    out["many"] = compss_wait_on(list(many(3)))
    log = []
    append_slow(log, "first", 0.3)   # the later, faster writer must wait for it
    append_slow(log, "second", 0.0)
    out["inout"] = compss_wait_on(log)
    grid = [[object(), object()], [object(), object()]]
    fill(grid, 1)
    double(grid[1])
    out["collection_out"] = compss_wait_on(grid)
    try:
        compss_wait_on(after_boom(boom(1)))
    except KeyError as exc:
        out["error"] = [type(exc).__name__, str(exc), "boom" in "".join(getattr(exc, "__notes__", [])) or
                        "boom" in str(getattr(exc, "__cause__", ""))]
    out["ignored"] = compss_wait_on(inc(fragile(1)))
    try:
        compss_wait_on(inc(fragile_cancel(1)))
    except Exception as exc:
        out["cancelled"] = type(exc).__name__
    c = Counter()
    c.bump(2)
    seen = c.peek()
    c.bump(3)
    c = compss_wait_on(c)
    out["method"] = [compss_wait_on(seen), c.n]
    kw = []
    append_slow(lst=kw, v="kw", delay=0)
    out["keyword_inout"] = compss_wait_on(kw)
    compss_delete_object(lst)
    compss_barrier()
    print("RESULT " + json.dumps(out))
'''


def run_launcher(tmp_path: Path, script: str, *args: str, env: dict | None = None, timeout: float = 120) -> subprocess.CompletedProcess:
    app = tmp_path / "app.py"
    app.write_text(script)
    return subprocess.run([sys.executable, "-m", "workflows.executor", "--workers", "2", str(app), *args],
                          capture_output=True, text=True, timeout=timeout, cwd=ROOT,
                          env={**os.environ, "PYTHONPATH": str(ROOT), **(env or {})})


def test_plain_script_semantics(tmp_path: Path) -> None:
    proc = run_launcher(tmp_path, SCRIPT)
    assert proc.returncode == 0, proc.stderr
    line = next(x for x in proc.stdout.splitlines() if x.startswith("RESULT "))
    out = json.loads(line[len("RESULT "):])
    assert out["total"] == 12
    assert out["nested"] == [[1, 2, 3], [1, 2, 3]]
    assert out["pair"] == [2, 1]
    assert out["typed"] == [[0, 1, 2], 3]
    assert out["many"] == [0, 1, 2]
    assert out["inout"] == ["first", "second"]  # dependency order, not completion order
    assert out["collection_out"] == [[0, 1], [20, 22]]
    assert out["error"][0] == "KeyError" and "bad 1" in out["error"][1] and out["error"][2]
    assert out["ignored"] == 0  # the failed task's future held returns=-1
    assert out["cancelled"] == "TaskCancelled"
    assert out["method"] == [2, 5]  # self is INOUT by default; target_direction=IN reads a version
    assert out["keyword_inout"] == ["kw"]


def test_tasks_run_in_worker_processes(tmp_path: Path) -> None:
    script = '''
import os
from pycompss.api.task import task
from pycompss.api.api import compss_wait_on

@task(returns=1)
def pid():
    return os.getpid()

if __name__ == "__main__":
    pids = compss_wait_on([pid() for _ in range(6)])
    print("RESULT", os.getpid() not in pids, len(set(pids)) >= 1)
'''
    proc = run_launcher(tmp_path, script)
    assert proc.returncode == 0, proc.stderr
    assert "RESULT True True" in proc.stdout


def test_unobserved_failure_fails_the_run(tmp_path: Path) -> None:
    script = '''
from pycompss.api.task import task

@task(returns=1)
def boom():
    raise ValueError("never waited on")

if __name__ == "__main__":
    boom()
'''
    proc = run_launcher(tmp_path, script)
    assert proc.returncode != 0
    assert "ValueError: never waited on" in proc.stderr


def test_an_app_that_exits_at_once_leaves_only_its_own_message(tmp_path: Path) -> None:
    """An app that stops while its local workers are still starting (a bad flag, say): the
    workers are stopped and the app's message is the last thing printed, without the pool's
    shutdown traceback that once raced it."""
    script = 'import sys\nsys.exit("app: error: bad flag")\n'
    for _ in range(3):
        proc = run_launcher(tmp_path, script)
        assert proc.returncode == 1 and proc.stderr.strip() == "app: error: bad flag", proc.stderr


def test_storage_api_run_is_the_same_launcher(tmp_path: Path) -> None:
    app = tmp_path / "app.py"
    app.write_text(SCRIPT)
    proc = subprocess.run([sys.executable, "-m", "storage_api", "run", "--workers", "1", str(app)],
                          capture_output=True, text=True, timeout=120, cwd=ROOT,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert proc.returncode == 0, proc.stderr
    assert '"inout": ["first", "second"]' in proc.stdout


def test_defers_to_real_pycompss(tmp_path: Path) -> None:
    fake = tmp_path / "site" / "pycompss"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text("")
    proc = run_launcher(tmp_path, SCRIPT, env={"PYTHONPATH": f"{ROOT}:{tmp_path / 'site'}"})
    assert proc.returncode == 3
    assert "runcompss" in proc.stderr and "RESULT" not in proc.stdout


def test_constraints_are_accepted_and_a_reduction_is_one_call_on_the_whole_collection(tmp_path: Path) -> None:
    script = '''
import json
from pycompss.api.task import task
from pycompss.api.constraint import constraint
from pycompss.api.reduction import reduction
from pycompss.api.parameter import COLLECTION_IN
from pycompss.api.api import compss_wait_on

@constraint(computing_units="2")
@task(returns=1)
def square(x):
    return x * x

@reduction(chunk_size="2")
@task(returns=1, xs=COLLECTION_IN)
def gather(xs):
    return [len(xs), sum(xs)]

if __name__ == "__main__":
    squares = [square(i) for i in range(5)]
    print("RESULT " + json.dumps(compss_wait_on(gather(squares))))
'''
    proc = run_launcher(tmp_path, script)
    assert proc.returncode == 0, proc.stderr
    line = next(x for x in proc.stdout.splitlines() if x.startswith("RESULT "))
    assert json.loads(line[len("RESULT "):]) == [5, 30]  # one call saw all five squares
