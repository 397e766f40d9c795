"""PyCOMPSs apps and the store's own calls on the same persistent objects, under ``storage-api run``.

The app's tasks on a persistent object run on its backend, asynchronously; the app's direct calls
(``delete_persistent``) must still see them as a sequential run would, and what a task changes on
the backend must be durable before the task is done, whatever direction it was given.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np

from storage_api import _context

from .conftest import Cluster

ROOT = Path(__file__).resolve().parent.parent


def run_app(tmp_path: Path, cluster: Cluster, app: str, *options: str) -> object:
    """Run ``app`` with ``storage-api run`` against ``cluster``; the JSON it printed after RESULT."""
    script = tmp_path / "app.py"
    script.write_text(app)
    proc = subprocess.run([sys.executable, "-m", "storage_api", "run", "--workers", "2", *options, str(script)],
                          capture_output=True, text=True, timeout=120, cwd=tmp_path,
                          env={**os.environ, "PYTHONPATH": str(ROOT), "STORAGE_API_CONFIG": str(cluster.dep.config_path)})
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return json.loads(next(x for x in proc.stdout.splitlines() if x.startswith("RESULT "))[len("RESULT "):])


def read_back(cluster: Cluster, ids: list[str]) -> list:
    """The counter's value and the block's data, read by a fresh client."""
    client = cluster.client()
    previous = _context.install(client)  # handles act through the process's runtime
    try:
        return [client.get_by_id(ids[0]).value, np.asarray(client.get_by_id(ids[1]).data).tolist()]
    finally:
        _context.install(previous)
        client.close()


def test_delete_persistent_waits_for_the_objects_queued_tasks(cluster: Cluster, tmp_path: Path) -> None:
    """Five INOUT increments and a read are queued, then the app deletes the object: the delete
    comes after them (as in a sequential run), so none of their updates is lost; the deleted
    object keeps the state they left."""
    out = run_app(tmp_path, cluster, '''
import json, time
from pycompss.api.task import task
from pycompss.api.parameter import INOUT
from pycompss.api.api import compss_wait_on
from tests.models import Counter

@task(c=INOUT)
def inc(c):
    time.sleep(0.1)
    c.value += 1

@task(returns=1)
def read(c):
    return c.value

if __name__ == "__main__":
    c = Counter(0)
    c.make_persistent()
    for _ in range(5):
        inc(c)
    seen = read(c)
    c.delete_persistent()
    print("RESULT " + json.dumps([c.getID(), c.value, compss_wait_on(seen)]))
''')
    assert out == [None, 5, 5]  # was [None, 1, ...]: 4 increments ran on throw-away copies


def test_what_a_task_changes_on_the_backend_survives_kill_9(own_cluster: Cluster, tmp_path: Path) -> None:
    """A task given a persistent object IN (PyCOMPSs' default) that changes it (an attribute, an
    in-place write into its array) and an INOUT task that changes it and then fails: the changes
    every later call sees are on disk before the tasks are done, so a kill -9 of the backend right
    after the run keeps them; a change that cannot be stored fails its task and is undone."""
    out = run_app(tmp_path, own_cluster, '''
import json
from pycompss.api.task import task
from pycompss.api.parameter import INOUT
from pycompss.api.api import compss_barrier, compss_wait_on
from tests.models import Counter
from workflows.models.blocks import PersistentBlock

@task()
def set_in(c):
    c.value = 42

@task()
def write_in_place(block):
    block.data[0, 0] = 7.0

@task(c=INOUT)
def bump_then_fail(c):
    c.value += 1
    raise ValueError("after the change")

@task(returns=1)
def set_unpicklable(c):
    import threading
    c.value = -1
    c.lock = threading.Lock()
    return 0

if __name__ == "__main__":
    c = Counter(0)
    c.make_persistent(alias="changed-in")
    block = PersistentBlock([[1.0, 2.0]])
    block.make_persistent(alias="written-in-place")
    set_in(c)
    write_in_place(block)
    try:
        refused = compss_wait_on(set_unpicklable(c))
    except Exception as exc:
        refused = type(exc).__name__
    bump_then_fail(c)
    try:
        compss_barrier()
    except ValueError:
        pass
    print("RESULT " + json.dumps([c.getID(), block.getID(), refused]))
''')
    assert out.pop() == "UnserializableState"  # a change that cannot be saved is undone, not left visible
    client = own_cluster.client()
    try:
        names = {b.id: b.name for b in client.backends()}
        live_on = {names[client.locate(oid)] for oid in out}
    finally:
        client.close()
    live = read_back(own_cluster, out)
    assert live == [43, [[7.0, 2.0]]]
    for name in live_on:
        own_cluster.kill(name)
        own_cluster.restart(name)
    assert read_back(own_cluster, out) == live  # the IN changes were visible, then gone after the crash (0, 1.0)


def test_a_task_writes_objects_of_two_backends_in_place(cluster: Cluster, tmp_path: Path) -> None:
    """A task that changes in place (appends) two persistent objects held by different backends,
    as two INOUTs and as a COLLECTION_INOUT: both changes are kept (through a handle, the second
    object's append went to a copy and was lost)."""
    out = run_app(tmp_path, cluster, '''
import json
import storage_api
from pycompss.api.task import task
from pycompss.api.parameter import INOUT, COLLECTION_INOUT
from pycompss.api.api import compss_barrier
from tests.models import Counter

@task(a=INOUT, b=INOUT)
def append_both(a, b):
    a.items.append("a")
    b.items.append("b")

@task(cs=COLLECTION_INOUT)
def append_all(cs):
    for c in cs:
        c.items.append(len(c.items))

if __name__ == "__main__":
    objects = []
    for backend in sorted(storage_api.backends(), key=lambda b: b.name)[:2]:
        c = Counter(0)
        c.items = []
        c.make_persistent(backend=backend)
        objects.append(c)
    x, y = objects
    append_both(x, y)
    append_all([x, y])
    compss_barrier()
    out = [x.items, y.items]
    for c in objects:
        c.delete_persistent(keep_state=False)
    print("RESULT " + json.dumps(out))
''')
    assert out == [["a", 1], ["b", 1]]


SCRIPT_VERSIONS = '''
import json, time
import storage_api
from pycompss.api.task import task
from pycompss.api.api import compss_wait_on
from tests.models import Counter

time.sleep(0.3)  # a slow top level: concurrent tasks on a backend arrive while it imports the script

@task(returns=1)
def version(c):
    return "VERSION"

if __name__ == "__main__":
    c = Counter(0)
    c.make_persistent(backend=sorted(storage_api.backends(), key=lambda b: b.name)[0])
    out = compss_wait_on([version(c) for _ in range(4)])
    c.delete_persistent(keep_state=False)
    print("RESULT " + json.dumps(out))
'''


def test_backends_run_the_current_script_imported_once(cluster: Cluster, tmp_path: Path) -> None:
    """The same script path, edited between two runs: the backend runs the new task code, not the
    version it imported first; four tasks arriving at once while it imports the script (four
    backend slots) all wait for that import instead of seeing the module half-run."""
    first = run_app(tmp_path, cluster, SCRIPT_VERSIONS.replace("VERSION", "v1"), "--backend-slots", "4")
    second = run_app(tmp_path, cluster, SCRIPT_VERSIONS.replace("VERSION", "v2"), "--backend-slots", "4")
    assert (first, second) == (["v1"] * 4, ["v2"] * 4)  # was v1 again (and AttributeErrors with 4 slots)
