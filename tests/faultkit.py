"""Real faults for the fault suite (``tests/test_faults*.py``) and its long form (``bench/faults.py``).

- :class:`Throttle`: a userspace TCP proxy that forwards at a fixed rate each way (a slow link), in
  a process of its own; ``python -m tests.faultkit throttle LISTEN_HOST PORT TARGET_HOST BYTES_PER_S``.
- :func:`slow_backend`: a backend reached only through a :class:`Throttle` (it advertises the
  proxy's address, 127.0.0.2, and listens on 127.0.0.1 at the same port).
- :func:`restart_redis_empty`: kill -9 a deployment's Redis and start it again without its data.
- :func:`mount_tmpfs` / :func:`fill`: a small file system, and filling it up.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

from storage_api._deploy import _local
from storage_api._redis import Redis
from storage_api.errors import CommunicationError

ROOT = Path(__file__).resolve().parent.parent


# ------------------------------------------------------------------ a slow link
class Throttle:
    """A TCP proxy from ``listen`` to ``target`` that moves at most ``rate`` bytes/s each way
    (shared by all its connections, as a link is)."""

    def __init__(self, listen: tuple[str, int], target: tuple[str, int], rate: float) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "tests.faultkit", "throttle", listen[0], str(listen[1]), target[0],
             str(target[1]), str(rate)], cwd=ROOT, stdout=subprocess.PIPE, env={**os.environ, "PYTHONPATH": str(ROOT)})
        assert self.proc.stdout is not None
        if self.proc.stdout.readline().strip() != b"ready":
            raise RuntimeError("the throttling proxy did not start")

    def stop(self) -> None:
        self.proc.kill()
        self.proc.wait()


class _Bucket:
    """Paces one direction of the link: each chunk waits for its share of time."""

    def __init__(self, rate: float) -> None:
        self.rate = rate
        self.lock = threading.Lock()
        self.next = time.monotonic()

    def take(self, n: int) -> None:
        with self.lock:
            now = time.monotonic()
            self.next = max(self.next, now) + n / self.rate
            wait = self.next - now - n / self.rate
        if wait > 0:
            time.sleep(wait)


def _pump(src: socket.socket, dst: socket.socket, bucket: _Bucket) -> None:
    buf = bytearray(64 * 1024)
    view = memoryview(buf)
    try:
        while True:
            n = src.recv_into(buf)
            if not n:
                break
            bucket.take(n)
            dst.sendall(view[:n])
    except OSError:
        pass
    finally:
        for s in (src, dst):
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass


def _serve_throttle(host: str, port: int, target: tuple[str, int], rate: float) -> None:
    listener = socket.create_server((host, port), backlog=64)
    up, down = _Bucket(rate), _Bucket(rate)
    print("ready", flush=True)
    while True:
        client, _addr = listener.accept()
        server = socket.create_connection(target)
        for s in (client, server):
            s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        threading.Thread(target=_pump, args=(client, server, up), daemon=True).start()
        threading.Thread(target=_pump, args=(server, client, down), daemon=True).start()


def _free_port_pair() -> int:
    """A port free on both 127.0.0.1 (the backend) and 127.0.0.2 (its proxy)."""
    while True:
        with socket.socket() as a, socket.socket() as b:
            a.bind(("127.0.0.1", 0))
            port = a.getsockname()[1]
            try:
                b.bind(("127.0.0.2", port))
            except OSError:
                continue
            return port


def slow_backend(dep: _local.Deployment, name: str, rate: float) -> tuple[_local.Process, Throttle]:
    """Start a backend of ``dep`` that clients reach through a link of ``rate`` bytes/s."""
    port = _free_port_pair()
    throttle = Throttle(("127.0.0.2", port), ("127.0.0.1", port), rate)
    storage = Path(dep.dir) / "backends" / name
    log = Path(dep.dir) / "logs" / f"{name}.log"
    cmd = _local._backend_cmd(dep.config_path, storage, name, True, "INFO") + [
        "--port", str(port), "--advertise-host", "127.0.0.2"]
    proc = _local.Process(name, _local._spawn(cmd, log).pid, str(log), str(storage))
    dep.backends.append(proc)
    dep.save()
    return proc, throttle


# ------------------------------------------------------------------ Redis loses its data
def restart_redis_empty(dep: _local.Deployment, down: float = 0.0) -> None:
    """kill -9 the deployment's Redis, delete its data, start it again (same port and password)."""
    os.kill(dep.redis.pid, signal.SIGKILL)
    try:
        os.waitpid(dep.redis.pid, 0)
    except ChildProcessError:  # started by another process: wait until it is gone
        while _local._alive(dep.redis.pid):
            time.sleep(0.01)
    redis_dir = Path(dep.dir) / "redis"
    for name in ("appendonly.aof", "dump.rdb"):  # Redis 6
        (redis_dir / name).unlink(missing_ok=True)
    shutil.rmtree(redis_dir / "appendonlydir", ignore_errors=True)  # Redis 7
    time.sleep(down)
    dep.redis.pid = _local._spawn([_local.redis_binary(), str(redis_dir / "redis.conf")], Path(dep.redis.log)).pid
    dep.save()
    r = Redis(dep.redis_url, timeout=1.0)
    deadline = time.monotonic() + 10
    try:
        while True:
            try:
                r.execute("PING")
                return
            except CommunicationError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.02)
    finally:
        r.close()


# ------------------------------------------------------------------ a disk that fills
def mount_tmpfs(path: Path, mib: int) -> Path:
    """Mount a tmpfs of ``mib`` MiB at ``path`` (root only)."""
    path.mkdir(parents=True, exist_ok=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={mib}m,mode=0700", "tmpfs", str(path)], check=True)
    return path


def unmount(path: Path) -> None:
    subprocess.run(["umount", "-l", str(path)], check=False)


def fill(directory: Path, leave: int = 0) -> Path:
    """Fill the file system of ``directory`` until ``leave`` bytes are free; return the filler."""
    filler = directory / "filler"
    with open(filler, "ab") as f:
        chunk = b"\0" * (1 << 20)
        while True:
            st = os.statvfs(directory)
            free = st.f_bavail * st.f_frsize - leave
            if free <= 0:
                break
            try:
                f.write(chunk[: min(len(chunk), free)])
                f.flush()
            except OSError:
                break
    return filler


if __name__ == "__main__":
    if sys.argv[1:2] == ["throttle"] and len(sys.argv) == 7:
        _host, _port, _thost, _tport, _rate = sys.argv[2:]
        _serve_throttle(_host, int(_port), (_thost, int(_tport)), float(_rate))
    else:
        sys.exit("usage: python -m tests.faultkit throttle LISTEN_HOST PORT TARGET_HOST TARGET_PORT BYTES_PER_S")
