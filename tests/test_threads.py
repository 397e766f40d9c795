"""Intra-op thread pools sized to the CPUs a backend was given (its affinity, or the setting)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

import pytest

from storage_api._backend._threads import POOL_VARIABLES, WAIT_POLICY, affinity_cores, choose, size_pools
from storage_api._config import load
from storage_api.errors import ConfigError
from tests.conftest import ROOT, run_python


def test_the_setting_wins_then_the_users_omp_variable_then_the_affinity():
    assert choose(3, {"OMP_NUM_THREADS": "5"}) == 3
    assert choose(0, {"OMP_NUM_THREADS": "5"}) == 5
    assert choose(0, {"OMP_NUM_THREADS": "4,2"}) == 4  # OpenMP's per-level list: the outer level counts
    assert choose(0, {}) == affinity_cores() == len(os.sched_getaffinity(0))


def test_a_users_pool_variable_is_kept_unless_the_setting_is_given():
    env = {"MKL_NUM_THREADS": "7"}
    assert size_pools(0, env) == affinity_cores()
    assert env["MKL_NUM_THREADS"] == "7" and env["OPENBLAS_NUM_THREADS"] == str(affinity_cores())
    env = {"MKL_NUM_THREADS": "7"}
    assert size_pools(2, env) == 2 and all(env[v] == "2" for v in POOL_VARIABLES)


def test_waiting_openmp_threads_sleep_unless_the_user_chose_a_policy():
    """A thread that waits for the others must not spin on the core they need (a busy machine)."""
    env: dict[str, str] = {}
    size_pools(0, env)
    assert env[WAIT_POLICY] == "PASSIVE"
    env = {WAIT_POLICY: "ACTIVE"}
    size_pools(1, env)
    assert env[WAIT_POLICY] == "ACTIVE"


@pytest.mark.parametrize("value", ["0", "many", "-1"])
def test_a_bad_omp_variable_is_a_config_error(value):
    with pytest.raises(ConfigError, match="OMP_NUM_THREADS"):
        choose(0, {"OMP_NUM_THREADS": value})


def test_a_negative_setting_is_a_config_error():
    with pytest.raises(ConfigError, match="intra_op_threads"):
        load(use_default_file=False, intra_op_threads=-1)


def _pools_on_a_backend(tmp_path, launcher: list[str], extra: list[str]) -> tuple[dict, dict]:
    """Start a backend as ``launcher + storage-api backend ... + extra``; return its status row
    (JSON) and the pools one of its methods sees."""
    from storage_api._deploy import _local

    logs = tmp_path / "logs"
    logs.mkdir()
    redis_proc, url = _local._start_redis(tmp_path, logs)
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("STORAGE_API_") and k not in (*POOL_VARIABLES, WAIT_POLICY)}
    env.update(STORAGE_API_SECRET="threads-secret", STORAGE_API_HOME=str(tmp_path / "home"))
    proc = subprocess.Popen([*launcher, sys.executable, "-m", "storage_api", "backend", "--redis", url,
                             "--storage-dir", str(tmp_path / "b"), "--name", "pinned", *extra],
                            env=env, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        code = (
            "import json, storage_api, time\n"
            "from tests.models import Pools\n"
            "while not [b for b in storage_api.backends() if b.alive]: time.sleep(0.05)\n"
            "p = Pools(); p.make_persistent(backend='pinned')\n"
            "print(json.dumps(p.sizes()))\n"
        )
        # The method's first import of torch holds the pinned backend's one CPU (and its GIL) for
        # seconds on a busy machine: the client waits that long for its liveness replies.
        out = run_python(code, env={**env, "STORAGE_API_REDIS_URL": url, "STORAGE_API_LIVENESS_TIMEOUT": "120"})
        assert out.returncode == 0, out.stderr
        status = [subprocess.run([sys.executable, "-m", "storage_api", "status", *args], capture_output=True,
                                 text=True, env={**env, "STORAGE_API_REDIS_URL": url}, cwd=ROOT, timeout=60).stdout
                  for args in (["--json"], [])]
        [row] = json.loads(status[0])["backends"]
        header, line = status[1].splitlines()[:2]
        assert header.split()[8] == "THREADS" and line.split()[7] == str(row["threads"])  # (COMPSS NAME: 2 words)
        return row, json.loads(out.stdout)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)
        os.kill(redis_proc.pid, signal.SIGTERM)
        os.waitpid(redis_proc.pid, 0)


def test_a_backend_pinned_to_one_cpu_computes_with_one_thread(tmp_path):
    """`taskset -c 0 storage-api backend ...`: one intra-op thread in status and in torch, BLAS and
    OpenMP as its methods see them (the machine's cores would be the libraries' own choice)."""
    row, pools = _pools_on_a_backend(tmp_path, ["taskset", "-c", str(min(os.sched_getaffinity(0)))], [])
    assert row["name"] == "pinned" and row["threads"] == 1
    assert pools == {"torch": 1, "torch_interop": 1, "omp_env": "1", "omp_wait": "PASSIVE", "blas": [1]}


@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="needs two CPUs to tell the setting from the affinity")
def test_the_threads_option_overrides_the_affinity(tmp_path):
    row, pools = _pools_on_a_backend(tmp_path, [], ["--threads", "1"])
    assert row["threads"] == 1
    assert pools == {"torch": 1, "torch_interop": 1, "omp_env": "1", "omp_wait": "PASSIVE", "blas": [1]}
