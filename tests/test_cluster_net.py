"""The store across hosts: Redis, backends and clients on emulated nodes (network namespaces of
this machine, each with its own address and host name, links shaped to 1 Gbit/s with tc tbf;
see tests/netkit.py and slurm/netns_nodes.sh).

Backends listen on their node's address and advertise it; clients on another node reach them over
TCP with TLS (a backend's Unix socket lives in its node's namespace, out of their reach); COMPSs'
``getLocations`` names the nodes. The contract tests (the COMPSs storage interface, the round
trips), placement (move, replicas, failover) and the failover and liveness tests run unchanged with
pytest on a client node and their deployments' backends on two others.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

from storage_api._deploy import _local
from tests import netkit
from tests.conftest import FAST_HEARTBEAT, Cluster

RATE = "1gbit"
RATE_BYTES = 125e6

_why = netkit.unavailable()
pytestmark = pytest.mark.skipif(_why is not None, reason=_why or "")


@pytest.fixture(scope="module")
def nodes() -> Iterator[netkit.Nodes]:
    """Four nodes: n1 runs clients (and the contract tests' Redis), n2-n4 backends."""
    made = netkit.make(4, RATE)
    try:
        yield made
    finally:
        made.close()


def _on(nodes: netkit.Nodes, node: netkit.Node, argv: list[str], timeout: float = 60) -> str:
    proc = nodes.run(node, argv, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc.stdout


# ------------------------------------------------------------------ the emulated nodes
def test_nodes_have_their_own_names_and_addresses_and_no_way_out(nodes) -> None:
    for node in nodes.nodes:
        out = _on(nodes, node, ["sh", "-c", "hostname; ip -4 -o addr show dev eth0; ip route"])
        name, addr, *routes = out.splitlines()
        assert name == node.name
        assert f"inet {node.address}/24" in addr
        assert not [r for r in routes if r.startswith("default")], routes  # the subnet, nothing beyond
    # names resolve to the nodes' addresses from any node
    out = _on(nodes, nodes[0], [sys.executable, "-c", "import socket, sys; print(*map(socket.gethostbyname, sys.argv[1:]))",
                                *[n.name for n in nodes.nodes]])
    assert out.split() == [n.address for n in nodes.nodes]


@pytest.mark.parametrize("subnet, says", [
    ("10.77.00", "without leading zeros"), ("10.077.1", "without leading zeros"),  # ip reads 10.77.0, 10.63.1
    ("10.300.1", "octets are 0 to 255"), ("172.217.14", "not of a private network"),
])
def test_a_subnet_ip_would_read_otherwise_or_not_private_is_refused_before_anything_is_made(nodes, subnet, says):
    proc = subprocess.run(["bash", str(netkit.SCRIPT), "up", "1", "--prefix", "zz-bad", "--subnet", subnet],
                          capture_output=True, text=True)
    assert proc.returncode == 1 and says in proc.stderr, proc.stderr
    assert "zz-bad" not in subprocess.run(["ip", "-o", "link"], capture_output=True, text=True).stdout
    taken = subprocess.run(["bash", str(netkit.SCRIPT), "up", "1", "--prefix", "zz-bad", "--subnet",
                            nodes.bridge.rpartition(".")[0]], capture_output=True, text=True)
    assert taken.returncode == 1 and "in use here already" in taken.stderr, taken.stderr


def test_links_are_shaped_both_ways(nodes) -> None:
    # node to node crosses the sender's uplink and the receiver's downlink, each at RATE
    rate = netkit.throughput(nodes, nodes[0], nodes[1], 32 << 20)
    assert 0.5 * RATE_BYTES < rate < 1.1 * RATE_BYTES, rate / 1e6
    nodes.shape("100mbit")
    try:
        rate = netkit.throughput(nodes, nodes[1], nodes[0], 4 << 20)
        assert 0.5 * 12.5e6 < rate < 1.1 * 12.5e6, rate / 1e6
    finally:
        nodes.shape(RATE)


# ------------------------------------------------------------------ the test suites across nodes
SUITES = ["tests/test_cluster_net.py::test_the_suites_deployments_run_on_the_other_nodes",
          "tests/test_compss_storage_api.py", "tests/test_compss_python.py", "tests/test_roundtrip.py",
          "tests/test_placement.py", "tests/test_liveness.py",
          "tests/test_faults.py::test_redis_restarted_empty_under_load_loses_nothing",
          "tests/test_faults.py::test_a_deleted_object_is_not_brought_back_by_a_thawed_primary"]


@pytest.mark.slow  # about a minute
def test_contract_placement_and_failover_tests_pass_with_backends_on_other_nodes(nodes) -> None:
    """pytest on n1 (the client; Redis there too, bound to n1's address), every deployment's
    backends on n2 and n3: b0 on one node, b1 on the other."""
    env = netkit.placement(nodes[0].address, [nodes[1], nodes[2]])
    cmd = ["env", *[f"{k}={v}" for k, v in env.items()], sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
           *SUITES]
    proc = nodes.run(nodes[0], cmd, capture_output=True, text=True, timeout=240)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-6000:]
    passed = re.search(r"(\d+) passed", out)
    assert passed and int(passed.group(1)) >= 40 and "skipped" not in out.splitlines()[-1], out[-2000:]


def test_the_suites_deployments_run_on_the_other_nodes(request: pytest.FixtureRequest) -> None:
    """Part of the run above, on the client node: the shared deployment is where it was asked to be."""
    spec = json.loads(os.environ.get(netkit.PLACEMENT) or "null")
    if spec is None:
        pytest.skip("runs inside test_contract_placement_and_failover_tests_pass_with_backends_on_other_nodes")
    cluster: Cluster = request.getfixturevalue("cluster")
    client = request.getfixturevalue("client")
    wanted = {f"b{i}": [address, node] for i, (node, address) in enumerate(spec["backends"])}
    assert {b.name: [b.host, b.compss_name] for b in client.backends()} == wanted
    assert cluster.settings().redis_url.rpartition("@")[2].startswith(spec["redis"] + ":")
    assert socket.gethostname() not in {node for node, _address in spec["backends"]}


# ------------------------------------------------------------------ locations and failover, by hand
@pytest.fixture
def spread(nodes, request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Cluster]:
    """Redis on this machine's side of the bridge; backends b0, b1, b2 on n2, n3, n4 (a failed
    test's deployment keeps its files, logs included)."""
    c = Cluster(_local.start(tmp_path / "deploy", 3, log_level="INFO", settings=FAST_HEARTBEAT,
                             redis_host=_local.Host(nodes.bridge),
                             backend_hosts=[n.host() for n in nodes.nodes[1:]]))
    yield c
    _local.stop(c.dir, purge=not getattr(request.node, "sa_failed", False))


CLIENT = """
import json
import storage_api
from tests.models import Counter
client = storage_api.connect()
"""


def _client(nodes: netkit.Nodes, cluster: Cluster | Path, code: str) -> dict:
    """Run ``code`` in a client on n1 (with ``client`` connected to ``cluster``, or to the
    deployment a settings file names); it prints one JSON line."""
    config = cluster.dep.config_path if isinstance(cluster, Cluster) else cluster
    out = _on(nodes, nodes[0], ["env", f"STORAGE_API_CONFIG={config}", "PYTHONPATH=" + str(netkit.ROOT),
                                sys.executable, "-c", CLIENT + textwrap.dedent(code)])
    return json.loads(out.strip().splitlines()[-1])


LOCATIONS = """
public class Locations {
    public static void main(String[] args) throws Exception {
        storage.StorageItf.init(args[0]);
        for (int i = 1; i < args.length; i++) {
            System.out.println(String.join(",", storage.StorageItf.getLocations(args[i])));
        }
        storage.StorageItf.finish();
    }
}
"""


def _get_locations(nodes: netkit.Nodes, cluster: Cluster, tmp: Path, *oids: str) -> list[list[str]]:
    """COMPSs' StorageItf.getLocations of each id, asked by a JVM on n1."""
    from storage_api._compss import _bundle

    source = tmp / "Locations.java"
    source.write_text(LOCATIONS)
    conf = tmp / "storage.conf"
    conf.write_text(f"redis_url={cluster.settings().redis_url}\n")
    out = _on(nodes, nodes[0], ["java", "-cp", str(_bundle.build_jar()), str(source), str(conf), *oids], timeout=120)
    return [sorted(line.split(",")) if line else [] for line in out.splitlines()]


def test_backends_on_other_nodes_advertise_them_and_clients_use_tls(nodes, spread) -> None:
    seen = _client(nodes, spread, """
        c = Counter(1)
        c.make_persistent(backend="b0")
        c.new_replica("b2")  # b0 ships the state to b2: node to node
        assert c.inc() == 2
        kinds = sorted({type(ch.fs.io).__name__ for ch in client._channels.values()})
        infos = {b.name: [b.host, b.compss_name] for b in client.backends()}
        print(json.dumps({"kinds": kinds, "backends": infos}))
        c.delete_persistent()
    """)
    assert seen["backends"] == {f"b{i}": [n.address, n.name] for i, n in enumerate(nodes.nodes[1:])}
    assert seen["kinds"] == ["TlsIO"]  # TCP with TLS, no Unix socket


@pytest.mark.skipif(shutil.which("javac") is None, reason="needs a JDK (javac; .ci/run installs one)")
def test_getlocations_names_the_nodes_and_follows_a_failover_to_another_node(nodes, spread, tmp_path) -> None:
    b0, b1, b2 = (n.name for n in nodes.nodes[1:])
    made = _client(nodes, spread, """
        a = Counter(0)
        a.make_persistent(backend="b0")
        a.new_replica("b1")
        b = Counter(10)
        b.make_persistent(backend="b2")
        for _ in range(5):
            a.inc()
        print(json.dumps({"a": a.getID(), "b": b.getID()}))
    """)
    assert _get_locations(nodes, spread, tmp_path, made["a"], made["b"]) == [sorted([b0, b1]), [b2]]

    spread.kill("b0", signal.SIGKILL)  # n2's backend dies: its objects fail over to n3
    after = _client(nodes, spread, f"""
        a = storage_api.get_by_id({made["a"]!r})
        value = a.inc()  # retried until the replica on b1 is promoted
        print(json.dumps({{"value": value, "primary": client.placement(a.getID()).backend,
                          "ids": {{b.name: b.id for b in client.backends()}}}}))
    """)
    assert after["value"] == 6  # every acknowledged write is there
    assert after["primary"] == after["ids"]["b1"]
    assert _get_locations(nodes, spread, tmp_path, made["a"], made["b"]) == [[b1], [b2]]


# ------------------------------------------------------------------ COMPSs' scripts across nodes
def test_storage_init_on_one_node_serves_a_master_on_another(nodes, tmp_path) -> None:
    """storage_init.sh on n2 (Redis and a backend there) for a COMPSs master on n1: the store
    listens on n2's network, not its loopback, and the master's clients reach it."""
    from storage_api._compss import _bundle
    from storage_api._compss._conf import read_conf

    master, server = nodes[0], nodes[1]
    bundle = _bundle.make_bundle(tmp_path / "bundle" / "storage_api")
    home = tmp_path / "home"
    home.mkdir()
    props = tmp_path / "props"
    props.write_text(f"backends_per_node=1\nfsync=false\nstorage_dir={tmp_path}/data/$JOB\n")
    variables = tmp_path / "vars"
    variables.write_text("")

    def script(name: str, *extra: str) -> str:
        return _on(nodes, server, ["env", f"HOME={home}", str(bundle / "scripts" / name), "808", master.name,
                                   server.name, server.name, "ethernet", str(props), *extra], timeout=120)

    script("storage_init.sh", str(variables), "false", "disabled")
    try:
        cfg = home / ".COMPSs" / "808" / "storage" / "cfgfiles"
        assert f"@{server.name}:" in read_conf(cfg / "storage.properties")["redis_url"]
        seen = _client(nodes, cfg / "client.toml", """
            c = Counter(2)
            c.make_persistent()
            print(json.dumps({"value": c.inc(), "backends": [[b.host, b.compss_name] for b in client.backends()]}))
            c.delete_persistent()
        """)
        assert seen == {"value": 3, "backends": [[server.name, server.name]]}
    finally:
        out = script("storage_stop.sh")
    assert "1 backends stopped" in out, out


# ------------------------------------------------------------------ SLURM on emulated nodes
def _netns_slurm() -> str | None:
    """Why the running SLURM cluster is not local_cluster.sh's --netns one, or None."""
    try:
        first = Path("/etc/slurm/slurm.conf").read_text().splitlines()[0]
    except (OSError, IndexError):
        return "no /etc/slurm/slurm.conf"
    if "local_cluster.sh" not in first or "netns" not in first:
        return "the SLURM cluster is not `slurm/local_cluster.sh start N --netns`"
    if shutil.which("srun") is None:
        return "no srun"
    return None


@pytest.mark.slurm
def test_srun_places_steps_on_the_nodes_networks() -> None:
    why = _netns_slurm()
    if why:
        pytest.skip(why)
    nodes = int(re.search(r"\((\d+) nodes", Path("/etc/slurm/slurm.conf").read_text()).group(1))
    proc = subprocess.run(["srun", f"-N{nodes}", "--time=1", "sh", "-c",
                           "echo $(hostname) $(ip -4 -o addr show dev eth0 | awk '{print $4}')"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    seen = sorted(tuple(line.split()) for line in proc.stdout.splitlines())
    assert seen == [(f"sa-n{i}", f"10.77.0.{10 + i}/24") for i in range(1, nodes + 1)]
