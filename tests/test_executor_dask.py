"""The executor's engine is Dask: answers stay on the worker that computed them, a running
scheduler's workers (other processes, possibly other hosts) take the tasks, and the run says
where its tasks go and where the dashboard is."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import ROOT

CHAIN = '''
import json, os
from pycompss.api.task import task
from pycompss.api.api import compss_wait_on, compss_barrier
from workflows.executor import bytes_moved, tasks_by_node

@task(returns=1)
def big(n):
    return bytearray(n)            # made on a worker, and left there

@task(returns=2)
def halves(data):
    return data[: len(data) // 2], data[len(data) // 2:]

@task(returns=1)
def size(data):
    return [len(data), os.getpid()]

if __name__ == "__main__":
    n = 8 << 20
    first, second = halves(big(n))
    sizes = compss_wait_on([size(first), size(second)])
    compss_barrier()
    print("RESULT " + json.dumps({"sizes": [s[0] for s in sizes], "pids": sorted({s[1] for s in sizes}),
                                  "app": os.getpid(), "moved": bytes_moved(), "by_node": tasks_by_node()}))
'''


def _launch(tmp_path: Path, app: str, *options: str, env: dict | None = None) -> tuple[dict, str]:
    script = tmp_path / "app.py"
    script.write_text(app)
    proc = subprocess.run([sys.executable, "-m", "workflows.executor", *options, str(script)],
                          capture_output=True, text=True, timeout=180, cwd=tmp_path,
                          env={**os.environ, "PYTHONPATH": str(ROOT), **(env or {})})
    assert proc.returncode == 0, proc.stdout + proc.stderr
    line = next(x for x in proc.stdout.splitlines() if x.startswith("RESULT "))
    return json.loads(line[len("RESULT "):]), proc.stderr


def test_answers_stay_on_the_worker_and_never_pass_through_the_app(tmp_path: Path) -> None:
    """An 8 MiB value made by one task and split by the next reaches the tasks that read its
    halves from the worker holding it: on one worker nothing of it moves at all, and the app's
    process, which runs no task, gets only the two sizes. The dashboard's address is printed."""
    out, err = _launch(tmp_path, CHAIN, "--workers", "1")
    assert out["sizes"] == [4 << 20, 4 << 20]
    assert out["app"] not in out["pids"] and len(out["pids"]) == 1
    assert out["moved"]["workers"] < 64 << 10, out["moved"]  # payloads and two small answers
    assert out["by_node"] == {"workers": {socket.gethostname(): 4}, "backends": {}}
    notice = [line for line in err.splitlines() if line.startswith("storage-api run: ")]
    assert len(notice) == 1 and "1 local workers" in notice[0] and "dashboard: http://" in notice[0], err


def test_two_workers_move_only_the_element_a_task_reads(tmp_path: Path) -> None:
    """With two workers a half may cross to the other one: at most the half (4 MiB) per task
    that reads one, never the whole 8 MiB answer it is an element of."""
    out, _ = _launch(tmp_path, CHAIN, "--workers", "2", "--dashboard", "none")
    assert out["sizes"] == [4 << 20, 4 << 20]
    assert out["moved"]["workers"] < (8 << 20) + (256 << 10), out["moved"]


@pytest.fixture()
def dask_cluster(tmp_path: Path):
    """A Dask scheduler and a worker of two processes, started as a cluster's would be, apart from
    any run; stopped after the test."""
    from tests.netkit import DaskCluster

    cluster = DaskCluster(None, "127.0.0.1", 2, tmp_path)
    try:
        from distributed import Client

        with Client(cluster.address, timeout=60) as client:
            pids = set(client.run(os.getpid).values())
        yield cluster.address, pids
    finally:
        cluster.stop()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_a_running_scheduler_takes_the_tasks_and_its_workers_outlive_the_run(dask_cluster, tmp_path: Path) -> None:
    """``--scheduler ADDRESS``: the tasks run on that scheduler's workers (their pids), the app's
    functions resolve there (the workers were started before the app existed), and the workers
    serve a second run after the first one ended."""
    address, pids = dask_cluster
    for _ in range(2):
        out, err = _launch(tmp_path, CHAIN, "--scheduler", address)
        assert out["sizes"] == [4 << 20, 4 << 20]
        assert set(out["pids"]) <= pids, (out["pids"], pids)
        assert f"the scheduler at {address}" in err
    out, _ = _launch(tmp_path, CHAIN, env={"STORAGE_API_DASK_SCHEDULER": address})
    assert set(out["pids"]) <= pids
    # another app, of the same file name, after those: its own functions, not the first app's
    edited = CHAIN.replace("return [len(data), os.getpid()]", "return [len(data) + 1, os.getpid()]")
    out, _ = _launch(tmp_path, edited, "--scheduler", address)
    assert out["sizes"] == [(4 << 20) + 1, (4 << 20) + 1]


def test_a_scheduler_file_that_is_not_there_is_a_clear_error_at_once(tmp_path: Path) -> None:
    script = tmp_path / "app.py"
    script.write_text(CHAIN)
    proc = subprocess.run([sys.executable, "-m", "workflows.executor", "--scheduler", "nosuch.json", str(script)],
                          capture_output=True, text=True, timeout=60, cwd=tmp_path,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert proc.returncode == 2
    assert proc.stderr.strip().endswith("--scheduler nosuch.json: neither a scheduler file (no such file) nor an "
                                        "address (tcp://HOST:PORT)"), proc.stderr


def test_a_scheduler_nobody_runs_is_a_clear_error(tmp_path: Path) -> None:
    script = tmp_path / "app.py"
    script.write_text(CHAIN)
    started = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "workflows.executor", "--scheduler", f"tcp://127.0.0.1:{_free_port()}",
                           str(script)], capture_output=True, text=True, timeout=180, cwd=tmp_path,
                          env={**os.environ, "PYTHONPATH": str(ROOT), "DASK_DISTRIBUTED__COMM__TIMEOUTS__CONNECT": "3s"})
    assert proc.returncode != 0 and time.monotonic() - started < 60
    assert "scheduler" in proc.stderr.lower() and "Traceback" not in proc.stderr, proc.stderr


TO_BACKEND = '''
import json
from pycompss.api.task import task
from pycompss.api.api import compss_wait_on
from workflows.executor import bytes_moved
from workflows.models.blocks import PersistentBlock

@task(returns=1)
def big(n):
    return bytearray(n)

@task(returns=1)
def measure(block, data):          # a persistent argument: it runs on the block's backend
    return [len(data), int(data[-1])]

if __name__ == "__main__":
    block = PersistentBlock([[1.0]])
    block.make_persistent()
    try:
        data = big(8 << 20)
        compss_wait_on(measure(block, [0]))   # the backend has the task's function loaded
        before = bytes_moved()
        first, again = measure(block, data), measure(block, data)
        got = compss_wait_on([first, again])
        after = bytes_moved()
        print("RESULT " + json.dumps({"got": got, "client": after["client"] - before["client"],
                                      "workers": after["workers"] - before["workers"]}))
    finally:
        block.delete_persistent(keep_state=False)
'''


def test_a_value_a_worker_holds_goes_from_the_worker_to_the_backend_task_that_reads_it(cluster, tmp_path: Path) -> None:
    """A worker task's 8 MiB answer read by a task on a backend: the worker sends it to the
    backend (once: a second task there reads the kept copy); the app's process sends the tasks,
    not the value."""
    out, _ = _launch(tmp_path, TO_BACKEND, "--workers", "1", env={"STORAGE_API_CONFIG": str(cluster.dep.config_path)})
    assert out["got"] == [[8 << 20, 0], [8 << 20, 0]]
    assert out["client"] < 256 << 10, out
    assert 8 << 20 <= out["workers"] < 9 << 20, out


def test_a_scheduler_address_where_something_else_listens_is_an_error_not_a_hang(tmp_path: Path) -> None:
    """A server that accepts and never speaks Dask's protocol: a one-line error within the start's
    bound, not a hang."""
    script = tmp_path / "app.py"
    script.write_text(CHAIN)
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(8)
        proc = subprocess.run([sys.executable, "-m", "workflows.executor", "--scheduler",
                               f"tcp://127.0.0.1:{server.getsockname()[1]}", str(script)],
                              capture_output=True, text=True, timeout=120, cwd=tmp_path,
                              env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert proc.returncode == 2
    assert "no Dask scheduler answered within" in proc.stderr and "Traceback" not in proc.stderr, proc.stderr
