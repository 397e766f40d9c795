"""PyCOMPSs' task semantics as the executor keeps them: each test is a small app of the kind
dislib and COMPSs' own apps are, run through the launcher with local worker processes (and, for
``--pythonpath``, backends of a real deployment), asserting the values the app sees."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from workflows.executor._returns import inferred
from tests.test_executor import run_launcher

ROOT = Path(__file__).resolve().parent.parent

# One app, one section per behaviour; a section that fails records its error instead of a value.
APP = '''
import json, sys
import numpy as np
from pycompss.api.task import task
from pycompss.api.parameter import COLLECTION_IN, COLLECTION_OUT, COLLECTION_INOUT, INOUT, FILE_IN, FILE_OUT, Type, Depth
from pycompss.api.parameter import DICTIONARY_IN, DICTIONARY_INOUT, DICT_COLLECTION_INOUT
from pycompss.api.api import compss_wait_on, compss_barrier

N_PARTS = 3

@task()
def implicit_one(x):
    return x + 1

@task()
def implicit_pair(x):
    if x < 0:
        return x
    return x, x + 1

@task()
def implicit_none(x):
    x.append(1)

def hinted(x) -> (int, int):
    return x, x * 2
hinted = task()(hinted)

@task(returns="N_PARTS")
def split3(x):
    return x, x + 1, x + 2

@task(returns="2")
def split2(x):
    return x, -x

@task(returns="{{acc}}")
def extended(acc, v):
    return acc + [v]

class Box:
    def __init__(self, v=0):
        self.v = v

    @task(returns=1)
    def get(self):
        return self.v

    @task()
    def add(self, k):
        self.v += k

    @task()
    def pair(self):
        return self.v, -self.v

@task(returns=Box)
def make_box(v):
    return Box(v)

@task(out=COLLECTION_OUT)
def fill_nested(out):
    for i, row in enumerate(out):
        for j, cell in enumerate(row):
            for k in range(len(cell)):
                cell[k] = 100 * i + 10 * j + k

@task(returns=1)
def first_cell(cell):
    return cell[0]

@task(blocks=COLLECTION_INOUT)
def add_one(blocks):
    for b in blocks:
        b += 1

@task(returns=1, blocks=COLLECTION_IN)
def total(blocks):
    return float(sum(np.sum(b) for b in blocks))

@task(counts={Type: COLLECTION_INOUT, Depth: 1})
def bump(counts):
    for i in range(len(counts)):
        counts[i] += 1

@task(returns=1)
def square(i):
    return i * i

@task(returns=1, xs=COLLECTION_IN)
def collect(xs):
    return [type(xs).__name__, np.asarray(xs, dtype=float).tolist()]

class Holder:
    pass

@task(returns=1)
def uses_hidden(h):
    return h.value + 1

@task(returns=1)
def ignores_hidden(h):
    return "ran"

def make_task(offset):
    class Local:  # a local class: pickle cannot name it
        def __init__(self, v):
            self.v = v

    @task(returns=1)
    def shifted(x, f):  # a local function with a lambda argument
        return Local(f(x) + offset)
    return shifted


def section(out, name, body):
    try:
        out[name] = body()
    except Exception as exc:
        out[name] = "error: " + type(exc).__name__ + ": " + str(exc)


def implicit():
    kept = []
    return compss_wait_on([implicit_one(1), list(implicit_pair(1)), implicit_none(kept), list(hinted(3))])

def named_returns():
    acc = [1]
    same = extended(acc, 2)
    return [list(compss_wait_on(list(split3(10)))), compss_wait_on(list(split2(4))),
            same is acc, compss_wait_on(acc), compss_wait_on(same)]

def class_future():
    box = make_box(7)
    before = box.get()
    box.add(3)
    after = box.get()
    plus, minus = box.pair()
    return [type(box).__name__, compss_wait_on(before), compss_wait_on(after),
            compss_wait_on(plus), compss_wait_on(minus), compss_wait_on(box).v]

def depth():
    grid = [[[None, None], [None, None]], [[None, None], [None, None]]]
    fill_nested(grid)
    cell = first_cell(grid[1][1])   # a nested element, used before any wait
    return [compss_wait_on(cell), compss_wait_on(grid)]

def identity():
    blocks = [np.zeros(2), np.zeros(2)]
    for _ in range(3):
        add_one([blocks[0], blocks[1]])   # a fresh list every sweep, the same block objects
    seen = compss_wait_on(total(list(blocks)))
    synced = compss_wait_on(blocks)
    counts = [0, 0]
    bump(counts)
    bump(counts)
    compss_wait_on(counts)
    return [seen, [b.tolist() for b in synced], [type(b).__name__ for b in blocks], counts]

def released():
    from workflows.executor import current
    from pycompss.api.api import compss_barrier
    entries = current()._versions._entries
    before = len(entries)
    blocks = [np.zeros(2) for _ in range(50)]
    add_one(blocks)
    compss_barrier()
    during = len(entries) - before
    del blocks
    import gc
    gc.collect()
    return [during, len(entries) - before]

def object_array():
    grid = np.empty((2, 2), dtype=object)
    for i in range(2):
        for j in range(2):
            grid[i, j] = square(2 * i + j)
    return [compss_wait_on(collect(grid[:, 1])), compss_wait_on(collect(grid))]

def hidden():
    h = Holder()
    h.value = square(3)
    ignored = compss_wait_on(ignores_hidden(h))
    try:
        compss_wait_on(uses_hidden(h))
    except TypeError as exc:
        return [ignored, type(exc).__name__, str(exc)]
    return [ignored, "no error"]

def annotations():
    return type(hinted.__wrapped__.__annotations__["return"]).__name__

def by_value():
    result = compss_wait_on(make_task(5)(2, lambda v: v * 10))
    return [type(result).__name__, result.v]

@task(a=INOUT, b=INOUT)
def twice(a, b):
    a.v += 1
    b.v += 10

class CodedError(Exception):
    def __init__(self, message, code):  # cannot be rebuilt from its args
        super().__init__(message)
        self.code = code

@task(returns=1)
def fails_coded(x):
    raise CodedError("bad input", 7)

@task(path=FILE_IN, returns=1)
def read_fails(path):
    raise ValueError("reader failed")

@task(path=FILE_OUT)
def write_file(path):
    with open(path, "w") as f:
        f.write("written")

@task(returns=1)
def box_value(box):
    return box.v

@task(d=DICTIONARY_IN, returns=1)
def dict_total(d):
    return sum(d.values())

@task(d={Type: DICTIONARY_IN, Depth: 2}, returns=1)
def dict_pairs(d):
    return sorted([k, sorted(v.items())] for k, v in d.items())

@task(d=DICTIONARY_INOUT)
def dict_scale(d):
    for k in d:
        d[k] = d[k] * 10

@task(d=DICT_COLLECTION_INOUT)   # the name before PyCOMPSs 2.8
def dict_bump(d):
    for k in d:
        d[k].v += 1

def dictionaries():
    futures = {"a": square(2), "b": square(3)}
    numbers = {"a": 1, "b": 2}
    dict_scale(numbers)
    dict_scale(numbers)
    boxes = {"x": Box(1), "y": Box(5)}
    dict_bump(boxes)
    seen = box_value(boxes["x"])   # the element's new version, in no dict
    dict_bump(boxes)
    return [compss_wait_on(dict_total(futures)), compss_wait_on(dict_pairs({1: {2: "x"}, 3: {4: "y"}})),
            compss_wait_on(numbers), compss_wait_on(seen), {k: b.v for k, b in compss_wait_on(boxes).items()}]

def aliased():
    y = Box(0)
    twice(y, y)   # the same object as both INOUT parameters
    return compss_wait_on(y).v

def failures():
    try:
        compss_wait_on(fails_coded(1))
        first = "no error"
    except Exception as exc:
        first = [type(exc).__name__, str(exc)]
    later = compss_wait_on(square(4))   # the workers still serve
    with open("data.txt", "w") as f:
        f.write("start")
    try:
        compss_wait_on(read_fails("data.txt"))
    except ValueError:
        pass
    write_file("data.txt")   # after the failed reader, not failed by it
    try:
        compss_barrier()
    except Exception as exc:
        return [first, later, repr(exc)]
    with open("data.txt") as f:
        return [first, later, f.read()]


if __name__ == "__main__":
    out = {}
    for name in sys.argv[1:]:
        section(out, name, globals()[name])
    print("RESULT " + json.dumps(out))
'''

SECTIONS = ["annotations", "implicit", "named_returns", "class_future", "depth", "identity", "released", "object_array", "hidden",
            "by_value", "aliased", "failures", "dictionaries"]


def launch(tmp_path: Path, app: str, app_args: list[str], *, options: tuple[str, ...] = (), env: dict | None = None,
           command: tuple[str, ...] = ("-m", "workflows.executor")) -> dict:
    """Run ``app`` (from ``tmp_path``) with two local workers; the JSON it printed after RESULT."""
    script = tmp_path / "app.py"
    script.write_text(app)
    proc = subprocess.run([sys.executable, *command, "--workers", "2", *options, str(script), *app_args],
                          capture_output=True, text=True, timeout=120, cwd=tmp_path,
                          env={**os.environ, "PYTHONPATH": str(ROOT), **(env or {})})
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return json.loads(next(x for x in proc.stdout.splitlines() if x.startswith("RESULT "))[len("RESULT "):])


@pytest.fixture(scope="module")
def app_run(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """The app's sections, run once through the launcher with two local workers."""
    return launch(tmp_path_factory.mktemp("semantics"), APP, SECTIONS)


def test_the_number_of_returns_is_inferred_from_hints_and_source(app_run: dict) -> None:
    # `return x + 1` is one value; `return x, x + 1` two (the largest tuple wins over `return x`);
    # no return is none (the call gives None); a `-> (int, int)` hint is two
    assert app_run["implicit"] == [2, [1, 2], None, [3, 6]]


def test_the_app_is_compiled_with_its_own_future_imports_only(app_run: dict) -> None:
    # not the launcher's `from __future__ import annotations`: hints are objects, as under python
    assert app_run["annotations"] == "tuple"


def test_returns_names_a_global_an_int_string_or_the_argument_it_replaces(app_run: dict) -> None:
    # returns="N_PARTS" reads the module's global (3); "2" is two; "{{acc}}": the call gives back
    # the argument itself, which then stands for the task's result
    assert app_run["named_returns"] == [[10, 11, 12], [4, -4], True, [1, 2], [1, 2]]


def test_a_user_class_future_takes_the_class_task_methods(app_run: dict) -> None:
    # returns=Box gives an empty Box whose methods run after make_box, on its result, in order;
    # the method `pair` has no returns= and two values, read from its source line by line
    assert app_run["class_future"] == ["Box", 7, 10, 10, -10, 10]


def test_collections_are_searched_to_any_depth_by_default(app_run: dict) -> None:
    # COLLECTION_OUT without Depth reaches the innermost lists, so a nested cell can be passed
    # to another task before anything is waited on
    assert app_run["depth"] == [110, [[[0, 1], [10, 11]], [[100, 101], [110, 111]]]]


def test_collection_updates_follow_the_element_objects_into_any_container(app_run: dict) -> None:
    # three COLLECTION_INOUT sweeps, each over a new list holding the same blocks (dislib's SVD):
    # every sweep sees the previous one's blocks; after compss_wait_on the caller's own list
    # holds the values (arrays), not futures, also for numbers updated in place
    seen, synced, kinds, counts = app_run["identity"]
    assert seen == 12.0
    assert synced == [[3.0, 3.0], [3.0, 3.0]]
    assert kinds == ["ndarray", "ndarray"]
    assert counts == [2, 2]


def test_elements_are_followed_only_while_the_app_holds_them(app_run: dict) -> None:
    # 50 blocks updated by a task are followed; once the app drops them, so does the engine
    # (and the results their versions kept alive)
    assert app_run["released"] == [50, 0]


def test_numpy_object_arrays_are_collections(app_run: dict) -> None:
    # a column slice (dislib's TeraSort) and a whole 2-d grid of futures reach the task as values
    assert app_run["object_array"] == [["ndarray", [1.0, 9.0]], ["ndarray", [[0.0, 1.0], [4.0, 9.0]]]]


def test_a_future_hidden_in_an_object_fails_only_when_used_and_names_its_argument(app_run: dict) -> None:
    ignored, kind, message = app_run["hidden"]
    assert ignored == "ran"  # as PyCOMPSs: a task that does not touch it runs
    assert kind == "UnresolvedFuture"
    assert "square" in message and "argument 'h'" in message and "compss_wait_on" in message


def test_what_pickle_refuses_travels_by_value(app_run: dict) -> None:
    # a local task function, a lambda argument and a local class result cross to the worker and back
    assert app_run["by_value"] == ["Local", 25]


def test_an_object_passed_twice_as_inout_is_updated_once_per_parameter(app_run: dict) -> None:
    assert app_run["aliased"] == 11  # it hung: the task waited for its own version of the object


def test_dictionary_collections_are_collections_of_the_dict_values(app_run: dict) -> None:
    # DICTIONARY_IN resolves futures among the values (Depth 2 reaches the inner dicts); INOUT
    # updates reach the caller's dict, numbers in place, objects by identity in any container
    assert app_run["dictionaries"] == [13, [[1, [[2, "x"]]], [3, [[4, "y"]]]], {"a": 100, "b": 200}, 2,
                                       {"x": 3, "y": 7}]


def test_a_failed_task_fails_only_what_uses_its_results(app_run: dict) -> None:
    first, later, written = app_run["failures"]
    # an exception that cannot be rebuilt arrives named (it broke the worker pool for the rest of the run)
    assert first == ["RemoteError", "__main__.CodedError: bad input"]
    assert later == 16
    assert written == "written"  # a writer after a failed reader runs (it failed with the reader's error)


def test_inference_rules_read_like_pycompss() -> None:
    """The rules themselves, on functions whose source says it (no launcher)."""
    def nested_return_counts(x):
        def inner():
            return 1, 2, 3
        return x

    def list_display(x):
        return [x, x]

    def bare(x):
        if x:
            return
        x.append(1)

    class Model:
        def fit(self, x):  # a method is read line by line, as PyCOMPSs does
            """Does not return anything worth a future."""
            return x, x

    assert inferred(nested_return_counts, False) == 3  # PyCOMPSs walks nested functions too
    assert inferred(list_display, False) == 2
    assert inferred(bare, False) == 1
    assert inferred(Model.fit, True) == 2


def test_pythonpath_reaches_the_app_the_workers_and_the_backends(cluster, tmp_path: Path) -> None:
    """``storage-api run --pythonpath DIRS`` (runcompss' option): a task module found only there
    runs in a local worker and, next to a persistent block, on the backend that holds it."""
    lib = tmp_path / "lib"
    lib.mkdir()
    (lib / "semantics_tasks.py").write_text('''
import os
from pycompss.api.task import task

@task(returns=1)
def where(value):
    return [os.getpid(), float(value[0, 0]) if hasattr(value, "shape") else value]
''')
    app = '''
import json, os, sys
import storage_api
from pycompss.api.api import compss_wait_on
from semantics_tasks import where
from workflows.models.blocks import PersistentBlock

if __name__ == "__main__":
    backend = sorted(storage_api.backends(), key=lambda b: b.name)[0]
    block = PersistentBlock([[5.0]])
    block.make_persistent(backend=backend)
    out = {"local": compss_wait_on(where(4)), "remote": compss_wait_on(where(block)),
           "app": os.getpid(), "backend": backend.pid}
    block.delete_persistent()
    print("RESULT " + json.dumps(out))
'''
    other = tmp_path / "other"
    other.mkdir()
    out = launch(tmp_path, app, [], options=(f"--pythonpath={other}{os.pathsep}{lib}",),
                 command=("-m", "storage_api", "run"), env={"STORAGE_API_CONFIG": str(cluster.dep.config_path)})
    local_pid, local_value = out["local"]
    assert local_value == 4 and local_pid not in (out["app"], out["backend"])  # a local worker
    assert out["remote"] == [out["backend"], 5.0]  # on the block's backend, which imported the module


def test_an_app_exception_raised_on_a_backend_keeps_its_class(cluster, tmp_path: Path) -> None:
    """A task defined in the app script runs on the backend holding its block; the exception class
    the script defines comes back as that class, so the app's ``except`` catches it."""
    app = '''
import json
from pycompss.api.task import task
from pycompss.api.api import compss_wait_on
from workflows.models.blocks import PersistentBlock

class AppError(Exception):
    pass

@task(returns=1)
def fails_next_to(block):
    raise AppError("from the backend")

if __name__ == "__main__":
    block = PersistentBlock([[5.0]])
    block.make_persistent()
    try:
        compss_wait_on(fails_next_to(block))
        caught = "no error"
    except AppError as exc:
        caught = ["AppError", str(exc)]
    except Exception as exc:
        caught = [type(exc).__name__, str(exc)]
    block.delete_persistent(keep_state=False)
    print("RESULT " + json.dumps(caught))
'''
    out = launch(tmp_path, app, [], command=("-m", "storage_api", "run"),
                 env={"STORAGE_API_CONFIG": str(cluster.dep.config_path)})
    assert out == ["AppError", "from the backend"]  # it was a RemoteError naming _sa_script_<hash>.AppError


def test_workers_run_the_script_only_for_its_own_tasks(tmp_path: Path) -> None:
    """A script without a ``__main__`` guard whose tasks all come from a module: its top-level code
    runs once, in the app, not again in each local worker (PyCOMPSs' workers import only the
    modules of the tasks they run); a task of the script itself still finds it in the worker."""
    (tmp_path / "lib_tasks.py").write_text('''
from pycompss.api.task import task

@task(returns=1)
def double(x):
    return 2 * x
''')
    proc = run_launcher(tmp_path, '''
import json
from pycompss.api.api import compss_wait_on
from pycompss.api.task import task
from lib_tasks import double

print("TOP-LEVEL RAN", flush=True)
values = compss_wait_on([double(i) for i in range(4)])
print("RESULT " + json.dumps(values), flush=True)
''')
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "RESULT [0, 2, 4, 6]" in proc.stdout
    assert proc.stdout.count("TOP-LEVEL RAN") == 1, proc.stdout  # was 3: the app and both workers
    # the script's own tasks: each worker that runs one runs the script (guarded: nothing printed)
    assert launch(tmp_path, APP, ["implicit"])["implicit"]


def test_sys_exit_in_a_local_task_fails_the_task_not_the_app(tmp_path: Path) -> None:
    """``sys.exit(0)`` in a task on a local worker fails that task with a RemoteError naming
    SystemExit, as on a backend; it used to come out of ``compss_wait_on`` and end the app,
    silently, with status 0."""
    out = launch(tmp_path, '''
import json, sys
from pycompss.api.api import compss_wait_on
from pycompss.api.task import task

@task(returns=1)
def quits(code):
    sys.exit(code)

if __name__ == "__main__":
    try:
        compss_wait_on(quits(0))
        caught = "no error"
    except Exception as exc:
        caught = [type(exc).__name__, getattr(exc, "type_name", "")]
    print("RESULT " + json.dumps(caught))
''', [])
    assert out == ["RemoteError", "builtins.SystemExit"]


def test_a_store_error_nobody_waited_on_fails_the_run_with_status_1(tmp_path: Path) -> None:
    """A task that nobody waited on fails with a store error: the run ends as for any task
    failure (status 1, the error and its traceback), not as a command-line mistake (status 2, one
    line naming neither the task nor where it failed)."""
    proc = run_launcher(tmp_path, '''
from pycompss.api.task import task
from storage_api.errors import ObjectNotFound

@task(returns=1)
def lookup(key):
    raise ObjectNotFound(f"nothing under {key}")

if __name__ == "__main__":
    lookup("k")
''')
    assert proc.returncode == 1, proc.stderr
    assert "ObjectNotFound: nothing under k" in proc.stderr and "Traceback" in proc.stderr
    assert "UnwaitedTaskFailed: a task nobody waited on failed" in proc.stderr


def test_a_task_module_the_backends_cannot_import_is_named_with_the_way_to_fix_it(cluster, tmp_path: Path) -> None:
    """A task module found only through the app's own PYTHONPATH runs in local workers, but a
    backend cannot import it: the task fails with a TaskError naming the module, the backend's path
    and ``--pythonpath``, not a bare ModuleNotFoundError."""
    lib = tmp_path / "lib"
    lib.mkdir()
    (lib / "only_here.py").write_text('''
from pycompss.api.task import task

@task(returns=1)
def first(value):
    return float(value[0, 0]) if hasattr(value, "shape") else value
''')
    app = '''
import json
from pycompss.api.api import compss_wait_on
from only_here import first
from workflows.models.blocks import PersistentBlock

if __name__ == "__main__":
    block = PersistentBlock([[5.0]])
    block.make_persistent()
    try:
        out = ["no error", compss_wait_on(first(block))]
    except Exception as exc:
        out = [type(exc).__name__, str(exc)]
    block.delete_persistent(keep_state=False)
    print("RESULT " + json.dumps([compss_wait_on(first(4)), *out]))
'''
    out = launch(tmp_path, app, [], command=("-m", "storage_api", "run"),
                 env={"STORAGE_API_CONFIG": str(cluster.dep.config_path), "PYTHONPATH": f"{ROOT}{os.pathsep}{lib}"})
    local, kind, message = out
    assert (local, kind) == (4, "TaskError")
    assert "cannot import only_here" in message and "--pythonpath" in message
