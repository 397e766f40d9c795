"""storage.StorageItf (the jar) against a real Redis and real backends, through JUnit 4.

The fixture starts a Redis and two backends with different COMPSs node names: one given with
``--compss-name``, one derived from the hostname and the ``infiniband`` network suffix. JUnit gets
their addresses in system properties; what the Java side created is checked from Python afterwards.
"""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from storage_api import _context
from storage_api._client import Client
from storage_api._compss import _bundle
from storage_api._config import Settings, read_file, to_toml
from storage_api._deploy import _local
from storage_api.errors import ObjectNotFound
from tests.models import Counter

# Each test says what it needs: the jar only a JDK, the JUnit run Debian's junit4 as well.
HAS_JDK = shutil.which("javac") is not None and shutil.which("jar") is not None
needs_jdk = pytest.mark.skipif(not HAS_JDK, reason="needs a JDK (javac, jar; .ci/run installs one)")
needs_junit = pytest.mark.skipif(not HAS_JDK or not Path("/usr/share/java/junit4.jar").exists(),
                                 reason="needs a JDK and Debian's junit4 (.ci/run installs them)")

IB_NAME = socket.gethostname() + "-ib0"
JAVA_TESTS = Path(__file__).resolve().parent / "java"  # the JUnit sources (not shipped with the package)
JUNIT = [Path("/usr/share/java") / name for name in ("junit4.jar", "hamcrest-core.jar")]


def junit_classpath() -> list[Path]:
    """Build the jar and compile the JUnit tests against it (when stale); the classpath that runs them."""
    jar = _bundle.build_jar()
    out = _bundle.default_build_dir() / "test-classes"
    sources = _bundle.sources(JAVA_TESTS) + _bundle.stand_ins()  # the tests use the COMPSs interfaces too
    stamp = out / ".built"
    if _bundle.stale(stamp, sources + [jar]):
        shutil.rmtree(out, ignore_errors=True)
        _bundle.javac(out, [jar, *JUNIT], sources)
        stamp.touch()
    return [out, jar, *JUNIT]


class Deployment:
    def __init__(self, root: Path) -> None:
        self.root = root
        logs = root / "logs"
        logs.mkdir(parents=True)
        self.redis, self.url = _local._start_redis(root, logs)
        secret = root / "secret"
        secret.write_text(secrets.token_hex(16))
        self.config = root / "client.toml"
        self.config.write_text(to_toml({"redis_url": self.url, "secret_file": str(secret)}))
        ib = root / "ib.toml"
        ib.write_text(to_toml({"redis_url": self.url, "secret_file": str(secret), "network": "infiniband"}))
        self.procs: list[subprocess.Popen] = []
        self.client = Client(Settings(**read_file(self.config)).validate())
        try:
            self.procs.append(self._backend("jA", self.config, "--compss-name", "compss-node-a"))
            self.procs.append(self._backend("jB", ib))
            deadline = time.monotonic() + 30
            while sum(b.alive for b in self.client.backends()) < 2:
                logs_text = _local._tail(str(logs / "jA.log")) + _local._tail(str(logs / "jB.log"))
                assert time.monotonic() < deadline, logs_text
                assert all(p.poll() is None for p in self.procs), logs_text
                time.sleep(0.05)
        except BaseException:
            self.close()
            raise
        self.ids = {b.name: b.id for b in self.client.backends()}

    def _backend(self, name: str, config: Path, *extra: str) -> subprocess.Popen:
        cmd = [sys.executable, "-m", "storage_api", "backend", "--config", str(config), "--storage-dir",
               str(self.root / name), "--name", name, "--no-fsync", *extra]
        return _local._spawn(cmd, self.root / "logs" / f"{name}.log")

    def close(self) -> None:
        self.client.close()
        for p in self.procs:
            p.send_signal(signal.SIGTERM)
        for p in self.procs:
            try:
                p.wait(15)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        _local._terminate([self.redis.pid], 10)


@pytest.fixture(scope="module")
def deployment(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployment]:
    d = Deployment(tmp_path_factory.mktemp("java"))
    previous = _context.install(d.client)
    yield d
    _context.install(previous)
    d.close()


def test_backends_register_their_compss_names(deployment: Deployment) -> None:
    names = {b.name: b.compss_name for b in deployment.client.backends()}
    assert names == {"jA": "compss-node-a", "jB": IB_NAME}


@needs_junit
@pytest.mark.slow  # builds the jar and starts a JVM
def test_storageitf_junit(deployment: Deployment, tmp_path: Path) -> None:
    client = deployment.client
    c = Counter(7)
    oid = c.make_persistent(backend="jA")
    client.new_replica(c, deployment.ids["jB"])
    oid2 = Counter(11).make_persistent(backend="jA")
    conf = tmp_path / "storage.conf"
    conf.write_text(f"# written by the test\nredis_url={deployment.url}\n")
    out = tmp_path / "created.txt"
    classpath = os.pathsep.join(map(str, junit_classpath()))
    props = {"conf": conf, "oid": oid, "oid2": oid2, "locations": f"compss-node-a,{IB_NAME}", "hostB": IB_NAME,
             "out": out}
    cmd = ["java", "-cp", classpath, *[f"-Dstorageapi.test.{k}={v}" for k, v in props.items()],
           "org.junit.runner.JUnitCore", "storageapi.StorageItfTest"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "OK (12 tests)" in proc.stdout, proc.stdout

    # What Java asked for really happened in the store.
    created = dict(line.split(" ", 1) for line in out.read_text().splitlines())
    src, v = created["preserved"].split()
    assert src == oid and client.get_by_id(v).value == 7 and client.get_by_id(oid).value == 7
    assert client.meta.object(v).backend == deployment.ids["jB"]
    src, v = created["dropped"].split()
    with pytest.raises(ObjectNotFound):
        client.meta.object(src)
    assert client.get_by_id(v).get() == 7
    v3 = created["consolidated"]
    assert client.get_by_id(v3).value == 11
    with pytest.raises(ObjectNotFound):
        client.meta.object(oid2)


@needs_jdk
def test_jar_holds_only_our_classes() -> None:
    import zipfile

    names = {n for n in zipfile.ZipFile(_bundle.build_jar()).namelist() if n.endswith(".class")}
    assert {n for n in names if n.startswith("storage/")} == {"storage/StorageItf.class", "storage/StorageException.class"}
    assert all(n.startswith(("storage/", "storageapi/")) for n in names)
