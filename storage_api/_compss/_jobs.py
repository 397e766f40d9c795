"""What the bundle's ``storage_init.sh`` and ``storage_stop.sh`` do (``python -m storage_api._compss``).

``enqueue_compss`` runs the scripts on the master node of a job, with these arguments::

    storage_init.sh JOB MASTER STORAGE_MASTER "WORKER ..." NETWORK PROPS [VARS [IMAGE [AFFINITY]]]
    storage_stop.sh JOB MASTER STORAGE_MASTER "WORKER ..." NETWORK PROPS

``init`` starts a password-protected ``redis-server`` on the storage master node and, on every
worker node (the master when the list is empty), a *node helper* (``node`` below) that starts one
backend per socket, pinned with ``numactl`` when it is available (or one per group of the CPU
affinity map ``0-8/9-17``), and waits on them. A node that is this host is started directly;
others through ``srun`` inside a SLURM allocation, ``ssh`` otherwise; every process inherits the
caller's environment and working directory (``PYTHONPATH`` included). Each backend registers the
COMPSs name of its node (hostname + the network's suffix); each node helper first records in Redis
how many backends it starts (``ns:compss:expect:<compss name>``), so ``init`` knows when a node is
complete and returns once every backend is registered, having written, in
``$HOME/.COMPSs/JOB/storage/``::

    cfgfiles/storage.properties   the storage conf every COMPSs process gets (redis_url, secret_file, ...)
    cfgfiles/client.toml          the same for plain storage_api clients (exported as STORAGE_API_CONFIG)
    cfgfiles/backend.toml         the backends' settings
    secret                        the deployment secret (mode 0600)
    tls/ca.pem, tls/ca.key        the deployment CA (its key is derived from the secret)
    redis.conf, redis/            Redis's configuration (with its password) and working directory
    state.json                    what was started, for ``stop``
    logs/                         redis.log and one log per node

``stop`` asks every backend to stop through its control queue (each flushes its log and
deregisters, as on SIGTERM), waits for the node helpers to exit, then shuts Redis down; what does
not exit in time is terminated. Then, unless the props say ``keep_data=true``, nothing of the store
is left but its logs: each node helper deletes its node's ``storage_dir`` once its backends have
exited, and ``stop`` deletes the secret, the keys and the configuration files holding the Redis
password (``init`` does the same when it fails or is interrupted). Errors are printed and make the
scripts exit non-zero.

Signals: ``init`` turns SIGTERM, SIGINT and SIGHUP into a clean-up of what it started, delayed
while it starts a process and records it, so that no process is started and forgotten. ``stop``,
and ``init``'s clean-up, ignore them: they run in a job's clean-up while the batch system may be
signalling every process of the job, and an interrupted stop would leave the store running.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import pwd
import re
import secrets
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .. import _pki
from .._config import Settings, network_suffix, read_file, to_toml
from .._metadata import Metadata
from .._redis import Redis
from ..errors import CommunicationError, StoreError
from . import _conf
from .._deploy._procs import alive as _alive, free_port, redis_config, redis_ready, spawn as _spawn
from .._deploy._procs import tail as _tail, terminate as _terminate, wait_gone as _wait_gone

STOP_TIMEOUT = 60.0
SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)
# In $HOME/.COMPSs/<job>/storage: what gives access to the deployment (the secret, the CA key, the
# Redis password) and so is deleted with the store; logs/ stays.
SECRET_FILES = ("secret", "redis.conf")
SECRET_DIRS = ("tls", "cfgfiles", "redis")


class UsageError(StoreError):
    """The scripts were called with bad arguments."""


# ------------------------------------------------------------------ helpers
def _this_host(node: str) -> bool:
    names = {"localhost", "127.0.0.1", "::1", socket.gethostname(), socket.getfqdn(), socket.gethostname().split(".")[0]}
    if os.environ.get("SLURMD_NODENAME"):  # SLURM's name of this node, which may differ from its hostname
        names.add(os.environ["SLURMD_NODENAME"])
    return node in names or node.split(".")[0] in names


def login_name() -> str:
    """This user id's login name, for ``$USER`` in ``storage_dir`` (the variable may be unset in a
    batch job, and then every user would share one directory)."""
    try:
        return pwd.getpwuid(os.getuid()).pw_name
    except KeyError:  # a user id without a passwd entry (some containers)
        return str(os.getuid())


def remove_storage_dir(path: Path) -> None:
    """Delete a node's backend directories, and the job's directory above them once it is empty."""
    shutil.rmtree(path, ignore_errors=True)
    with contextlib.suppress(OSError):
        path.parent.rmdir()


class _Interrupts:
    """SIGTERM, SIGINT and SIGHUP raise ``SystemExit(128 + signal)``, except inside ``held()``:
    there they are remembered and raised on leaving it (a process started but not yet recorded
    would escape the clean-up)."""

    def __init__(self) -> None:
        self.holding = False
        self.pending = 0
        for sig in SIGNALS:
            signal.signal(sig, self._handle)

    def _handle(self, sig: int, _frame: Any) -> None:
        if self.holding:
            self.pending = sig
            return
        raise SystemExit(128 + sig)

    @contextlib.contextmanager
    def held(self) -> Any:
        self.holding = True
        try:
            yield
        finally:
            self.holding = False
        if self.pending:
            raise SystemExit(128 + self.pending)


def _ignore_interrupts() -> None:
    for sig in SIGNALS:
        signal.signal(sig, signal.SIG_IGN)


def job_dir(job: str) -> Path:
    return Path.home() / ".COMPSs" / job / "storage"


def _check_job(job: str) -> str:
    if not job or "/" in job or job in (".", "..") or any(c.isspace() for c in job):
        raise UsageError(f"bad job id {job!r}")
    return job


def _launcher(node: str, kind: str) -> list[str]:
    """The command prefix that runs a command on ``node`` (empty: this host)."""
    if _this_host(node):
        return []
    if kind == "auto":
        kind = "srun" if os.environ.get("SLURM_JOB_ID") and shutil.which("srun") else "ssh"
    if kind == "srun":
        return ["srun", "--nodes=1", "--ntasks=1", f"--nodelist={node}", "--overlap", "--export=ALL"]
    if kind == "ssh":
        return ["ssh", "-o", "BatchMode=yes", node]
    raise UsageError(f"launcher must be auto, srun or ssh, not {kind!r}")


def _remote(prefix: list[str], cmd: list[str]) -> list[str]:
    if not prefix or prefix[0] != "ssh":
        return prefix + cmd
    # ssh does not carry the environment: pass what decides imports, and the working directory.
    env = " ".join(f"{k}={shlex.quote(v)}" for k, v in os.environ.items()
                   if k in ("PATH", "PYTHONPATH", "LD_LIBRARY_PATH", "VIRTUAL_ENV", "HOME"))
    return prefix + [f"cd {shlex.quote(os.getcwd())} && exec env {env} {shlex.join(cmd)}"]


def _affinity_groups(text: str) -> list[str]:
    if text in ("", "disabled", "false"):
        return []
    groups = [g.strip() for g in text.split("/")]
    for g in groups:
        if not re.fullmatch(r"\d+(-\d+)?(,\d+(-\d+)?)*", g):
            raise UsageError(f"bad CPU affinity {text!r}: expected groups of CPU lists like 0-8/9,10,11/12-14")
    return groups


# ------------------------------------------------------------------ init
def init(argv: list[str]) -> int:
    if not 6 <= len(argv) <= 9:
        raise UsageError(f"expected 6 to 9 arguments, got {len(argv)}")
    job, master, storage_master, workers_text, network, props_path, *rest = argv
    variables = rest[0] if len(rest) > 0 else ""
    image = rest[1] if len(rest) > 1 else "false"
    affinity = _affinity_groups(rest[2] if len(rest) > 2 else "disabled")
    _check_job(job)
    if not master.strip():
        raise UsageError("the master node is empty")
    storage_master = storage_master.strip() or master
    if image.lower() not in ("", "false", "none", "null"):
        raise UsageError(f"storage container images are not supported (got {image!r}; pass false)")
    if not props_path or not Path(props_path).is_file():
        raise UsageError(f"storage props file {props_path!r} does not exist (an empty file is fine)")
    props = _conf.read_props(props_path)
    suffix = network_suffix(network, props["network_suffixes"])
    workers = workers_text.split() or [master]
    if props["launcher"] not in ("auto", "srun", "ssh") or props["numactl"] not in ("auto", "yes", "no"):
        raise UsageError("launcher must be auto|srun|ssh and numactl auto|yes|no")
    try:
        per_node = int(props["backends_per_node"])
        start_timeout = float(props["start_timeout"])
        port = int(props["redis_port"])
        threads = int(props["threads"])
    except ValueError as exc:
        raise UsageError(f"storage props: {exc}") from None
    if threads < 0:
        raise UsageError(f"storage props: threads cannot be negative (got {threads}; 0: the CPUs of each backend)")
    if variables:
        with open(variables, "a"):  # must be writable; fail before starting anything
            pass

    # SIGTERM (scancel, a job script's clean-up trap) must not skip the clean-up below.
    interrupts = _Interrupts()
    d = job_dir(job)
    state_path = d / "state.json"
    if state_path.exists():
        old = json.loads(state_path.read_text())
        if any(_alive(p) for p in old.get("pids", [])):
            raise UsageError(f"storage of job {job} is already running (see {d})")
    cfg = d / "cfgfiles"
    logs = d / "logs"
    for p in (d, cfg, logs):
        p.mkdir(parents=True, exist_ok=True)
    os.chmod(d, 0o700)
    # Loopback only when every node that uses the store is this host: the master too, which runs
    # the app (a client), and may be another node than the storage master's.
    local_only = all(_this_host(n) for n in [master, storage_master, *workers])
    python = props["python"] or sys.executable
    storage_dir = props["storage_dir"].replace("$USER", login_name()).replace("$JOB", job)
    state: dict[str, Any] = {"job": job, "dir": str(d), "pids": [], "redis_pid": 0, "nodes": [],
                             "storage_dir": storage_dir,
                             "keep_data": props["keep_data"].lower() in ("1", "true", "yes", "on")}

    def save() -> None:
        tmp = state_path.with_suffix(".tmp")
        tmp.write_text(json.dumps(state, indent=2))
        os.replace(tmp, state_path)

    def start(cmd: list[str], log: Path, record: dict[str, Any], key: str = "pid") -> subprocess.Popen:
        """Start a process and record it (its pid as ``record[key]``) before a signal can act."""
        with interrupts.held():
            proc = _spawn(cmd, log)
            record[key] = proc.pid
            state["pids"].append(proc.pid)
            save()
        return proc

    try:
        url = _start_redis(props, storage_master, port, local_only, d, logs, state, start)
        secret = d / "secret"
        secret.touch(0o600)
        secret.write_text(secrets.token_hex(32))
        # The deployment CA (its key derived from the secret, as the backends derive it).
        tls = {"tls_ca": str(_pki.make_ca(d / "tls", _pki.ca_key_file(d / "tls", secret.read_text().encode())))}
        common = {"redis_url": url, "secret_file": str(secret), "namespace": props["namespace"]}
        backend_cfg = cfg / "backend.toml"
        _write_toml(backend_cfg, {**common, **tls, "network": network, "network_suffixes": props["network_suffixes"],
                                  "fsync": props["fsync"].lower() in ("1", "true", "yes", "on"),
                                  "log_level": props["log_level"], "intra_op_threads": threads})
        launcher = props["launcher"]
        for node in workers:
            cname = node + suffix
            cmd = [python, "-m", "storage_api._compss", "node", "--config", str(backend_cfg),
                   "--storage-dir", str(Path(storage_dir) / node), "--name-prefix", node, "--compss-name", cname,
                   "--per-node", str(per_node), "--numactl", props["numactl"],
                   "--affinity", "/".join(affinity), "--host", "127.0.0.1" if local_only else "0.0.0.0"]
            if not state["keep_data"]:
                cmd.append("--remove-storage-dir")
            entry = {"node": node, "compss_name": cname}
            state["nodes"].append(entry)
            start(_remote(_launcher(node, launcher), cmd), logs / f"{node}.log", entry)
        _wait_registered(url, props["namespace"], state, logs, start_timeout)
        save()
        conf = {k: props[k] for k in _conf.CONF_KEYS}
        conf.update(common, network=network)
        _conf.write(cfg / "storage.properties", conf, f"storage_api storage conf of COMPSs job {job} (storage_init.sh)")
        _write_toml(cfg / "client.toml", {**common, **tls})
        if variables:
            with open(variables, "a") as fh:
                fh.write(f"export STORAGE_API_CONFIG={shlex.quote(str(cfg / 'client.toml'))}\n")
    except BaseException:
        _ignore_interrupts()  # a second signal must not cut the clean-up short
        _stop_state(state, None)
        _remove_job_files(state)
        state_path.unlink(missing_ok=True)
        raise
    n = sum(len(x.get("backends", [])) for x in state["nodes"])
    print(f"storage_init: Redis on {storage_master}, {n} backends on {len(workers)} nodes; "
          f"storage conf {cfg / 'storage.properties'}")
    return 0


def _write_toml(path: Path, values: dict[str, Any]) -> None:
    path.touch(0o600)
    os.chmod(path, 0o600)
    path.write_text(to_toml(values))


def _start_redis(props: dict[str, str], node: str, port: int, local_only: bool, d: Path, logs: Path,
                 state: dict[str, Any], start: Any) -> str:
    from .._deploy._local import redis_binary

    here = _this_host(node)
    binary = props["redis_server"] or (redis_binary() if here else "redis-server")
    port = port or (free_port("") if here else 6379)
    password = secrets.token_hex(24)
    conf = d / "redis.conf"
    conf.touch(0o600)
    bind = "127.0.0.1" if local_only else "0.0.0.0"
    (d / "redis").mkdir(exist_ok=True)
    conf.write_text(redis_config(port, bind, password, d / "redis", append_only=False, protected=False))
    proc = start(_remote(_launcher(node, props["launcher"]), [binary, str(conf)]), logs / "redis.log", state,
                 "redis_pid")
    url = f"redis://:{password}@{'127.0.0.1' if local_only else node}:{port}/0"
    if not redis_ready(url, proc, 20):
        raise StoreError(f"redis-server did not start on {node}:\n{_tail(logs / 'redis.log', 20)}")
    return url


def _wait_registered(url: str, ns: str, state: dict[str, Any], logs: Path, timeout: float) -> None:
    """Until every node's helper has said how many backends it starts and all of them are alive."""
    meta = Metadata(Redis(url), ns)
    deadline = time.monotonic() + timeout
    try:
        while True:
            alive = [b for b in meta.backends() if b.alive]
            pending = []
            for node in state["nodes"]:
                expect = meta.expected_backends(node["compss_name"])
                mine = [b for b in alive if b.compss_name == node["compss_name"]]
                node["backends"] = [{"id": b.id, "name": b.name, "pid": b.pid} for b in mine]
                if expect is None or len(mine) < expect:
                    pending.append(node)
            if not pending:
                return
            for node in pending:
                if not _alive(node["pid"]):
                    raise StoreError(f"the backends of node {node['node']} exited during start-up:\n"
                                     f"{_tail(logs / (node['node'] + '.log'), 20)}")
            if time.monotonic() > deadline:
                raise StoreError(f"backends of {[n['node'] for n in pending]} not registered after {timeout:.0f} s "
                                 f"(logs in {logs})")
            time.sleep(0.1)
    finally:
        meta.redis.close()


# ------------------------------------------------------------------ stop
def stop(argv: list[str]) -> int:
    if len(argv) != 6:
        raise UsageError(f"expected 6 arguments, got {len(argv)}")
    job = _check_job(argv[0])
    d = job_dir(job)
    state_path = d / "state.json"
    if not state_path.exists():
        raise UsageError(f"no storage was started for job {job} ({state_path} is missing)")
    _ignore_interrupts()  # see the module's docstring: a stop cut short leaves the store running
    state = json.loads(state_path.read_text())
    conf_path = d / "cfgfiles" / "storage.properties"
    conf = _conf.read_conf(conf_path) if conf_path.exists() else None
    stopped = _stop_state(state, conf)
    _remove_job_files(state)
    state_path.unlink(missing_ok=True)
    kept = ("its data, secrets and keys kept (keep_data=true)" if state.get("keep_data") else
            "its data, secrets and keys deleted")
    print(f"storage_stop: job {job}: {stopped} backends stopped, Redis shut down; {kept}; logs in {d / 'logs'}")
    return 0


def _stop_state(state: dict[str, Any], conf: dict[str, str] | None) -> int:
    """Stop what ``state`` records: backends through their control queues, then Redis."""
    node_pids = [n["pid"] for n in state.get("nodes", []) if "pid" in n]
    stopped = 0
    redis = None
    if conf is not None:
        redis = Redis(conf["redis_url"], timeout=5.0)
        meta = Metadata(redis, conf["namespace"])
        try:
            replies = []
            for b in meta.backends():
                if b.alive:
                    replies.append(meta.request_control(b.id, "shutdown"))
            for reply in replies:
                if meta.control_reply(reply, 2) is not None:  # Redis timeout 5 s > 2 s
                    stopped += 1
        except (CommunicationError, StoreError) as exc:
            print(f"storage_stop: warning: {exc}", file=sys.stderr)
    left = _wait_gone(node_pids, STOP_TIMEOUT if conf is not None else 0.0)
    _terminate(left, 10.0)  # the node helpers pass SIGTERM on to their backends
    if redis is not None:
        try:
            redis.execute("SHUTDOWN", "NOSAVE")
        except (CommunicationError, StoreError):
            pass  # the connection closes as Redis exits
        redis.close()
    if state.get("redis_pid"):  # without a conf nobody asked it to shut down: no use waiting
        _terminate(_wait_gone([state["redis_pid"]], 10.0 if redis is not None else 0.0), 5.0)
    return stopped


def _remove_job_files(state: dict[str, Any]) -> None:
    """Unless ``keep_data``: the job's secrets and keys, and the storage dirs of the nodes that are
    this host, in case a node helper was killed before it deleted its own; the logs stay."""
    if state.get("keep_data", True):  # a state written before keep_data existed: as it was
        return
    for entry in state.get("nodes", []):
        if _this_host(entry["node"]):
            remove_storage_dir(Path(state["storage_dir"]) / entry["node"])
    d = Path(state["dir"])
    for name in SECRET_FILES:
        (d / name).unlink(missing_ok=True)
    for name in SECRET_DIRS:
        shutil.rmtree(d / name, ignore_errors=True)


# ------------------------------------------------------------------ node helper
def _sockets() -> int:
    try:
        return max(1, len([p for p in Path("/sys/devices/system/node").glob("node[0-9]*")]))
    except OSError:
        return 1


def _node_cpus(node: int) -> str:
    """The CPU list of NUMA node ``node`` (``0-23``), as the kernel gives it."""
    return Path(f"/sys/devices/system/node/node{node}/cpulist").read_text().strip()


def pin_prefix(i: int, groups: list[str], mode: str, numactl: str | None, taskset: str | None,
               sockets: int, node_cpus: Callable[[int], str] = _node_cpus) -> list[str]:
    """The command prefix that pins backend ``i`` of a node (which then sizes its compute threads
    to those CPUs).

    With an affinity map (``groups``), to its CPU group: ``numactl --physcpubind`` unless
    ``mode`` is ``no``, else ``taskset -c``. Without one, to NUMA node ``i % sockets`` with
    ``numactl --cpunodebind --membind``: always with ``mode`` ``yes``, with ``auto`` only when
    there are several NUMA nodes (on one there is nothing to choose); without numactl, to that
    node's CPUs with ``taskset -c`` (its memory is then placed by first touch). Nothing without the tools.
    """
    if groups:
        if numactl and mode != "no":
            return [numactl, f"--physcpubind={groups[i]}"]
        return [taskset, "-c", groups[i]] if taskset else []
    if numactl and (mode == "yes" or (mode == "auto" and sockets > 1)):
        return [numactl, f"--cpunodebind={i % sockets}", f"--membind={i % sockets}"]
    if not numactl and taskset and mode == "auto" and sockets > 1:
        return [taskset, "-c", node_cpus(i % sockets)]
    return []


def node(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="storage_api._compss node")
    p.add_argument("--config", required=True)
    p.add_argument("--storage-dir", required=True)
    p.add_argument("--name-prefix", required=True)
    p.add_argument("--compss-name", required=True)
    p.add_argument("--per-node", type=int, default=0)
    p.add_argument("--numactl", default="auto")
    p.add_argument("--affinity", default="")
    p.add_argument("--host", default="0.0.0.0")
    p.add_argument("--remove-storage-dir", action="store_true", help="delete --storage-dir once the backends exit")
    a = p.parse_args(argv)
    groups = _affinity_groups(a.affinity)
    count = len(groups) or a.per_node or _sockets()
    numactl = shutil.which("numactl")
    if a.numactl == "yes" and not numactl:
        raise UsageError("numactl=yes but numactl is not installed on this node")
    procs: list[subprocess.Popen] = []
    stopping: list[int] = []

    def forward(sig: int, _frame: Any) -> None:
        stopping.append(sig)
        for proc in procs:
            if proc.poll() is None:
                proc.send_signal(sig)

    # Installed first: a signal during the start-up stops what has started and starts nothing more.
    for sig in SIGNALS:
        signal.signal(sig, forward)
    settings = Settings(**read_file(a.config)).validate()
    meta = Metadata(Redis(settings.require_redis()), settings.namespace)
    meta.expect_backends(a.compss_name, count)
    meta.redis.close()
    for i in range(count):
        if stopping:
            break
        name = f"{a.name_prefix}-{i}"
        prefix = pin_prefix(i, groups, a.numactl, numactl, shutil.which("taskset"), _sockets())
        cmd = [*prefix, sys.executable, "-m", "storage_api", "backend", "--config", a.config, "--storage-dir",
               str(Path(a.storage_dir) / name), "--name", name, "--host", a.host, "--compss-name", a.compss_name]
        procs.append(subprocess.Popen(cmd, stdin=subprocess.DEVNULL))
    if stopping:  # it may have come between a start and its append
        forward(stopping[0], None)
    codes = [proc.wait() for proc in procs]
    if a.remove_storage_dir:
        remove_storage_dir(Path(a.storage_dir))
        print(f"storage_api node: deleted the backends' data ({a.storage_dir})", file=sys.stderr, flush=True)
    return 0 if all(c in (0, -signal.SIGTERM) for c in codes) else 1


# ------------------------------------------------------------------ entry point
def main(argv: list[str]) -> int:
    commands = {"init": init, "stop": stop, "node": node}
    if not argv or argv[0] not in commands:
        print("usage: python -m storage_api._compss init|stop|node ARGS...", file=sys.stderr)
        return 2
    name = {"init": "storage_init.sh", "stop": "storage_stop.sh", "node": "storage_api node"}[argv[0]]
    try:
        return commands[argv[0]](argv[1:])
    except UsageError as exc:
        print(f"{name}: error: {exc}", file=sys.stderr)
        return 2
    except StoreError as exc:
        print(f"{name}: error: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
