"""dislib's Cascade SVM through the launcher, with and without persistent blocks on 2 backends."""

from __future__ import annotations

import json
import os
import uuid
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parent.parent
SIZES = ["--processors", "2", "--cores-per-processor", "1", "--blocks-per-core", "2", "--arity", "2",
         "--iterations", "2"]


def launch(cluster, *args: str, timeout: float = 150) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "STORAGE_API_CONFIG": str(cluster.dep.config_path)}
    proc = subprocess.run([sys.executable, "-m", "workflows.executor", "--workers", "2", *args],
                          capture_output=True, text=True, timeout=timeout, cwd=ROOT, env=env)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc


def test_task_runs_in_the_backend_holding_its_block(cluster, tmp_path: Path) -> None:
    app = tmp_path / "where.py"
    app.write_text('''
import os, json
import storage_api
from pycompss.api.task import task
from pycompss.api.api import compss_wait_on
from workflows.models.blocks import PersistentBlock

@task(returns=1)
def where(block):
    return [os.getpid(), block.where(), type(block).__name__, block.shape]

if __name__ == "__main__":
    out = []
    for b in sorted(storage_api.backends(), key=lambda b: b.name):
        blk = PersistentBlock([[1.0, 2.0]])
        blk.make_persistent(backend=b)
        out.append([b.pid, compss_wait_on(where(blk))])
    print("RESULT " + json.dumps(out))
''')
    proc = launch(cluster, str(app))
    out = json.loads(next(x for x in proc.stdout.splitlines() if x.startswith("RESULT "))[7:])
    assert len(out) == 2 and out[0][0] != out[1][0]
    for backend_pid, (task_pid, block_pid, cls, shape) in out:
        assert task_pid == backend_pid == block_pid  # the task ran in the block's backend, on the live block
        assert cls == "PersistentBlock" and shape == [1, 2]


def test_warm_up_has_every_backend_import_the_modules_before_any_task_needs_them(cluster, tmp_path: Path) -> None:
    probe = f"warmprobe_{uuid.uuid4().hex[:8]}"
    (tmp_path / f"{probe}.py").write_text("import os\nIMPORTED_BY = os.getpid()\n")
    app = tmp_path / "warm.py"
    app.write_text(f'''
import json, os, sys, time
import storage_api
from pycompss.api.task import task
from pycompss.api.api import compss_wait_on
from workflows.executor import warm_up
from workflows.models.blocks import PersistentBlock

@task(returns=1)
def imported_here(block):
    deadline = time.monotonic() + 30  # the warm-up runs beside this task: give it time to finish
    while "{probe}" not in sys.modules and time.monotonic() < deadline:
        time.sleep(0.05)
    module = sys.modules.get("{probe}")
    return [os.getpid(), getattr(module, "IMPORTED_BY", None)]

if __name__ == "__main__":
    warm_up("{probe}", backends=True)
    out = []
    for b in sorted(storage_api.backends(), key=lambda b: b.name):
        blk = PersistentBlock([[1.0]])
        blk.make_persistent(backend=b)
        out.append([b.pid, compss_wait_on(imported_here(blk))])
    print("RESULT " + json.dumps(out))
''')
    proc = launch(cluster, str(app))
    out = json.loads(next(x for x in proc.stdout.splitlines() if x.startswith("RESULT "))[7:])
    assert len(out) == 2
    for backend_pid, (task_pid, imported_by) in out:
        assert task_pid == backend_pid == imported_by  # the backend imported it, though no task names it


def test_backend_tasks_inout_results_and_errors(cluster, tmp_path: Path) -> None:
    app = tmp_path / "inout.py"
    app.write_text('''
import os, json
import numpy as np
import pytest
import storage_api
from pycompss.api.task import task
from pycompss.api.parameter import INOUT
from pycompss.api.api import compss_wait_on, compss_barrier
from workflows.models.blocks import PersistentBlock

@task(block=INOUT)
def scale(block, k):
    block.data = block.data * k  # the live block, mutated in place: saved after the task
    block.shape = block.data.shape

@task(returns=2)
def total(block):
    return float(np.asarray(block).sum()), os.getpid()

@task(returns=2)
def plus_one(value):
    return value + 1, os.getpid()

@task(returns=1)
def fails(block):
    raise ZeroDivisionError("on the backend")

if __name__ == "__main__":
    b = sorted(storage_api.backends(), key=lambda b: b.name)[1]
    blk = PersistentBlock(np.ones((2, 3)))
    blk.make_persistent(backend=b)
    before, _ = total(blk)
    scale(blk, 10)
    after, pid1 = total(blk)
    chained, pid2 = plus_one(after)  # its input stays on the block's backend: it runs there too
    try:
        compss_wait_on(fails(blk))
        error = None
    except ZeroDivisionError as exc:
        error = [str(exc), "fails" in "".join(getattr(exc, "__notes__", []))]
    compss_barrier()
    fresh = storage_api.get_by_id(blk.getID())
    print("RESULT " + json.dumps({"before": compss_wait_on(before), "after": compss_wait_on(after),
        "chained": compss_wait_on(chained), "pids": [compss_wait_on(pid1), compss_wait_on(pid2), b.pid],
        "error": error, "stored": float(np.asarray(fresh).sum()), "app": os.getpid()}))
''')
    proc = launch(cluster, str(app))
    out = json.loads(next(x for x in proc.stdout.splitlines() if x.startswith("RESULT "))[7:])
    assert out["before"] == 6.0 and out["after"] == 60.0 and out["chained"] == 61.0  # INOUT ordered
    assert out["stored"] == 60.0  # the mutation was saved in the store
    assert out["pids"][0] == out["pids"][1] == out["pids"][2] != out["app"]
    assert out["error"] == ["on the backend", True]  # original type, remote traceback attached


def _sequential_cascade(n_blocks: int, ppb: int, arity: int, iterations: int) -> tuple[np.ndarray, float]:
    """The same cascade with plain sklearn SVC in one process (the non-distributed reference)."""
    from sklearn.svm import SVC

    from workflows.models.blocks import make_points

    blocks = [make_points(ppb, 42 + i) for i in range(n_blocks)]
    ids = [np.arange(i * ppb, (i + 1) * ppb).reshape(-1, 1) for i in range(n_blocks)]

    def train(parts):
        x = np.vstack([p[0] for p in parts]); y = np.vstack([p[1] for p in parts]); i = np.vstack([p[2] for p in parts])
        _, first = np.unique(i, return_index=True)
        keep = np.sort(first)
        x, y, i = x[keep], y[keep], i[keep]
        clf = SVC(random_state=42, kernel="rbf", C=1, gamma=1 / x.shape[1]).fit(x, y.ravel())
        return (x[clf.support_], y[clf.support_], i[clf.support_]), clf

    svs = None
    for _ in range(iterations):
        q = []
        for b, i in zip(blocks, ids):
            parts = [(b[0], b[1], i)] + ([svs] if svs is not None else [])
            q.append(train(parts)[0])
        while len(q) > arity:
            q.append(train(q[:arity])[0]); del q[:arity]
        svs, clf = train(q)
    x = np.vstack([b[0] for b in blocks]); y = np.vstack([b[1] for b in blocks])
    return svs[0], float(clf.score(x, y.ravel()))


def _blocks(cluster) -> set[str]:
    client = cluster.client()
    try:
        return {o.id for o in client.meta.objects() if o.class_path == "workflows.models.blocks.PersistentBlock"}
    finally:
        client.close()


@pytest.mark.slow
def test_csvm_same_model_with_and_without_store(cluster, tmp_path: Path) -> None:
    runs = {}
    before = _blocks(cluster)
    for mode in ("--storage", "--no-storage"):
        model, figures = tmp_path / f"{mode}.npz", tmp_path / f"{mode}.json"
        proc = launch(cluster, "apps/csvm.py", *SIZES, mode, "--model", str(model), "--json", str(figures))
        runs[mode] = (np.load(model), json.loads(figures.read_text()))
        assert "WARNING" not in proc.stdout + proc.stderr  # dislib's import-time notices are not shown
    assert _blocks(cluster) == before  # the app deleted its blocks
    (ms, fs), (mn, fn) = runs["--storage"], runs["--no-storage"]
    assert fs["storage"] and not fn["storage"] and fs["points"] == fn["points"] == 4 * 128
    np.testing.assert_array_equal(ms["svs"], mn["svs"])  # same support vectors, same order
    np.testing.assert_array_equal(ms["labels"], mn["labels"])
    assert fs["score"] == fn["score"]
    assert fs["bytes_exec"]["total"] < fn["bytes_exec"]["total"]
    ref_svs, ref_score = _sequential_cascade(4, 128, 2, 2)
    # Tolerance: the distributed cascade must find the same support vectors as the sequential one
    # (as a set: row order may differ) and a training score within 0.01.
    assert {tuple(r) for r in np.round(ms["svs"], 9)} == {tuple(r) for r in np.round(ref_svs, 9)}
    assert abs(fs["score"] - ref_score) <= 0.01


@pytest.mark.slow  # a whole Cascade SVM run
def test_csvm_keep_leaves_its_blocks(cluster, client) -> None:
    before = _blocks(cluster)
    proc = launch(cluster, "apps/csvm.py", "--processors", "1", "--cores-per-processor", "1", "--blocks-per-core", "2",
                  "--arity", "2", "--iterations", "1", "--storage", "--keep")
    kept = _blocks(cluster) - before
    assert len(kept) == 2 and "kept 2 blocks in the store (workflows.models.blocks.PersistentBlock)" in proc.stdout
    for oid in kept:
        block = client.get_by_id(oid)
        assert block.shape == (128, 20)  # served, filled where it lives
        block.delete_persistent()
