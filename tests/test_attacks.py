"""Denial of service without credentials: slow senders, floods, descriptor and thread exhaustion.

Each test attacks a real backend process over real sockets and asserts that legitimate clients are
still served, and how: within 1 s for a fresh connection and a call, with the backend below 10% of
a core while attacked (its CPU time read from /proc over the attack). Thread limits use the pids
cgroup controller (it binds root too, unlike RLIMIT_NPROC); descriptor limits use ``prlimit``.
"""

from __future__ import annotations

import contextlib
import os
import pickle
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from storage_api import _context, _handshake, _wire
from storage_api._client import Client
from storage_api._deploy import _local
from storage_api.errors import CommunicationError
from tests.conftest import Cluster
from tests.models import Counter

pytestmark = pytest.mark.slow

CPU_LIMIT = 0.10  # of one core, while attacked
LEGIT_LIMIT = 1.0  # seconds for a fresh connection and a call
HANDSHAKE_TIMEOUT = 5.0  # the default: attacks measured within it face every connection at once
SOURCES = [f"127.0.0.{i}" for i in range(2, 10)]  # 8 attacking addresses: 20 connections each fit the per-address cap


@pytest.fixture
def lone(tmp_path: Path) -> Iterator[Cluster]:
    """One backend of its own (its limits get changed)."""
    c = Cluster(_local.start(tmp_path / "deploy", 1, log_level="INFO"))
    yield c
    _local.stop(c.dir)


def _pid(cluster: Cluster) -> int:
    return cluster.backend("b0").pid


def _cpu(pid: int) -> float:
    """CPU seconds (user + system) the process has used so far."""
    with open(f"/proc/{pid}/stat") as fh:
        fields = fh.read().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _count(pid: int, what: str) -> int:
    return len(os.listdir(f"/proc/{pid}/{what}"))


def _backend_id(cluster: Cluster) -> str:
    client = cluster.client()
    try:
        return next(b for b in client.backends() if b.name == "b0").id
    finally:
        client.close()


def _address(cluster: Cluster) -> tuple[str, int]:
    client = cluster.client()
    try:
        info = next(b for b in client.backends() if b.name == "b0")
    finally:
        client.close()
    return info.host, info.port


def _legit_call(cluster: Cluster) -> float:
    """Seconds for a fresh client to connect (over the Unix socket, its backend being on this
    host) and call an object: locating both in Redis, the handshake, one read-only call. The
    object is made first, untimed (its write waits for the disk, which is not what is measured)."""
    maker = cluster.client()
    c = Counter(7)
    maker.persist(c, alias=None, backend="b0")
    maker.close()
    t = time.perf_counter()
    client = cluster.client()
    previous = _context.install(client)
    try:
        assert client.get_by_id(c.getID()).get() == 7
        return time.perf_counter() - t
    finally:
        _context.install(previous)
        client.close()


def _legit_tcp_call(cluster: Cluster, host: str, port: int) -> float:
    """Seconds for a fresh TCP connection (no local socket) to authenticate and get a reply."""
    t = time.perf_counter()
    from storage_api import _tls

    settings = cluster.settings()
    fs = _handshake.connect(host, port, _handshake.Auth.secret(settings.secret_bytes()), timeout=LEGIT_LIMIT,
                            tls=_tls.client_context(cafile=settings.tls_ca))
    try:
        fs.send(_wire.REQUEST, 1, pickle.dumps(("ping",)))
        kind, _f, rid, body, _b = fs.recv()
        assert (kind, rid, pickle.loads(body)) == (_wire.REPLY, 1, "pong")
        return time.perf_counter() - t
    finally:
        fs.close()


# The start of a TLS ClientHello (a handshake record of 512 bytes): the backend's TLS layer waits
# for the rest of the record, as it would for a slow legitimate client.
CLIENT_HELLO = bytes.fromhex("1603010200" "010001fc" "0303") + os.urandom(506)


class Slowloris(threading.Thread):
    """Holds ``per_source`` connections from each source address, each sending a plausible
    TLS handshake one byte per ``interval``; a connection the backend drops is opened again."""

    def __init__(self, host: str, port: int, sources: list[str], per_source: int, interval: float = 0.5) -> None:
        super().__init__(daemon=True)
        self.target = (host, port)
        self.slots: list[tuple[str, socket.socket | None, int]] = [(s, None, 0) for s in sources for _ in range(per_source)]
        self.interval = interval
        self.stopped = threading.Event()
        self.connects = 0
        self.dropped = 0
        self.prefix = CLIENT_HELLO

    def run(self) -> None:
        while not self.stopped.is_set():
            for i, (source, sock, sent) in enumerate(self.slots):
                if self.stopped.is_set():
                    break
                if sock is None:
                    try:
                        sock = socket.create_connection(self.target, timeout=1, source_address=(source, 0))
                        sock.setblocking(False)
                        self.connects += 1
                        sent = 0
                    except OSError:
                        continue
                try:
                    sock.send(self.prefix[sent % len(self.prefix) : sent % len(self.prefix) + 1])
                    sent += 1
                except (BlockingIOError, InterruptedError):
                    pass
                except OSError:  # dropped by the backend
                    sock.close()
                    self.dropped += 1
                    sock = None
                self.slots[i] = (source, sock, sent)
            self.stopped.wait(self.interval)
        for _s, sock, _n in self.slots:
            if sock is not None:
                sock.close()

    def open(self) -> int:
        return sum(1 for _s, sock, _n in self.slots if sock is not None)

    def stop(self) -> None:
        self.stopped.set()
        self.join(timeout=10)


@contextlib.contextmanager
def _attack(cluster: Cluster, per_source: int, sources: list[str] = SOURCES) -> Iterator[Slowloris]:
    host, port = _address(cluster)
    s = Slowloris(host, port, sources, per_source)
    s.start()
    try:
        deadline = time.monotonic() + 10
        while s.open() < len(s.slots) * 0.9 and time.monotonic() < deadline:
            time.sleep(0.05)
        yield s
    finally:
        s.stop()


def _cpu_while(pid: int, seconds: float) -> float:
    """The share of one core ``pid`` used over the next ``seconds``."""
    t, c = time.monotonic(), _cpu(pid)
    time.sleep(seconds)
    return (_cpu(pid) - c) / (time.monotonic() - t)


@contextlib.contextmanager
def _pids_limit(pid: int, limit: int) -> Iterator[Path]:
    """Put ``pid`` (all its threads) in a pids cgroup allowing ``limit`` tasks."""
    root = Path("/sys/fs/cgroup/pids")
    if os.geteuid() != 0 or not (root / "cgroup.procs").exists():
        pytest.skip("needs root and the pids cgroup controller at /sys/fs/cgroup/pids")
    home = next((line.split(":", 2)[2].strip() for line in Path(f"/proc/{pid}/cgroup").read_text().splitlines()
                 if line.split(":")[1] == "pids"), "/")
    group = root / f"storage-api-test-{os.getpid()}-{pid}"
    group.mkdir()
    try:
        (group / "pids.max").write_text(str(limit))
        (group / "cgroup.procs").write_text(str(pid))
        yield group
    finally:
        for task in (group / "cgroup.procs").read_text().split():
            with contextlib.suppress(OSError):
                (root / home.lstrip("/") / "cgroup.procs").write_text(task)
        group.rmdir()


def _health(cluster: Cluster) -> str:
    client = cluster.client()
    try:
        return next(b for b in client.backends() if b.name == "b0").health
    finally:
        client.close()


def _wait_for(predicate, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.1)


# ------------------------------------------------------------------ the attacks
def test_slow_senders_hold_no_threads_and_lock_nobody_out(lone):
    """160 connections trickling a handshake, against a backend limited to 80 threads."""
    pid = _pid(lone)
    host, port = _address(lone)
    idle_fds = _count(pid, "fd")
    with _pids_limit(pid, 80), _attack(lone, per_source=20):
        _wait_for(lambda: _count(pid, "fd") - idle_fds >= 144, 10, "the backend to hold the attacking connections")
        assert _count(pid, "task") < 40, "the backend holds threads for unauthenticated connections"
        cpu = _cpu_while(pid, 2.0)
        unix = _legit_call(lone)
        tcp = _legit_tcp_call(lone, host, port)
        held = _count(pid, "fd") - idle_fds
        assert held >= 144, f"the attack faded ({held} connections) before the legitimate calls ended"
    print(f"backend CPU while attacked: {cpu:.1%} of a core; legitimate calls: {unix:.3f} s (unix), {tcp:.3f} s (tcp)")
    assert cpu < CPU_LIMIT, f"backend used {cpu:.0%} of a core while attacked"
    assert unix < LEGIT_LIMIT and tcp < LEGIT_LIMIT, f"legitimate calls took {unix:.2f} s (unix), {tcp:.2f} s (tcp)"
    assert not _health(lone)


@pytest.mark.parametrize("transport", ["tls", "unix"])
def test_the_whole_handshake_has_one_deadline(lone, transport):
    """One byte every 0.3 s used to reset a per-read timeout forever; now the clock runs once."""
    if transport == "tls":
        sock = socket.create_connection(_address(lone))
        trickle = CLIENT_HELLO
    else:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.connect(_handshake.local_socket_name(_backend_id(lone)))
        sock.recv(_wire.HELLO.size)
        trickle = _wire.MAGIC + bytes([_wire.VERSION, _wire.ROLE_CLIENT]) + bytes(64)
    t = time.monotonic()
    closed_after = None
    for byte in trickle[:40]:
        try:
            sock.send(bytes([byte]))
            if sock.recv(1, socket.MSG_DONTWAIT) == b"":
                raise ConnectionResetError
        except BlockingIOError:
            pass
        except OSError:
            closed_after = time.monotonic() - t
            break
        time.sleep(0.3)
    sock.close()
    assert closed_after is not None, "a handshake trickling for 20 s was never cut off"
    assert HANDSHAKE_TIMEOUT - 0.5 < closed_after < HANDSHAKE_TIMEOUT + 1.0


def test_one_address_flooding_past_its_cap_locks_out_nobody_else(lone):
    """100 reconnecting slow connections from one address (its cap is 32): clients from any other
    address (here 127.0.0.1, and the Unix socket) are served as usual."""
    pid = _pid(lone)
    host, port = _address(lone)
    with _attack(lone, per_source=100, sources=["127.0.0.5"]) as attack:
        time.sleep(1.0)  # the evicted ones have noticed and come back
        cpu = _cpu_while(pid, 3.0)
        tcp = _legit_tcp_call(lone, host, port)
        unix = _legit_call(lone)
        assert attack.connects > 100 and attack.dropped > 0  # the cap evicted, the attacker came back
    print(f"backend CPU while attacked: {cpu:.1%} of a core; legitimate calls: {unix:.3f} s (unix), {tcp:.3f} s (tcp)")
    assert cpu < CPU_LIMIT, f"backend used {cpu:.0%} of a core while attacked"
    assert unix < LEGIT_LIMIT and tcp < LEGIT_LIMIT, f"legitimate calls took {unix:.2f} s (unix), {tcp:.2f} s (tcp)"


def _closed_by_peer(sock: socket.socket) -> bool:
    try:
        return sock.recv(1, socket.MSG_DONTWAIT) == b""
    except BlockingIOError:
        return False
    except OSError:
        return True


def _stalled(host: str, port: int, source: str) -> socket.socket:
    """A connection from ``source`` that stops in the middle of its TLS ClientHello."""
    sock = socket.create_connection((host, port), source_address=(source, 0))
    sock.sendall(CLIENT_HELLO[:100])
    return sock


@pytest.mark.parametrize("cap", ["max_pending", "max_pending_per_host"])
def test_over_a_cap_the_oldest_unauthenticated_connection_is_dropped(tmp_path, cap):
    """With a cap of 4, 7 stalled handshakes: the 3 oldest are closed, the 4 newest held; under
    the per-address cap, another address's stalled handshake is held all the while."""
    settings = {cap: 4, "handshake_timeout": 60.0}
    lone = Cluster(_local.start(tmp_path / "deploy", 1, log_level="INFO", settings=settings))
    try:
        host, port = _address(lone)
        other = _stalled(host, port, "127.0.0.9") if cap == "max_pending_per_host" else None
        socks = []
        for _ in range(7):
            socks.append(_stalled(host, port, "127.0.0.5"))
            time.sleep(0.2)  # one at a time: "oldest" is well defined
        _wait_for(lambda: all(_closed_by_peer(s) for s in socks[:3]), 5, "the 3 oldest to be dropped")
        time.sleep(0.5)
        assert [_closed_by_peer(s) for s in socks] == [True] * 3 + [False] * 4
        if other is not None:
            assert not _closed_by_peer(other)
            other.close()
        for s in socks:
            s.close()
        assert _legit_tcp_call(lone, host, port) < LEGIT_LIMIT
    finally:
        _local.stop(lone.dir)


def test_another_local_users_flood_evicts_only_its_own_handshakes(tmp_path):
    """Any local user may connect to the Unix socket: the per-address cap counts each local user
    apart, so a flood of 40 stalled handshakes by user nobody leaves ours (the oldest) alone."""
    lone = Cluster(_local.start(tmp_path / "deploy", 1, log_level="INFO", settings={"handshake_timeout": 60.0}))
    name = _handshake.local_socket_name(_backend_id(lone))
    ours = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    ours.connect(name)
    ours.settimeout(5)
    assert len(ours.recv(_wire.HELLO.size)) == _wire.HELLO.size  # then we stall, as the flood will
    ours.settimeout(None)  # _closed_by_peer must not wait
    ready_r, ready_w = os.pipe()
    child = os.fork()
    if child == 0:  # the flooder: user nobody, 40 stalled handshakes (only socket calls after fork)
        try:
            os.setgid(65534)
            os.setuid(65534)
            socks = []
            for _ in range(40):
                s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                s.connect(name)
                socks.append(s)
            os.write(ready_w, b"x")
            time.sleep(30)
        finally:
            os._exit(0)
    os.close(ready_w)
    try:
        assert os.read(ready_r, 1) == b"x"
        time.sleep(0.5)
        assert not _closed_by_peer(ours), "another user's flood evicted our pending handshake"
    finally:
        os.kill(child, signal.SIGKILL)
        os.waitpid(child, 0)
        os.close(ready_r)
        ours.close()
        _local.stop(lone.dir)


def test_descriptor_table_pressure_evicts_the_unauthenticated(lone):
    """The backend's descriptor limit at 256 and 400 slow connections: the table would be full."""
    pid = _pid(lone)
    host, port = _address(lone)
    subprocess.run(["prlimit", f"--pid={pid}", "--nofile=256:256"], check=True)
    sources = [f"127.0.1.{i}" for i in range(1, 21)]
    with _attack(lone, per_source=20, sources=sources) as attack:
        _wait_for(lambda: _count(pid, "fd") > 200, 10, "the backend to hold most of what it can")
        cpu = _cpu_while(pid, 3.0)
        tcp = _legit_tcp_call(lone, host, port)
        unix = _legit_call(lone)
        assert attack.dropped > 0  # 400 could not all be held: the oldest were let go
    print(f"backend CPU while attacked: {cpu:.1%} of a core; legitimate calls: {unix:.3f} s (unix), {tcp:.3f} s (tcp)")
    assert cpu < CPU_LIMIT, f"backend used {cpu:.0%} of a core while attacked"
    assert unix < LEGIT_LIMIT and tcp < LEGIT_LIMIT, f"legitimate calls took {unix:.2f} s (unix), {tcp:.2f} s (tcp)"
    assert not _health(lone)


def test_a_full_descriptor_table_pauses_accepting_and_reports_it(lone):
    """No descriptor left at all (EMFILE on accept, nothing to evict): no spinning, UNHEALTHY in
    status, and service resumes by itself once descriptors are back."""
    pid = _pid(lone)
    host, port = _address(lone)
    keep = lone.client()  # an authenticated connection opened before: it keeps working
    previous = _context.install(keep)
    c = Counter(1)
    keep.persist(c, alias=None, backend="b0")
    subprocess.run(["prlimit", f"--pid={pid}", f"--nofile={_count(pid, 'fd')}:4096"], check=True)
    waiting = socket.create_connection((host, port))  # queued by the kernel; the backend cannot take it
    _wait_for(lambda: _health(lone) != "", 5, "the backend to report that it cannot accept")
    assert "cannot accept" in _health(lone)
    status = subprocess.run([sys.executable, "-m", "storage_api", "status", "--config", str(lone.dep.config_path)],
                            capture_output=True, text=True, timeout=60)
    assert status.returncode == 1 and "UNHEALTHY: cannot accept connections" in status.stdout, status.stdout
    assert _cpu_while(pid, 2.0) < CPU_LIMIT
    assert c.inc() == 2
    subprocess.run(["prlimit", f"--pid={pid}", "--nofile=4096:4096"], check=True)
    from storage_api import _tls

    waiting.settimeout(3)
    waiting = _tls.client_context(cafile=lone.settings().tls_ca).wrap_socket(waiting)
    assert len(waiting.recv(_wire.HELLO.size)) > 0  # the queued connection: TLS, then our HELLO
    waiting.close()
    assert _legit_call(lone) < LEGIT_LIMIT
    _wait_for(lambda: _health(lone) == "", 5, "the backend to report itself healthy again")
    _context.install(previous)
    keep.close()


def test_thread_exhaustion_pauses_accepting_and_recovers(lone):
    """Every task of the backend's pids cgroup taken: new connections are refused (no thread to
    serve them), status says why, and the backend serves again as soon as threads are back."""
    pid = _pid(lone)
    with _pids_limit(pid, 80) as group:
        hog = subprocess.Popen([sys.executable, "-c", _HOG], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        try:
            (group / "cgroup.procs").write_text(str(hog.pid))
            hog.stdin.write("go\n")
            hog.stdin.flush()
            assert hog.stdout.readline().startswith("holding")
            refused = Client(lone.settings(connect_timeout=1.0, retry_deadline=0))
            with pytest.raises(CommunicationError):
                refused.persist(Counter(1), alias=None, backend="b0")
            refused.close()
            _wait_for(lambda: "threads" in _health(lone), 5, "the backend to report that it has no threads")
            assert _cpu_while(pid, 2.0) < CPU_LIMIT
        finally:
            hog.stdin.close()
            hog.wait(timeout=10)
        assert _legit_call(lone) < LEGIT_LIMIT + 1.0  # the listener's pause is at most 1 s
        _wait_for(lambda: _health(lone) == "", 5, "the backend to report itself healthy again")


# Starts threads until the cgroup refuses more, says so, and holds them until stdin closes.
_HOG = r"""
import sys, threading
sys.stdin.readline()
gate = threading.Event()
n = 0
while True:
    try:
        threading.Thread(target=gate.wait, daemon=True).start()
        n += 1
    except RuntimeError:
        break
print("holding", n, flush=True)
sys.stdin.read()
gate.set()
"""
