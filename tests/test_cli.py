"""The command line: up, status, down, and connect() finding the deployment with no arguments."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from tests.conftest import ROOT, _state, run_python


def _cli(*args, env):
    return subprocess.run([sys.executable, "-m", "storage_api", *args], capture_output=True, text=True,
                          env=env, cwd=ROOT, timeout=120)


def _running(pid: int) -> bool:
    """Whether a process runs (an exited one may linger as a zombie until its parent reaps it)."""
    try:
        return _state(pid) != "Z"
    except FileNotFoundError:
        return False


@pytest.fixture
def home_env(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("STORAGE_API_")}
    env["STORAGE_API_HOME"] = str(tmp_path / "home")
    yield env
    _cli("down", "--purge", env=env)


def test_up_status_down(home_env):
    up = _cli("up", "--backends", "3", env=home_env)
    assert up.returncode == 0, up.stderr
    again = _cli("up", env=home_env)
    assert again.returncode != 0 and "already running" in again.stderr

    status = _cli("status", "--json", env=home_env)
    assert status.returncode == 0, status.stderr
    rows = json.loads(status.stdout)["backends"]
    assert sorted(r["name"] for r in rows) == ["b0", "b1", "b2"]
    assert all(r["alive"] and r["port"] > 0 and r["compss_name"] for r in rows)

    code = (
        "import storage_api\n"
        "from tests.models import Counter\n"
        "storage_api.connect()\n"  # finds the file `up` wrote
        "c = Counter(1); c.make_persistent(alias='cli-counter', backend='b2'); print(c.inc())\n"
        "c.new_replica('b0'); c.new_replica('b1')\n"
    )
    out = run_python(code, env=home_env)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "2"
    table = _cli("status", env=home_env)
    assert "b2" in table.stdout and "ALIVE" in table.stdout
    assert "cli-counter" in table.stdout and "b0,b1" in table.stdout  # the object: primary, replicas
    listing = json.loads(_cli("status", "--json", env=home_env).stdout)
    assert {r["name"]: (r["objects"], r["replicas"]) for r in listing["backends"]} == {
        "b0": (0, 1), "b1": (0, 1), "b2": (1, 0)}
    [obj] = listing["objects"]
    names = {r["id"]: r["name"] for r in listing["backends"]}
    assert names[obj["backend"]] == "b2" and sorted(names[r] for r in obj["replicas"]) == ["b0", "b1"]
    summary = _cli("status", "--objects", "0", env=home_env)
    assert "1 objects" in summary.stdout and "b2 -> b0,b1" in summary.stdout

    # no secret on any command line (other local users can read those)
    home = home_env["STORAGE_API_HOME"]
    secret = open(f"{home}/local/secret").read().strip()
    password = open(f"{home}/local/client.toml").read().split("redis://:")[1].split("@")[0]
    deployment = json.loads(open(f"{home}/local/deployment.json").read())
    for pid in [r["pid"] for r in rows] + [deployment["redis"]["pid"]]:
        cmdline = open(f"/proc/{pid}/cmdline").read()
        assert secret not in cmdline and password not in cmdline

    pids = [r["pid"] for r in rows]
    down = _cli("down", env=home_env)
    assert down.returncode == 0, down.stderr
    for pid in pids:
        assert not _running(pid)

    # data survives down/up: the object is served again
    assert _cli("up", "--backends", "3", env=home_env).returncode == 0
    code = (
        "import storage_api\n"
        "from tests.models import Counter\n"
        "storage_api.connect()\n"
        "print(Counter.get_by_alias('cli-counter').get())\n"
    )
    out = run_python(code, env=home_env)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "2"


def test_status_without_deployment_is_a_clear_error(home_env):
    out = _cli("status", env=home_env)
    assert out.returncode == 2 and "storage-api up" in out.stderr


def test_backend_requires_storage_dir(home_env):
    out = _cli("backend", "--redis", "redis://127.0.0.1:1/0", "--secret-file", "/dev/null", env=home_env)
    assert out.returncode == 2 and "storage" in out.stderr


def test_config_command_lists_settings(home_env):
    out = _cli("config", env={**home_env, "STORAGE_API_REDIS_URL": "redis://h:2/0"})
    assert out.returncode == 0 and "redis://h:2/0" in out.stdout and "liveness_timeout" in out.stdout


def test_backend_command_as_cluster_scripts_use_it(tmp_path, home_env):
    """`storage-api backend --redis URL --storage-dir DIR --compss-name NODE`, secret from the environment."""
    import signal

    from storage_api._deploy import _local

    logs = tmp_path / "logs"
    logs.mkdir()
    redis_proc, url = _local._start_redis(tmp_path, logs)
    env = {**home_env, "STORAGE_API_SECRET": "cluster-secret"}
    proc = subprocess.Popen([sys.executable, "-m", "storage_api", "backend", "--redis", url, "--storage-dir",
                             str(tmp_path / "b"), "--name", "socket0", "--compss-name", "s01r1b42-ib0",
                             "--host", "0.0.0.0", "--advertise-host", "127.0.0.1"],
                            env=env, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        code = (
            "import storage_api, time\n"
            "from tests.models import Counter\n"
            "while not [b for b in storage_api.backends() if b.alive]: time.sleep(0.05)\n"
            "(b,) = storage_api.backends()\n"
            "c = Counter(1); c.make_persistent(backend=b)\n"
            "print(b.name, b.compss_name, b.host, c.inc())\n"
        )
        out = run_python(code, env={**env, "STORAGE_API_REDIS_URL": url})
        assert out.returncode == 0, out.stderr
        assert out.stdout.split() == ["socket0", "s01r1b42-ib0", "127.0.0.1", "2"]
        # a second backend on the same directory (one log, two writers), or under the same name
        for storage, name, says in ((tmp_path / "b", "socket1", "is in use by another backend"),
                                    (tmp_path / "c", "socket0", "already named 'socket0'")):
            second = subprocess.run([sys.executable, "-m", "storage_api", "backend", "--redis", url, "--storage-dir",
                                     str(storage), "--name", name, "--host", "127.0.0.1"],
                                    env=env, cwd=ROOT, capture_output=True, text=True, timeout=60)
            assert second.returncode == 2 and says in second.stderr and "Traceback" not in second.stderr, second.stderr
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=15) == 0
        # It deregistered as it stopped: listed as stopped, not DEAD; with no other backend, status 1.
        status = _cli("status", env={**env, "STORAGE_API_REDIS_URL": url})
        assert status.returncode == 1, status.stderr
        row = status.stdout.splitlines()[1].split()
        assert (row[0], row[6]) == ("socket0", "stopped") and "no backend is alive" in status.stdout
    finally:
        if proc.poll() is None:
            proc.kill()
        os.kill(redis_proc.pid, signal.SIGTERM)
        os.waitpid(redis_proc.pid, 0)


_TASK_APP = '''
from pycompss.api.task import task
from pycompss.api.api import compss_wait_on

@task(returns=1)
def square(x):
    return x * x

print("squares", compss_wait_on([square(i) for i in range(4)]))
'''


def test_run_comes_from_the_executor_plugin(tmp_path, home_env):
    """`storage-api run` is the executor's entry point: the app's tasks run and their results return."""
    app = tmp_path / "app.py"
    app.write_text(_TASK_APP)
    out = _cli("run", "--workers", "1", str(app), env=home_env)
    assert out.returncode == 0, out.stderr
    assert "squares [0, 1, 4, 9]" in out.stdout
    helped = _cli("run", "--help", env=home_env)
    assert helped.returncode == 0 and helped.stdout.startswith("usage: storage-api run")


def test_run_without_its_plugin_is_a_clear_error(tmp_path, home_env):
    """An installation whose metadata lacks the plugin: `run` says where the command comes from."""
    dist = tmp_path / "meta" / "storage_api-0.1.0.dist-info"  # found first, so it is the distribution
    dist.mkdir(parents=True)
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: storage-api\nVersion: 0.1.0\n")
    (dist / "entry_points.txt").write_text("[console_scripts]\nstorage-api = storage_api._cli:main\n")
    env = {**home_env, "PYTHONPATH": os.pathsep.join([str(tmp_path / "meta"), str(ROOT)])}
    out = subprocess.run([sys.executable, "-m", "storage_api", "run", "app.py"], capture_output=True, text=True,
                         env=env, cwd=tmp_path, timeout=120)  # not the checkout's directory: its metadata
    assert out.returncode == 2
    assert "no installed plugin provides this command" in out.stderr and "workflows" in out.stderr
    assert "Traceback" not in out.stderr


def test_up_passes_settings_to_its_backends(home_env):
    """`up --set` and the STORAGE_API_* variables of up's environment reach the deployment's
    settings file, which its backends read (seen in what a backend reports); mistakes are refused
    before anything starts."""
    env = dict(home_env, STORAGE_API_WRITE_WATCH="false")
    up = _cli("up", "--backends", "1", "--set", "intra_op_threads=1", "--set", "serve_spin_us=0", env=env)
    assert up.returncode == 0, up.stderr
    assert "write_watch = false" in up.stderr and "intra_op_threads = 1" in up.stderr
    config = (open(os.path.join(home_env["STORAGE_API_HOME"], "local", "client.toml")).read())
    assert "write_watch = false" in config and "intra_op_threads = 1" in config and "serve_spin_us = 0.0" in config
    status = _cli("status", "--json", env=home_env)
    assert status.returncode == 0, status.stderr
    assert [b["threads"] for b in json.loads(status.stdout)["backends"]] == [1]
    assert _cli("down", env=home_env).returncode == 0
    for bad, says in ((["--set", "nosuch=1"], "unknown setting"), (["--set", "write_watch=maybe"], "must be a bool"),
                      (["--set", "redis_url=redis://x"], "sets it itself"), (["--set", "port=5555"], "sets it itself"),
                      (["--set", "novalue"], "SETTING=VALUE"), ({"STORAGE_API_REDIS_URL": "redis://x"}, "sets redis_url"),
                      ({"STORAGE_API_NAME": "zz"}, "sets name"), (["--set", "cpu_slice_us=50"], "--set cpu_slice_us: "),
                      ({"STORAGE_API_CPU_SLICE_US": "50"}, "STORAGE_API_CPU_SLICE_US: cpu_slice_us must be")):
        args, extra = (bad, {}) if isinstance(bad, list) else ([], bad)
        refused = _cli("up", *args, env=dict(home_env, **extra))
        assert refused.returncode == 2 and says in refused.stderr, (bad, refused.stderr)
        assert "redis-server running" not in refused.stderr


def test_down_stops_a_backend_that_joined_by_hand(home_env, tmp_path):
    """A backend started on this machine with the deployment's Redis URL and secret (not its
    settings file) is stopped by `down` with the others, while Redis still runs: it deregisters
    (not DEAD at the next `up`)."""
    assert _cli("up", "--backends", "1", env=home_env).returncode == 0
    local = os.path.join(home_env["STORAGE_API_HOME"], "local")
    redis_url = [line.split("=", 1)[1].strip().strip('"') for line in open(os.path.join(local, "client.toml"))
                 if line.startswith("redis_url")][0]
    env = dict(home_env, STORAGE_API_REDIS_URL=redis_url)
    extra = subprocess.Popen([sys.executable, "-m", "storage_api", "backend", "--storage-dir", str(tmp_path / "bx"),
                              "--name", "bx", "--secret-file", os.path.join(local, "secret")], env=env, cwd=ROOT,
                             stdout=subprocess.DEVNULL, stderr=open(tmp_path / "bx.log", "w"))
    try:
        for _ in range(300):
            status = _cli("status", "--json", env=home_env)
            if status.returncode == 0 and "bx" in [b["name"] for b in json.loads(status.stdout)["backends"]]:
                break
        else:
            raise AssertionError("the hand-started backend never registered")
        down = _cli("down", env=home_env)
        assert down.returncode == 0 and "keeps running" not in down.stderr
        assert extra.wait(timeout=60) == 0  # stopped gracefully
        assert "could not deregister" not in open(tmp_path / "bx.log").read()
    finally:
        extra.terminate()
        extra.wait(timeout=60)


def test_down_stops_a_backend_restarted_with_the_readme_recipe(home_env):
    """One killed backend of `up`'s deployment, started again as README shows (the `storage-api`
    script, the deployment's settings file): it is the deployment's, and `down` stops it."""
    import shutil
    import signal

    script = shutil.which("storage-api", path=os.path.dirname(sys.executable)) or shutil.which("storage-api")
    if script is None:
        pytest.skip("the storage-api script is not installed")
    assert _cli("up", "--backends", "1", env=home_env).returncode == 0
    local = os.path.join(home_env["STORAGE_API_HOME"], "local")
    first = json.loads(_cli("status", "--json", env=home_env).stdout)["backends"][0]["pid"]
    os.kill(first, signal.SIGKILL)
    again = subprocess.Popen([script, "backend", "--config", "client.toml", "--storage-dir", "backends/b0",
                              "--name", "b0"], env=home_env, cwd=local,  # relative paths: resolved in its cwd
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        for _ in range(300):
            rows = json.loads(_cli("status", "--json", env=home_env).stdout or "{}").get("backends", [])
            if any(b["pid"] == again.pid and b["alive"] for b in rows):
                break
        else:
            raise AssertionError("the restarted backend never came up")
        refused = _cli("up", env=home_env)
        assert refused.returncode != 0 and "already running" in refused.stderr
        down = _cli("down", env=home_env)
        assert down.returncode == 0 and "joined this deployment by hand" not in down.stderr
        assert again.wait(timeout=60) is not None  # stopped by down
    finally:
        if again.poll() is None:
            again.kill()
