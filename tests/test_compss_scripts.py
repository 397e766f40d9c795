"""The bundle's storage_init.sh / storage_stop.sh, run for real on this host (master = worker).

The scripts are those of a bundle built by ``make_bundle`` (so the layout ``enqueue_compss
--storage_home`` sees is the one tested), with a temporary ``HOME`` for ``$HOME/.COMPSs/<job>``.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest

from storage_api import _context
from storage_api._backend._store import Store
from storage_api._client import Client
from storage_api._compss import _bundle
from storage_api._compss._conf import read_conf, settings_from_conf
from tests.conftest import ROOT
from tests.models import Counter

HOST = socket.gethostname()


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _bundle.make_bundle(tmp_path_factory.mktemp("bundle") / "storage_api")


@pytest.fixture
def home(tmp_path: Path) -> Path:
    h = tmp_path / "home"
    h.mkdir()
    return h


def _script(bundle: Path, home: Path, name: str, *args: str, user: str | None = "") -> subprocess.CompletedProcess:
    """Run a bundle script; ``user``: ``USER`` in its environment (None: unset; "": ours)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("STORAGE_API_")}
    env["HOME"] = str(home)
    if user is None:
        env.pop("USER", None)
    elif user:
        env["USER"] = user
    return subprocess.run([str(bundle / "scripts" / name), *args], capture_output=True, text=True, timeout=120,
                          cwd=ROOT, env=env)


def _processes_mentioning(text: str) -> list[str]:
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            state = (proc / "stat").read_text().rpartition(")")[2].split()[0]
        except OSError:
            continue
        if text in cmdline and state != "Z":
            found.append(f"{proc.name}: {cmdline}")
    return found


def _running(pid: int) -> bool:
    try:
        return (Path(f"/proc/{pid}") / "stat").read_text().rpartition(")")[2].split()[0] != "Z"
    except OSError:
        return False


@pytest.mark.parametrize("keep", [False, True], ids=["default", "keep_data"])
def test_init_use_stop_on_this_host(bundle: Path, home: Path, tmp_path: Path, keep: bool) -> None:
    props = tmp_path / "props"
    data = tmp_path / "data"
    props.write_text(f"# two backends on this one node\nbackends_per_node=2\nfsync=false\nstorage_dir={data}/$JOB\n"
                     "threads=1\n" + ("keep_data=true\n" if keep else ""))
    variables = tmp_path / "vars"
    variables.write_text("")
    r = _script(bundle, home, "storage_init.sh", "4242", HOST, HOST, HOST, "ethernet", str(props), str(variables),
                "false", "disabled")
    assert r.returncode == 0, r.stdout + r.stderr
    storage = home / ".COMPSs" / "4242" / "storage"
    previous = _context.peek()
    try:  # whatever fails here, storage_stop.sh runs
        conf = storage / "cfgfiles" / "storage.properties"
        assert read_conf(conf)["redis_url"].startswith("redis://:")
        assert f"export STORAGE_API_CONFIG={storage / 'cfgfiles' / 'client.toml'}" in variables.read_text()
        state = json.loads((storage / "state.json").read_text())
        client = Client(settings_from_conf(conf))
        _context.install(client)
        infos = client.backends()
        assert sorted(b.name for b in infos if b.alive) == [f"{HOST}-0", f"{HOST}-1"]
        assert {b.compss_name for b in infos} == {HOST}  # ethernet: no suffix
        assert {b.threads for b in infos} == {1}  # the props' threads, not this host's CPUs
        c = Counter(1)
        oid = c.make_persistent(backend=f"{HOST}-1")
        assert c.inc(4) == 5
        pids = [*state["pids"], *(b.pid for b in infos)]
        client.close()
        assert (data / "4242" / HOST / f"{HOST}-1" / "log").is_dir()
        assert {"secret", "redis.conf", "tls", "cfgfiles"} <= {p.name for p in storage.iterdir()}
    finally:
        _context.install(previous)
        r = _script(bundle, home, "storage_stop.sh", "4242", HOST, HOST, HOST, "ethernet", str(props))
    assert r.returncode == 0, r.stdout + r.stderr
    assert "2 backends stopped" in r.stdout
    assert [p for p in pids if _running(p)] == []
    assert _processes_mentioning(str(storage)) == []
    if not keep:  # nothing of the store is left but its logs
        assert "its data, secrets and keys deleted" in r.stdout
        assert not (data / "4242").exists()
        assert sorted(p.relative_to(storage).as_posix() for p in storage.rglob("*")) == sorted([
            "logs", f"logs/{HOST}.log", "logs/redis.log"])
        assert "User requested shutdown" in (storage / "logs" / "redis.log").read_text()
        assert f"deleted the backends' data ({data / '4242' / HOST})" in (storage / "logs" / f"{HOST}.log").read_text()
        return
    assert "kept (keep_data=true)" in r.stdout
    assert (storage / "secret").is_file() and (storage / "tls" / "ca.key").is_file()
    # The backend flushed its log before exiting: the object and its last state are on disk.
    store = Store(data / "4242" / HOST / f"{HOST}-1", fsync=False)
    try:
        assert oid in store
    finally:
        store.close()


def test_init_interrupted_while_backends_start_leaves_nothing(bundle: Path, home: Path, tmp_path: Path) -> None:
    """SIGTERM to storage_init.sh (a job's clean-up trap, scancel) once its node helper runs and
    before the backends have registered: it stops what it started and deletes its data and secrets."""
    props = tmp_path / "props"
    data = tmp_path / "data"
    props.write_text(f"backends_per_node=2\nfsync=false\nstorage_dir={data}/$JOB\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith("STORAGE_API_")}
    env["HOME"] = str(home)
    proc = subprocess.Popen([str(bundle / "scripts" / "storage_init.sh"), "99", HOST, HOST, HOST, "ethernet",
                             str(props)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=ROOT, env=env)
    storage = home / ".COMPSs" / "99" / "storage"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            if json.loads((storage / "state.json").read_text())["nodes"][0].get("pid"):
                break
        except (OSError, ValueError, IndexError):
            pass
        time.sleep(0.02)
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 128 + signal.SIGTERM, out
    assert _processes_mentioning(str(storage)) == [] and _processes_mentioning(str(data)) == []
    assert not (data / "99").exists()
    assert sorted(p.name for p in storage.iterdir()) == ["logs"], out
    assert "User requested shutdown" in (storage / "logs" / "redis.log").read_text()


@pytest.mark.parametrize("user", [None, "someone-else"], ids=["unset", "other"])
def test_user_in_storage_dir_is_the_login_name(bundle: Path, home: Path, tmp_path: Path, user: str | None) -> None:
    """``$USER`` in storage_dir is the login name of the user id, whatever the variable says (batch
    jobs may not set it), so that users never share a directory."""
    import pwd

    props = tmp_path / "props"
    props.write_text(f"backends_per_node=1\nfsync=false\nstorage_dir={tmp_path}/d-$USER/$JOB\n")
    r = _script(bundle, home, "storage_init.sh", "77", HOST, HOST, HOST, "ethernet", str(props), user=user)
    try:
        assert r.returncode == 0, r.stdout + r.stderr
        assert [p.name for p in tmp_path.glob("d-*")] == [f"d-{pwd.getpwuid(os.getuid()).pw_name}"]
    finally:
        r = _script(bundle, home, "storage_stop.sh", "77", HOST, HOST, HOST, "ethernet", str(props))
    assert r.returncode == 0, r.stdout + r.stderr
    assert not list(tmp_path.glob("d-*/77"))


@pytest.mark.parametrize(
    "args, message",
    [
        (["1", HOST, HOST, HOST, "ethernet"], "expected 6 to 9 arguments"),
        (["1", HOST, HOST, HOST, "ethernet", "P", "", "false", "disabled", "extra"], "expected 6 to 9 arguments"),
        (["1", HOST, HOST, HOST, "token-ring", "P"], "network 'token-ring' has no suffix"),
        (["1", HOST, HOST, HOST, "ethernet", "/no/such/props"], "does not exist"),
        (["1", HOST, HOST, HOST, "ethernet", "P", "", "/images/store.sif"], "container images are not supported"),
        (["1", HOST, HOST, HOST, "ethernet", "P", "", "false", "0-3/x"], "bad CPU affinity"),
        (["a/b", HOST, HOST, HOST, "ethernet", "P"], "bad job id"),
        (["1", HOST, HOST, HOST, "ethernet", "BADKEY"], "unknown key 'redis_prot'"),
        (["1", HOST, HOST, HOST, "ethernet", "NEGATIVE"], "threads cannot be negative"),
    ],
)
def test_init_fails_loudly(bundle: Path, home: Path, tmp_path: Path, args: list[str], message: str) -> None:
    props = tmp_path / "props"
    props.write_text("")
    bad = tmp_path / "bad"
    bad.write_text("redis_prot=1\n")
    negative = tmp_path / "negative"
    negative.write_text("threads=-1\n")
    files = {"P": str(props), "BADKEY": str(bad), "NEGATIVE": str(negative)}
    args = [files.get(a, a) for a in args]
    r = _script(bundle, home, "storage_init.sh", *args)
    assert r.returncode != 0
    assert message in r.stderr, r.stderr
    assert not (home / ".COMPSs" / "1" / "storage" / "state.json").exists()


@pytest.mark.parametrize(
    "args, message",
    [
        (["1", HOST, HOST, HOST, "ethernet"], "expected 6 arguments"),
        (["nojob", HOST, HOST, HOST, "ethernet", "props"], "no storage was started for job nojob"),
    ],
)
def test_stop_fails_loudly(bundle: Path, home: Path, args: list[str], message: str) -> None:
    r = _script(bundle, home, "storage_stop.sh", *args)
    assert r.returncode != 0
    assert message in r.stderr, r.stderr


def test_bundle_command_layout(tmp_path: Path) -> None:
    """``storage-api compss-bundle DEST``: what ``--storage_impl`` and ``--storage_home`` expect."""
    import sys

    dest = tmp_path / "Tools" / "storage" / "storage_api"
    r = subprocess.run([sys.executable, "-m", "storage_api", "compss-bundle", str(dest)], capture_output=True,
                       text=True, timeout=120, cwd=ROOT)
    assert r.returncode == 0, r.stderr
    assert [p.name for p in dest.glob("*.jar")] == [_bundle.JAR_NAME]
    for script in ("storage_init.sh", "storage_stop.sh"):
        assert os.access(dest / "scripts" / script, os.X_OK)
    # DEST/python alone provides storage.api and the store, ahead of any installed copy.
    env = {k: v for k, v in os.environ.items() if not k.startswith("STORAGE_API_")}
    env["PYTHONPATH"] = str(dest / "python")
    r = subprocess.run([sys.executable, "-c", "import storage.api, storage_api; print(storage.api.__file__); "
                        "print(storage_api.__file__)"], capture_output=True, text=True, cwd=tmp_path, env=env)
    assert r.returncode == 0, r.stderr
    assert all(line.startswith(str(dest / "python")) for line in r.stdout.split()), r.stdout


@pytest.mark.parametrize(
    "network, suffixes, name",
    [
        ("ethernet", None, "n1"),
        ("infiniband", None, "n1-ib0"),
        ("data", None, "n1-data"),
        ("infiniband", "ethernet=,infiniband=-hca", "n1-hca"),
    ],
)
def test_compss_node_names(network: str, suffixes: str | None, name: str) -> None:
    from storage_api._config import load

    settings = load(use_default_file=False, network=network, network_suffixes=suffixes)
    assert settings.compss_node_name("n1") == name
    assert load(use_default_file=False, compss_name="given", network=network).compss_node_name("n1") == "given"


def test_unknown_network_is_a_config_error() -> None:
    from storage_api._config import load
    from storage_api.errors import ConfigError

    with pytest.raises(ConfigError, match="network 'omnipath' has no suffix"):
        load(use_default_file=False, network="omnipath")


@pytest.mark.parametrize("groups,mode,numactl,taskset,sockets,expected", [
    # one backend per socket, pinned only where there is a choice of NUMA node
    ([], "auto", "/usr/bin/numactl", None, 2, ["/usr/bin/numactl", "--cpunodebind=1", "--membind=1"]),
    ([], "auto", "/usr/bin/numactl", None, 1, []),
    ([], "yes", "/usr/bin/numactl", None, 1, ["/usr/bin/numactl", "--cpunodebind=0", "--membind=0"]),
    ([], "no", "/usr/bin/numactl", None, 2, []),
    ([], "auto", None, "/usr/bin/taskset", 2, ["/usr/bin/taskset", "-c", "node1-cpus"]),  # no numactl
    ([], "auto", None, "/usr/bin/taskset", 1, []),
    # COMPSs' CPU affinity map: numactl, else taskset, else nothing
    (["0-3", "4-7"], "auto", "/usr/bin/numactl", "/usr/bin/taskset", 1, ["/usr/bin/numactl", "--physcpubind=4-7"]),
    (["0-3", "4-7"], "no", "/usr/bin/numactl", "/usr/bin/taskset", 1, ["/usr/bin/taskset", "-c", "4-7"]),
    (["0-3", "4-7"], "auto", None, None, 2, []),
])
def test_backend_pinning(groups, mode, numactl, taskset, sockets, expected) -> None:
    from storage_api._compss._jobs import pin_prefix

    assert pin_prefix(1, groups, mode, numactl, taskset, sockets, node_cpus=lambda n: f"node{n}-cpus") == expected
