"""Emulated hosts for tests and benchmarks: nodes that are network namespaces of this machine, each
with its own address and host name, on a bridge, their links shaped with ``tc tbf``
(``slurm/netns_nodes.sh`` makes them; see its header).

- :func:`unavailable` says why no nodes can be made here (not root, no ``ip``...), or ``None``.
- :func:`make` makes a set of nodes under a prefix of its own (so that two test sessions, or a
  test session and ``slurm/local_cluster.sh --netns``, never share nodes); :meth:`Nodes.close`
  removes them. A set whose owner process died is reclaimed by the next :func:`make`.
- :func:`run_on` is the command that runs ``argv`` on a node (same pid: it execs), and
  :meth:`Node.host` the ``_local.Host`` that places deployment processes there;
  :class:`DaskCluster` a Dask scheduler here and a worker on each of some nodes.
- Deployments across nodes: the tests' deployments (``tests/conftest.py``'s ``cluster`` and
  ``own_cluster``) put Redis and their backends where :data:`PLACEMENT` (an environment variable)
  says; ``tests/test_cluster_net.py`` sets it for a pytest it runs on a client node.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from storage_api._deploy._local import Host

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "slurm" / "netns_nodes.sh"
PLACEMENT = "SA_TEST_PLACEMENT"  # JSON: {"redis": address, "backends": [[node, address], ...]}
MAX_SETS = 20  # prefixes sa-t1n ... sa-t20n, subnets 10.77.101 ... 10.77.120


def unavailable() -> str | None:
    """Why emulated nodes cannot be made on this machine, or None when they can."""
    if os.geteuid() != 0:
        return "emulated hosts need root (network namespaces; CI runs as root)"
    missing = [b for b in ("ip", "tc", "nsenter", "unshare", "flock") if shutil.which(b) is None]
    if missing:
        return f"emulated hosts need {', '.join(missing)} (apt-get install -y iproute2 util-linux)"
    probe = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True)
    if probe.returncode != 0:
        return f"`ip netns` does not work here: {probe.stderr.strip()}"
    return None


def run_on(node: str, argv: list[str]) -> list[str]:
    """The command that runs ``argv`` on ``node``, with the node's host name (it execs ``argv``)."""
    return ["bash", str(SCRIPT), "run", node, *argv]


@dataclass(frozen=True)
class Node:
    name: str
    address: str

    def host(self) -> Host:
        """Where a deployment's process runs on this node (listening on its address)."""
        return Host(self.address, tuple(run_on(self.name, [])))


class Nodes:
    """A set of emulated nodes (``prefix`` 1..N) and the bridge address of this machine's side."""

    def __init__(self, prefix: str, subnet: str, count: int, rate: str) -> None:
        self.prefix = prefix
        self.rate = rate
        self.bridge = f"{subnet}.1"
        self.nodes = [Node(f"{prefix}{i}", f"{subnet}.{10 + i}") for i in range(1, count + 1)]

    def __getitem__(self, i: int) -> Node:
        return self.nodes[i]

    def run(self, node: Node | str, argv: list[str], **kwargs: Any) -> subprocess.CompletedProcess:
        """Run ``argv`` on ``node`` to its end (``subprocess.run``'s keyword arguments)."""
        name = node.name if isinstance(node, Node) else node
        return subprocess.run(run_on(name, argv), **kwargs)

    def shape(self, rate: str) -> None:
        """Shape every node's link to ``rate`` each way (``none``: unshaped)."""
        _script("up", str(len(self.nodes)), "--rate", rate, "--prefix", self.prefix,
                "--subnet", self.bridge.rpartition(".")[0], "--owner", str(os.getpid()))
        self.rate = rate

    def close(self) -> None:
        _script("down", "--prefix", self.prefix, "--force")


def make(count: int, rate: str = "none") -> Nodes:
    """``count`` new nodes whose links run at ``rate`` each way, under a prefix no one else holds."""
    for k in range(1, MAX_SETS + 1):
        prefix, subnet = f"sa-t{k}n", f"10.77.{100 + k}"
        proc = subprocess.run(["bash", str(SCRIPT), "up", str(count), "--rate", rate, "--prefix", prefix,
                               "--subnet", subnet, "--new", "--owner", str(os.getpid())],
                              capture_output=True, text=True)
        if proc.returncode == 0:
            return Nodes(prefix, subnet, count, rate)
        if proc.returncode != 3:  # 3: that prefix is someone's
            raise RuntimeError(f"netns_nodes.sh up failed: {proc.stderr.strip()}")
    raise RuntimeError(f"all {MAX_SETS} sets of emulated nodes are taken (bash {SCRIPT} status --prefix sa-t1n ...)")


class DaskCluster:
    """A Dask scheduler on ``address`` (this machine) and one worker of ``procs`` processes on each
    node (``nodes`` None: one worker on this machine)."""

    def __init__(self, nodes: list[Node] | None, address: str, procs: int, scratch: Path) -> None:
        with socket.socket() as s:
            s.bind((address, 0))
            port = s.getsockname()[1]
        self.address = f"tcp://{address}:{port}"
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        quiet = {"stdout": subprocess.DEVNULL, "stderr": subprocess.DEVNULL, "env": env, "start_new_session": True}
        self.procs = [subprocess.Popen([sys.executable, "-m", "distributed.cli.dask_scheduler", "--host", address,
                                        "--port", str(port), "--dashboard-address", ":0"], **quiet)]
        worker = [sys.executable, "-m", "distributed.cli.dask_worker", self.address, "--nworkers", str(procs),
                  "--nthreads", "1", "--local-directory", str(scratch)]
        for node in nodes if nodes is not None else [None]:
            self.procs.append(subprocess.Popen(run_on(node.name, worker) if node else worker, **quiet))
        # waited for from another process: importing distributed here would change how this
        # process pickles exceptions (it installs tblib's pickling) for the tests that follow
        wait = ("import sys; from distributed import Client\n"
                "with Client(sys.argv[1], timeout=60) as c: c.wait_for_workers(int(sys.argv[2]), timeout=180)")
        try:
            workers = procs * len(nodes if nodes is not None else [None])
            subprocess.run([sys.executable, "-c", wait, self.address, str(workers)], check=True, env=env, timeout=300)
        except BaseException:
            self.stop()
            raise
    def stop(self) -> None:
        for proc in reversed(self.procs):
            try:
                os.killpg(proc.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)


def _script(*args: str) -> None:
    proc = subprocess.run(["bash", str(SCRIPT), *args], capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"netns_nodes.sh {args[0]} failed: {proc.stderr.strip()}")


def placement(redis: str, backends: list[Node]) -> dict[str, str]:
    """The environment that makes the tests' deployments put Redis on ``redis`` (an address of the
    host the tests run on) and their backends on ``backends``, in turn."""
    return {PLACEMENT: json.dumps({"redis": redis, "backends": [[n.name, n.address] for n in backends]})}


def placed() -> dict[str, Any]:
    """``_local.start``'s placement arguments that :data:`PLACEMENT` asks for (none when unset)."""
    raw = os.environ.get(PLACEMENT)
    if not raw:
        return {}
    spec = json.loads(raw)
    return {"redis_host": Host(spec["redis"]),
            "backend_hosts": [Node(name, address).host() for name, address in spec["backends"]]}


def throughput(nodes: Nodes, sender: Node, receiver: Node, nbytes: int) -> float:
    """Bytes per second of one TCP stream of ``nbytes`` from ``sender`` to ``receiver``."""
    port = 5999
    server = subprocess.Popen(run_on(receiver.name, [sys.executable, "-c", _SINK, receiver.address, str(port)]),
                              stdout=subprocess.PIPE, text=True)
    try:
        assert server.stdout is not None
        assert server.stdout.readline().strip() == "listening"
        sent = nodes.run(sender, [sys.executable, "-c", _SOURCE, receiver.address, str(port), str(nbytes)],
                         capture_output=True, text=True, timeout=120)
        assert sent.returncode == 0, sent.stderr
        return nbytes / float(sent.stdout)
    finally:
        server.kill()
        server.wait()


_SINK = """
import socket, sys
s = socket.create_server((sys.argv[1], int(sys.argv[2])))
print("listening", flush=True)
c, _ = s.accept()
while c.recv(1 << 20):
    pass
c.sendall(b"k")
"""

_SOURCE = """
import socket, sys, time
s = socket.create_connection((sys.argv[1], int(sys.argv[2])))
n, chunk = int(sys.argv[3]), b"x" * (1 << 20)
t = time.monotonic()
while n > 0:
    s.sendall(chunk[:n])
    n -= len(chunk)
s.shutdown(socket.SHUT_WR)
s.recv(1)
print(time.monotonic() - t)
"""

