"""storage.api, played the way PyCOMPSs calls it, against real backends.

Each sequence runs in a fresh interpreter, as a COMPSs master or worker process would, and forks
where the piper worker forks. What a task changed is then read from a fresh client in this process.
"""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from storage_api._client import Client
from storage_api.errors import ConfigError
from tests.conftest import Cluster, run_python
from tests.models import Counter


@pytest.fixture
def conf(cluster: Cluster, tmp_path: Path) -> Path:
    """A storage conf naming the test deployment (what storage_init.sh writes on a cluster)."""
    s = cluster.settings()
    path = tmp_path / "storage.properties"
    path.write_text(f"# storage conf\nredis_url={s.redis_url}\nsecret_file=\"{s.secret_file}\"\n\nnetwork=ethernet\n")
    return path


def _run(code: str, *args: str, env: dict | None = None) -> str:
    proc = run_python(PRELUDE + textwrap.dedent(code) + "\n", env={"SA_ARGS": "\x1f".join(args), **(env or {})}, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc.stdout


PRELUDE = """
import logging, os, sys
ARGS = os.environ["SA_ARGS"].split("\\x1f")

class Parameter:  # the shape of pycompss.runtime.task.parameter.Parameter that TaskContext sees
    def __init__(self, content):
        self.content = content
"""


def test_import_is_cheap_and_inert() -> None:
    out = _run("""
        import sys
        import storage.api as api
        assert {"init", "finish", "getByID", "TaskContext", "initWorker", "finishWorker",
                "initWorkerPostFork", "finishWorkerPostFork", "StorageObject"} <= set(dir(api))
        assert not hasattr(api, "__pipelining__") or not api.__pipelining__
        loaded = [m for m in ("numpy", "torch", "storage_api._client", "storage_api._redis") if m in sys.modules]
        print("loaded", loaded)
        import storage_api
        assert api.StorageObject is storage_api.ActiveObject
    """)
    assert "loaded []" in out


def test_master_sequence(client, conf: Path) -> None:
    c = Counter(3)
    oid = c.make_persistent()
    out = _run("""
        import storage.api as api
        api.init(config_file_path=ARGS[0])
        obj = api.getByID(ARGS[1])
        assert obj.getID() == ARGS[1], obj.getID()
        assert obj.get() == 3
        a, b = api.getByID(ARGS[1], ARGS[1])   # tolerated: several ids give a list
        assert a.getID() == b.getID() == ARGS[1]
        api.finish()
        print("master ok")
    """, str(conf), oid)
    assert "master ok" in out


def test_piper_worker_sequence_with_fork(client, conf: Path) -> None:
    """initWorker, a fork, PostFork, TaskContext around a task that mutates; visible after exit."""
    c = Counter(10)
    oid = c.make_persistent()
    _run("""
        import storage.api as api
        api.initWorker(config_file_path=ARGS[0])
        assert api.getByID(ARGS[1]).getID() == ARGS[1]   # the parent used a connection before forking
        pid = os.fork()
        if pid == 0:
            code = 1
            try:
                api.initWorkerPostFork()
                values = [Parameter(ARGS[1])]
                ctx = api.TaskContext(logging.getLogger("pycompss.worker"), values, config_file_path=ARGS[0])
                ctx.__enter__()
                obj = api.getByID(values[0].content)
                assert obj.getID() == ARGS[1]
                obj.inc(5)                     # the task: an active method ...
                obj.value = obj.value * 2      # ... and an attribute write
                values[0].content = obj
                ctx.values = tuple(values)
                ctx.__exit__(None, None, None)
                assert obj.getID() == ARGS[1]  # __exit__ changes no id
                api.finishWorkerPostFork()
                code = 0
            finally:
                os._exit(code)
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0, status
        assert api.getByID(ARGS[1]).get() == 30   # the parent's own connection still works
        api.finishWorker()
    """, str(conf), oid)
    other = Client(client.settings)  # a client that never saw the object: the mutation is in the store
    try:
        assert other.get_by_id(oid).get() == 30
    finally:
        other.close()


def test_gat_worker_sequence_without_postfork(client, conf: Path) -> None:
    """A GAT worker: initWorker, the task (getByID connects lazily), finishWorker; no PostFork calls."""
    oid = Counter(1).make_persistent()
    _run("""
        import storage.api as api
        api.initWorker(config_file_path=ARGS[0])
        values = [Parameter(ARGS[1])]
        ctx = api.TaskContext(logging.getLogger("pycompss.worker"), values, config_file_path=ARGS[0])
        ctx.__enter__()
        values[0].content = api.getByID(values[0].content)
        values[0].content.inc(41)
        ctx.__exit__(None, None, None)
        api.finishWorker()
    """, str(conf), oid)
    assert client.get_by_id(oid).get() == 42


def test_empty_conf_uses_the_default_deployment(client, cluster: Cluster, tmp_path: Path) -> None:
    oid = Counter(8).make_persistent()
    empty = tmp_path / "empty.conf"
    empty.write_text("")
    out = _run("""
        import storage.api as api
        api.init(config_file_path=ARGS[0])
        print("value", api.getByID(ARGS[1]).get())
        api.finish()
    """, str(empty), oid, env={"STORAGE_API_CONFIG": str(cluster.dep.config_path)})
    assert "value 8" in out


def test_conf_errors_are_loud(tmp_path: Path) -> None:
    import storage.api as api

    bad = tmp_path / "bad.conf"
    bad.write_text("redis_ulr=redis://127.0.0.1:6379/0\n")
    with pytest.raises(ConfigError, match="unknown key 'redis_ulr'"):
        api.init(config_file_path=str(bad))
    bad.write_text("just a line\n")
    with pytest.raises(ConfigError, match="key=value"):
        api.initWorker(config_file_path=str(bad))


def test_getbyid_without_any_init(client, cluster: Cluster) -> None:
    """A process that never called init (the settings come from the environment) still resolves ids."""
    oid = Counter(4).make_persistent()
    out = _run("""
        import storage.api as api
        obj = api.getByID(ARGS[0])
        print("id", obj.getID() == ARGS[0], "value", obj.get())
    """, oid, env={"STORAGE_API_CONFIG": str(cluster.dep.config_path)})
    assert "id True value 4" in out
