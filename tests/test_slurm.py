"""The sbatch scripts of ``slurm/`` on a real SLURM cluster (``python -m pytest -m slurm``).

``.ci/run`` starts a single-node cluster (``slurm/local_cluster.sh start``) and sets
``SA_TEST_REQUIRE_SLURM=1``, so there a missing cluster fails these tests instead of skipping
them. Jobs run tiny sweeps; each test checks the results the job wrote, that the job's own trap
stopped what it started (the store's logs say it was shut down, not killed), that nothing of the
store is left but its logs (no node-local data, no secret or key), and that no process of the job is
left once it has ended, also after ``scancel`` in the middle of a run. Jobs run with a temporary
``HOME``, so their ``$HOME/.COMPSs/<job>`` is the test's.
"""

from __future__ import annotations

import csv
import json
import math
import os
import pwd
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SLURM = ROOT / "slurm"
STANDINS = Path(__file__).resolve().parent / "standins" / "compss"  # launch_compss, enqueue_compss
pytestmark = [pytest.mark.slurm, pytest.mark.timeout(600)]
CPUS = str(min(2, os.cpu_count() or 1))
# storage_dir's default, /tmp/storage-api-$USER/$JOB: every node of the test cluster is this machine
NODE_DATA = Path(f"/tmp/storage-api-{pwd.getpwuid(os.getuid()).pw_name}")
TINY_CSVM = {"PROCESSORS": "1 2", "SOCKETS_PER_NODE": "2", "CORES_PER_SOCKET": "1", "POINTS_PER_BLOCK": "128 256",
             "BLOCKS_PER_CORE": "2 1", "ARITY": "2", "ITERATIONS": "2", "STORAGE": "on off"}


def _cluster_problem() -> str | None:
    if not shutil.which("sbatch"):
        return "sbatch is not installed (apt-get install slurm-wlm munge; bash slurm/local_cluster.sh start)"
    try:
        states = subprocess.run(["sinfo", "-h", "-o", "%t"], capture_output=True, text=True, timeout=20).stdout.split()
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"sinfo failed: {exc}"
    if not any(s.rstrip("*~#") in ("idle", "mix", "alloc", "comp") for s in states):
        return f"no SLURM node takes jobs (sinfo states: {states}); bash slurm/local_cluster.sh start"
    return None


@pytest.fixture(scope="module")
def slurm() -> None:
    problem = _cluster_problem()
    if problem:
        if os.environ.get("SA_TEST_REQUIRE_SLURM") == "1":
            pytest.fail(problem)
        pytest.skip(problem)


@pytest.fixture(scope="module")
def three_nodes(slurm) -> None:
    """A cluster of at least 3 nodes (``slurm/local_cluster.sh start 3`` makes one on one machine)."""
    nodes = subprocess.run(["sinfo", "-h", "-N", "-o", "%N %t"], capture_output=True, text=True).stdout.split("\n")
    usable = [n for n in nodes if n.split(" ")[-1].rstrip("*~#") in ("idle", "mix", "alloc")]
    if len(usable) < 3:
        problem = f"these tests need 3 SLURM nodes, the cluster has {nodes} (bash slurm/local_cluster.sh start 3)"
        if os.environ.get("SA_TEST_REQUIRE_SLURM") == "1":
            pytest.fail(problem)
        pytest.skip(problem)


@pytest.fixture(autouse=True)
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A temporary HOME for the jobs (sbatch passes the environment) and for ``Path.home()`` here."""
    h = tmp_path / "home"
    h.mkdir()
    monkeypatch.setenv("HOME", str(h))
    return h


def _env(**values: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "STORAGE_API_"))}
    env["PYTHON"] = sys.executable
    env.update(values)
    return env


def sbatch(script: str, tmp: Path, env: dict[str, str], *, wait: bool = True, nodes: int = 1,
           extra: list[str] | None = None) -> tuple[int, str]:
    """Submit ``slurm/<script>`` at test scale; returns (exit code, job id)."""
    cmd = ["sbatch", "--parsable", f"--nodes={nodes}", "--ntasks-per-node=1", f"--cpus-per-task={CPUS}", "--time=10",
           f"--output={tmp}/job-%j.out", *(extra or []), str(SLURM / script)]
    proc = subprocess.run(cmd, env=env, cwd=tmp, capture_output=True, text=True, timeout=60)
    job = proc.stdout.strip().split(";")[0]
    assert proc.returncode == 0 and job.isdigit(), f"sbatch failed: {proc.stdout!r} {proc.stderr!r}"
    if not wait:
        return -1, job
    wait_finished(job, timeout=540)  # as sbatch --wait, without its polling intervals of up to 10 s
    return exit_code(job), job


def exit_code(job: str) -> int:
    """The exit code of a finished job (slurmctld keeps the record MinJobAge seconds)."""
    text = subprocess.run(["scontrol", "show", "job", "-o", job], capture_output=True, text=True).stdout
    code, _, signal_ = text.split(" ExitCode=")[1].split()[0].partition(":")
    return int(code) if int(code) or not int(signal_) else 128 + int(signal_)


def job_output(tmp: Path, job: str) -> str:
    return (tmp / f"job-{job}.out").read_text()


def wait_finished(job: str, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        out = subprocess.run(["squeue", "-h", "-j", job], capture_output=True, text=True).stdout
        if not out.strip():
            return
        time.sleep(0.3)
    raise AssertionError(f"job {job} still in the queue after {timeout} s")


def survivors(job: str, timeout: float = 15) -> list[str]:
    """Processes of ``job`` still alive ``timeout`` s after it ended: its SLURM_JOB_ID in their
    environment (everything the scripts start inherits it) or its deployments in their command line."""
    marker = f"SLURM_JOB_ID={job}\0".encode()
    names = (f".COMPSs/{job}.", f"/{job}.p", f"/{job}.lstm")
    deadline = time.monotonic() + timeout
    while True:
        found = []
        for proc in Path("/proc").iterdir():
            if not proc.name.isdigit() or int(proc.name) == os.getpid():
                continue
            try:
                cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
                try:
                    env = (proc / "environ").read_bytes()
                except PermissionError:
                    env = b""
            except OSError:
                continue
            if (b"\0" + marker) in (b"\0" + env) or any(n in cmdline for n in names):
                found.append(f"{proc.name}: {cmdline[:200]}")
        if not found or time.monotonic() > deadline:
            return found
        time.sleep(0.3)


def assert_stopped(deployment: str) -> None:
    """storage_stop.sh ran (the job's trap, or the COMPSs job script): state gone, Redis shut down by
    command, backends stopped, and nothing of the store left but its logs."""
    d = Path.home() / ".COMPSs" / deployment / "storage"
    assert d.is_dir(), f"no deployment {deployment} was started"
    assert not (d / "state.json").exists(), "storage_stop.sh did not run (state.json is still there)"
    redis_log = (d / "logs" / "redis.log").read_text()
    assert "User requested shutdown" in redis_log, redis_log[-2000:]
    assert "stopping" in "".join(p.read_text() for p in (d / "logs").glob("*.log") if p.name != "redis.log")
    assert_nothing_left(deployment)


def assert_nothing_left(deployment: str) -> None:
    """No node-local data of the deployment on any node, and of its job state only the logs (its
    secret, CA key and the files with the Redis password deleted)."""
    assert not (NODE_DATA / deployment).exists(), sorted(str(p) for p in (NODE_DATA / deployment).rglob("*"))
    d = Path.home() / ".COMPSs" / deployment / "storage"
    assert [p.name for p in d.iterdir()] == ["logs"], sorted(str(p) for p in d.rglob("*"))


def read_rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def wait_for(path_glob: tuple[Path, str], text: str, timeout: float = 120) -> None:
    folder, pattern = path_glob
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for p in folder.glob(pattern):
            try:
                if text in p.read_text(errors="replace"):
                    return
            except OSError:
                pass
        time.sleep(0.2)
    raise AssertionError(f"{text!r} never appeared in {folder}/{pattern}")


def cancel_when(job: str, where: tuple[Path, str], text: str) -> None:
    """scancel ``job`` once ``text`` appears in ``where`` (or when it never does), and wait for its end."""
    try:
        wait_for(where, text)
    finally:
        subprocess.run(["scancel", job], check=True)
        wait_finished(job)


# ------------------------------------------------------------------ weak_scaling.sh
def test_weak_scaling_sweep_writes_results_and_leaves_nothing(slurm, tmp_path):
    results = tmp_path / "results"
    rc, job = sbatch("weak_scaling.sh", tmp_path, _env(RESULTS_DIR=str(results), **TINY_CSVM))
    out = job_output(tmp_path, job)
    assert rc == 0, out
    rows = read_rows(results / "results.csv")
    assert sorted((r["processors"], r["points_per_block"], r["storage"]) for r in rows) == sorted(
        (p, s, m) for p in ("1", "2") for s in ("128", "256") for m in ("on", "off"))
    per_core = {"128": 2, "256": 1}
    for r in rows:
        p, ppb = int(r["processors"]), int(r["points_per_block"])
        assert int(r["blocks"]) == p * per_core[r["points_per_block"]]
        assert int(r["points"]) == int(r["blocks"]) * ppb
        assert int(r["points_per_processor"]) == ppb * per_core[r["points_per_block"]]
        assert 0 < float(r["initialization_time"]) < 120 and 0 < float(r["execution_time"]) < 120
        assert 0.9 <= float(r["score"]) <= 1.0
        assert int(r["bytes_moved"]) > 0
        assert r["placement"] == ("contiguous" if r["storage"] == "on" else "")
    node = _job_nodes(job)
    for p in ("1", "2"):
        for ppb in ("128", "256"):
            on, off = (next(r for r in rows if (r["processors"], r["points_per_block"], r["storage"]) == (p, ppb, m))
                       for m in ("on", "off"))
            assert on["score"] == off["score"]  # the same model with and without the store
            # the same tasks, in other places: each block's in the backend holding it, on the job's
            # node, with the store; on the Dask workers without it
            assert sum(_by_node(off).values()) == sum(_by_node(on).values()), (on, off)
            assert _by_node(on).get(node, 0) >= int(on["blocks"]), on
    assert (results / "weak_scaling.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert len(list((results / "runs").glob("*.json"))) == 8
    # one deployment per processor count, each with its number of backends, each stopped by the trap
    assert "1 backends on 1 nodes" in out and "2 backends on 1 nodes" in out
    for p in (1, 2):
        assert_stopped(f"{job}.p{p}")
    assert "clean-up done (exit 0)" in out
    assert survivors(job) == []


def test_weak_scaling_on_three_nodes_puts_backends_on_the_workers(three_nodes, tmp_path):
    """A master and two worker nodes: Redis on the master, backends started by srun on the first
    ceil(P / 2) workers, one deployment per processor count."""
    results = tmp_path / "results"
    env = _env(RESULTS_DIR=str(results), PROCESSORS="2 4", SOCKETS_PER_NODE="2", CORES_PER_SOCKET="1",
               POINTS_PER_BLOCK="128", BLOCKS_PER_CORE="2", ARITY="2", ITERATIONS="2", STORAGE="on off")
    rc, job = sbatch("weak_scaling.sh", tmp_path, env, nodes=3)
    out = job_output(tmp_path, job)
    assert rc == 0, out
    nodes = subprocess.run(["scontrol", "show", "hostnames", _job_nodes(job)], capture_output=True,
                           text=True).stdout.split()
    master, workers = nodes[0], nodes[1:]
    assert f"master {master}, worker nodes {' '.join(workers)}" in out
    assert f"Redis on {master}, 2 backends on 1 nodes" in out and f"Redis on {master}, 4 backends on 2 nodes" in out
    for deployment, hosts in ((f"{job}.p2", workers[:1]), (f"{job}.p4", workers)):
        logs = Path.home() / ".COMPSs" / deployment / "storage" / "logs"
        assert sorted(p.stem for p in logs.glob("*.log")) == sorted(["redis", *hosts])
        assert_stopped(deployment)
    rows = read_rows(results / "results.csv")
    assert sorted((r["processors"], r["storage"]) for r in rows) == [("2", "off"), ("2", "on"), ("4", "off"), ("4", "on")]
    for p in ("2", "4"):
        on, off = (next(r for r in rows if (r["processors"], r["storage"]) == (p, m)) for m in ("on", "off"))
        assert on["score"] == off["score"]
        assert sum(_by_node(on).values()) == sum(_by_node(off).values())  # the same tasks, elsewhere
    # Without the store the tasks ran on Dask workers that srun started on the worker nodes: on
    # nodes with host names of their own (local_cluster.sh --netns, a real cluster) P=4 spread them
    # over both worker nodes, and none ran on the master
    off4 = _by_node(next(r for r in rows if (r["processors"], r["storage"]) == ("4", "off")))
    if len(set(_node_hostnames(nodes))) == len(nodes):
        assert set(off4) == set(workers), off4
        assert min(off4.values()) >= sum(off4.values()) // 5, off4
    assert survivors(job) == []


def _node_hostnames(nodes: list[str]) -> list[str]:
    """The host name each node reports (on one machine without --netns, the machine's, for all)."""
    out = subprocess.run(["srun", f"--nodelist={','.join(nodes)}", f"-N{len(nodes)}", "hostname"],
                         capture_output=True, text=True, timeout=60).stdout
    return out.split()


def _by_node(row: dict) -> dict[str, int]:
    """A results row's tasks started per node (its ``node:count`` pairs)."""
    return {node: int(n) for node, _, n in (pair.rpartition(":") for pair in row["tasks_by_node"].split())}


def _job_nodes(job: str) -> str:
    """The node list of a job that has just ended (slurmctld keeps its record MinJobAge seconds)."""
    text = subprocess.run(["scontrol", "show", "job", job], capture_output=True, text=True).stdout
    return text.split(" NodeList=")[1].split()[0]


def test_weak_scaling_scancel_mid_run_leaves_nothing(three_nodes, tmp_path):
    """scancel while the app runs against backends on two worker nodes (srun steps)."""
    results = tmp_path / "results"
    env = _env(RESULTS_DIR=str(results), PROCESSORS="4", SOCKETS_PER_NODE="2", CORES_PER_SOCKET="1",
               POINTS_PER_BLOCK="128", BLOCKS_PER_CORE="64", ARITY="2", ITERATIONS="5", STORAGE="on")
    _rc, job = sbatch("weak_scaling.sh", tmp_path, env, wait=False, nodes=3)
    cancel_when(job, (results / "logs", "*.log"), "csvm:")  # the app is running against the store
    assert survivors(job) == []
    out = job_output(tmp_path, job)
    assert "received SIGTERM" in out and "stopping the running step" in out, out
    assert "clean-up done (exit 143)" in out, out
    assert_stopped(f"{job}.p4")
    assert not (results / "runs" / "p4-ppb128-storage-on.json").exists()


def test_weak_scaling_time_limit_signal_cleans_up(slurm, tmp_path):
    """#SBATCH --signal=B:USR1@N: the script cleans up before SLURM's time limit kills the job.

    slurmctld checks every 30 s and signals at its first check from N + 30 s before the end: with
    a 1-minute limit and N = 10, 20 to 50 s after the start, when the app runs against the store
    (ITERATIONS makes it run longer than that), leaving 10 to 40 s, and the 30 s between SLURM's
    SIGTERM at the limit and its SIGKILL, for the clean-up."""
    results = tmp_path / "results"
    env = _env(RESULTS_DIR=str(results), PROCESSORS="2", SOCKETS_PER_NODE="2", CORES_PER_SOCKET="2",
               POINTS_PER_BLOCK="128", BLOCKS_PER_CORE="400", ARITY="2", ITERATIONS="50", STORAGE="on")
    rc, job = sbatch("weak_scaling.sh", tmp_path, env, extra=["--time=1", "--signal=B:USR1@10"])
    out = job_output(tmp_path, job)
    assert rc == 138, out  # 128 + SIGUSR1: ended by the script, not killed at the limit
    assert "received SIGUSR1 (the time limit is near" in out and "clean-up done (exit 138)" in out, out
    assert "stopping the running step" in out, out
    assert_stopped(f"{job}.p2")
    assert survivors(job) == []


def test_weak_scaling_signal_while_the_store_starts_leaves_nothing(slurm, tmp_path):
    """The time-limit signal while storage_init.sh is starting the store (SLURM may send it that
    early): storage_init.sh is interrupted, stops what it started, and nothing is left."""
    results = tmp_path / "results"
    env = _env(RESULTS_DIR=str(results), PROCESSORS="2", SOCKETS_PER_NODE="2", CORES_PER_SOCKET="1",
               POINTS_PER_BLOCK="128", BLOCKS_PER_CORE="2", ARITY="2", ITERATIONS="2", STORAGE="on")
    _rc, job = sbatch("weak_scaling.sh", tmp_path, env, wait=False)
    d = Path.home() / ".COMPSs" / f"{job}.p2" / "storage"
    deadline = time.monotonic() + 120
    while not (d / "state.json").exists():  # Redis is starting; the backends come next
        assert time.monotonic() < deadline, "the job never started the store"
        time.sleep(0.02)
    subprocess.run(["scancel", "--batch", "--signal=USR1", job], check=True)
    wait_finished(job)
    out = job_output(tmp_path, job)
    assert exit_code(job) == 138, out
    assert "received SIGUSR1" in out and "interrupting storage_init.sh" in out, out
    assert "clean-up done (exit 138)" in out and "storage_init: Redis on" not in out, out
    assert not (d / "state.json").exists()
    assert "shutdown" in (d / "logs" / "redis.log").read_text()
    assert_nothing_left(f"{job}.p2")
    assert survivors(job) == []


def test_weak_scaling_bad_parameter_fails_in_the_job_before_starting_anything(slurm, tmp_path):
    results = tmp_path / "results"
    # 4 processors need 2 worker nodes; the job has 1
    rc, job = sbatch("weak_scaling.sh", tmp_path, _env(RESULTS_DIR=str(results), PROCESSORS="2 4"))
    out = job_output(tmp_path, job)
    assert rc == 2, out
    assert "PROCESSORS: 4 needs 2 worker nodes; the job has 1" in out
    assert not list((Path.home() / ".COMPSs").glob(f"{job}.*")), "a deployment was started"
    assert not results.exists()
    assert survivors(job, timeout=0) == []


@pytest.mark.parametrize("script,values,message", [
    ("weak_scaling.sh", {"PROCESSORS": "2 x"}, "PROCESSORS must list positive integers, got 'x'"),
    ("weak_scaling.sh", {"PROCESSORS": "3"}, "PROCESSORS: 3 is neither at most SOCKETS_PER_NODE (2) nor a multiple"),
    ("weak_scaling.sh", {"SOCKETS_PER_NODE": "0"}, "SOCKETS_PER_NODE must be a positive integer, got '0'"),
    ("weak_scaling.sh", {"POINTS_PER_BLOCK": "128 1024", "BLOCKS_PER_CORE": "8"},
     "BLOCKS_PER_CORE ('8') needs one value per POINTS_PER_BLOCK"),
    ("weak_scaling.sh", {"STORAGE": "maybe"}, "STORAGE must list on and/or off, got 'maybe'"),
    ("weak_scaling.sh", {"PLACEMENT": "random"}, "PLACEMENT must be one of: contiguous round-robin"),
    ("weak_scaling.sh", {"LAUNCHER": "compss"}, "LAUNCHER=compss but launch_compss is not on PATH"),
    ("weak_scaling.sh", {"PYTHON": "/nonexistent/python"}, "Python interpreter '/nonexistent/python' not found"),
    ("weak_scaling.sh", {"MODULES": "COMPSs/3.3"}, "has no 'module' command"),
    ("weak_scaling.sh", {"STORAGE_PROPS": "/nonexistent.props"}, "STORAGE_PROPS '/nonexistent.props' does not exist"),
    ("weak_scaling.sh", {"RESULTS_DIR": "/proc/no/such/dir"}, "RESULTS_DIR '/proc/no/such/dir' cannot be created"),
    ("lstm_offload.sh", {"EPOCHS": "ten"}, "EPOCHS must be a positive integer, got 'ten'"),
    ("lstm_offload.sh", {"PASSES": "3"}, "PASSES must be one of: 1 2; got '3'"),
    ("lstm_offload.sh", {"CSV": "/nonexistent.csv"}, "CSV '/nonexistent.csv' cannot be read"),
    ("enqueue_weak_scaling.sh", {"DRY_RUN": "yes"}, "DRY_RUN must be one of: 0 1"),
    ("enqueue_weak_scaling.sh", {}, "enqueue_compss is not on PATH"),
])
def test_bad_parameters_are_named_and_nothing_starts(script, values, message, tmp_path):
    """Outside SLURM the scripts run on this host: the same checks, before anything starts."""
    env = _env(**values)
    env.setdefault("RESULTS_DIR", str(tmp_path / "results"))
    env.setdefault("PROCESSORS", "2")  # what one host can run: each case fails on its own parameter
    before = set((Path.home() / ".COMPSs").glob("local-*")) if (Path.home() / ".COMPSs").exists() else set()
    proc = subprocess.run(["bash", str(SLURM / script)], env=env, cwd=tmp_path, capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert f"{script}: error: " in proc.stderr and message in proc.stderr, proc.stderr
    after = set((Path.home() / ".COMPSs").glob("local-*")) if (Path.home() / ".COMPSs").exists() else set()
    assert after == before, "a deployment was started"
    assert "starting the store" not in proc.stdout


# ------------------------------------------------------------------ lstm_offload.sh
def test_lstm_offload_job_trains_on_the_backend_and_leaves_nothing(three_nodes, tmp_path):
    """Two nodes: the backend on the first, the client as a job step on the second."""
    results = tmp_path / "results"
    rc, job = sbatch("lstm_offload.sh", tmp_path, _env(RESULTS_DIR=str(results), EPOCHS="3", RUNS="2", SEED="5"),
                     nodes=2)
    out = job_output(tmp_path, job)
    assert rc == 0, out
    server, client = subprocess.run(["scontrol", "show", "hostnames", _job_nodes(job)], capture_output=True,
                                    text=True).stdout.split()
    assert f"backend on {server}, client on {client}" in out
    rows = read_rows(results / "results.csv")
    assert [r["seed"] for r in rows] == ["5", "6"] and {r["epochs"] for r in rows} == {"3"}
    for r in rows:
        for key in ("cpu_mse", "cpu_rmse", "mem_mse", "mem_rmse", "train_time", "eval_time", "memory_mb"):
            assert math.isfinite(float(r[key])) and float(r[key]) > 0, (key, r[key])
        assert math.isclose(float(r["cpu_rmse"]) ** 2, float(r["cpu_mse"]), rel_tol=1e-9)
        assert float(r["client_rss_mb"]) < 100  # the thin client: no torch
    assert rows[0]["cpu_mse"] != rows[1]["cpu_mse"]  # two seeds, two trainings
    first = json.loads((results / "runs" / "run-000.json").read_text())
    assert first["deployment"] == "configured" and first["heavy_modules"] == []
    assert first["progress_events"] == 3 * 2 and "training on the backend" in out
    assert_stopped(f"{job}.lstm")
    assert "clean-up done (exit 0)" in out
    assert survivors(job) == []


def test_lstm_offload_scancel_during_training_leaves_nothing(slurm, tmp_path):
    results = tmp_path / "results"
    _rc, job = sbatch("lstm_offload.sh", tmp_path, _env(RESULTS_DIR=str(results), EPOCHS="5000", PASSES="1"),
                      wait=False)
    cancel_when(job, (tmp_path, f"job-{job}.out"), "loss=")  # the progress bar: an epoch has been trained
    assert survivors(job) == []
    out = job_output(tmp_path, job)
    assert "received SIGTERM" in out and "clean-up done (exit 143)" in out, out
    assert_stopped(f"{job}.lstm")
    assert read_rows(results / "results.csv") == []


# ------------------------------------------------------------------ enqueue_weak_scaling.sh
def test_enqueue_dry_run_prints_the_compss_submissions(tmp_path):
    results = tmp_path / "results"
    env = _env(RESULTS_DIR=str(results), DRY_RUN="1", PROCESSORS="1 4", POINTS_PER_BLOCK="128",
               BLOCKS_PER_CORE="8", ENQUEUE_FLAGS="--qos=debug")
    proc = subprocess.run(["bash", str(SLURM / "enqueue_weak_scaling.sh")], env=env, cwd=tmp_path,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    lines = [ln for ln in proc.stderr.splitlines() if ln.startswith("enqueue_compss ")]
    assert len(lines) == 4  # 2 processor counts x 1 block size x 2 storage modes
    bundle = results / "bundle"
    assert (bundle / "storage-api-compss.jar").is_file() and (bundle / "scripts" / "storage_init.sh").is_file()
    with_store = [ln for ln in lines if ln.endswith("--storage ")]
    assert len(with_store) == 2
    for ln in with_store:
        for flag in (f"--storage_home={bundle} ", f"--classpath={bundle}/storage-api-compss.jar ",
                     f"--pythonpath={bundle}/python:{ROOT} ", "--worker_in_master_cpus=0 ", "--qos=debug "):
            assert flag in ln, (flag, ln)
    p4 = next(ln for ln in with_store if "--processors 4 " in ln)
    assert "--num_nodes=3 " in p4 and "--exec_time=40 " in p4  # master + 2 nodes of 2 sockets
    props = (results / "props" / "storage-p4.props").read_text()
    assert "backends_per_node=2" in props and f"--storage_props={results}/props/storage-p4.props " in p4
    assert "backends_per_node=1" in (results / "props" / "storage-p1.props").read_text()
    without = [ln for ln in lines if ln.endswith("--no-storage ")]
    assert all("--storage_home" not in ln for ln in without)
    report = next(ln for ln in proc.stderr.splitlines() if ln.startswith("sbatch "))
    assert "--dependency=afterany:DRYRUN1:DRYRUN2:DRYRUN3:DRYRUN4 " in report and "slurm_results.py" in report
    assert len((results / "jobs.txt").read_text().splitlines()) == 5
    assert "would be submitted (nothing was)" in proc.stdout and "submitted;" not in proc.stdout


# ------------------------------------------------------------------ with COMPSs' commands (stand-ins)
# COMPSs cannot be installed here: tests/standins/compss/ has test stand-ins for launch_compss and
# enqueue_compss that check what they are given against the COMPSs contract, do what COMPSs' job
# script does with the storage scripts, and run the app with storage-api's executor.
def _compss_env(tmp_path: Path, **values: str) -> dict[str, str]:
    return _env(PATH=f"{STANDINS}:{os.environ['PATH']}", COMPSS_STANDIN_LOG=str(tmp_path / "compss.log"), **values)


def test_weak_scaling_runs_through_launch_compss_when_compss_is_there(slurm, tmp_path):
    results = tmp_path / "results"
    env = _compss_env(tmp_path, RESULTS_DIR=str(results), PROCESSORS="2", SOCKETS_PER_NODE="2", CORES_PER_SOCKET="1",
                      POINTS_PER_BLOCK="128", BLOCKS_PER_CORE="2", ARITY="2", ITERATIONS="2")
    rc, job = sbatch("weak_scaling.sh", tmp_path, env)
    out = job_output(tmp_path, job)
    assert rc == 0, out
    assert "launcher compss" in out
    assert (results / "bundle" / "storage-api-compss.jar").is_file()
    calls = (tmp_path / "compss.log").read_text().splitlines()
    conf = Path.home() / ".COMPSs" / f"{job}.p2" / "storage" / "cfgfiles" / "storage.properties"
    assert [c.split(" conf=")[1].split(" ")[0] for c in calls] == [str(conf), "none"], calls
    rows = read_rows(results / "results.csv")
    assert sorted(r["storage"] for r in rows) == ["off", "on"]
    on, off = sorted(rows, key=lambda r: r["storage"] != "on")
    assert on["score"] == off["score"] and int(on["bytes_moved"]) < int(off["bytes_moved"])
    assert_stopped(f"{job}.p2")
    assert survivors(job) == []


def test_enqueue_weak_scaling_submits_one_compss_job_per_run_and_a_report(slurm, tmp_path):
    results = tmp_path / "results"
    env = _compss_env(tmp_path, RESULTS_DIR=str(results), PROCESSORS="1 2", CORES_PER_SOCKET="1",
                      POINTS_PER_BLOCK="128", BLOCKS_PER_CORE="2", ARITY="2", ITERATIONS="2",
                      COMPSS_STANDIN_CPUS=CPUS, COMPSS_STANDIN_OUTPUT=f"{tmp_path}/compss-%j.out")
    proc = subprocess.run(["bash", str(SLURM / "enqueue_weak_scaling.sh")], env=env, cwd=tmp_path,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    jobs = dict(reversed(line.split()) for line in (results / "jobs.txt").read_text().splitlines())
    assert sorted(jobs.values()) == sorted(["report", "p1-ppb128-storage-on", "p1-ppb128-storage-off",
                                            "p2-ppb128-storage-on", "p2-ppb128-storage-off"])
    for job in jobs:
        wait_finished(job, timeout=300)
    for job, tag in jobs.items():
        out = (tmp_path / f"compss-{job}.out").read_text() if tag != "report" else ""
        if tag.endswith("storage-on"):
            assert "storage_init: Redis on" in out and "storage_stop: job" in out, out
            assert_stopped(job)
        assert survivors(job) == []
    rows = read_rows(results / "results.csv")
    assert sorted((r["processors"], r["storage"]) for r in rows) == [("1", "off"), ("1", "on"), ("2", "off"), ("2", "on")]
    assert all(0.9 <= float(r["score"]) <= 1.0 for r in rows)
    assert (results / "weak_scaling.png").read_bytes()[:4] == b"\x89PNG"
    calls = (tmp_path / "compss.log").read_text()
    assert calls.count("conf=none") == 2 and calls.count("storage.properties") == 2
