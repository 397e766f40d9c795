"""Real faults for the fault suite (``tests/test_faults*.py``) and its long form (``bench/faults.py``).

- :class:`Throttle`: a userspace TCP proxy that forwards at a fixed rate each way (a slow link), in
  a process of its own; ``python -m tests.faultkit throttle LISTEN_HOST PORT TARGET_HOST BYTES_PER_S``.
- :func:`slow_backend`: a backend reached only through a :class:`Throttle` (it advertises the
  proxy's address, 127.0.0.2, and listens on 127.0.0.1 at the same port).
- :func:`restart_redis_empty`: kill -9 a deployment's Redis and start it again without its data.
- :func:`mount_tmpfs` / :func:`fill`: a small file system, and filling it up.

Workloads that count what was acknowledged and check it after the fault (the short versions run
in the tests, the long ones in ``bench/faults.py``):

- :func:`kill9_large_writers`: concurrent writers of large arrays (new objects, replacements,
  deletes) while compactions run, the backend killed with SIGKILL at a random moment each round.
- :func:`empty_redis_rounds`: Redis killed and restarted without its data while threads call
  counters; the objects must answer again by id and alias, without restarting the backends.
- :func:`disk_full_run`: writes until the disk is full, then checks that nothing acknowledged
  was lost and nothing refused was applied, live and after a restart.
- :func:`moves_under_calls`: threads calling an object while it moves back and forth.
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
from typing import Any

from storage_api._deploy import _local
from storage_api._redis import Redis
from storage_api._serial import dumps
from storage_api.errors import CommunicationError, ObjectNotFound

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


# ------------------------------------------------------------------ workloads
def _array(gen: int, nbytes: int) -> Any:
    """A recognisable array: element i is gen * 2**32 + i (a torn or stale copy shows)."""
    import numpy as np

    return np.arange(nbytes // 8, dtype=np.int64) + (gen << 32)


def _check(arr: Any) -> int | None:
    """The generation an array was made with, or None if it is not one of ours (corrupt)."""
    import numpy as np

    if arr is None or len(arr) == 0:
        return None
    gen = int(arr[0]) >> 32
    return gen if np.array_equal(arr, _array(gen, arr.nbytes)) else None


def log_usage(storage_dir: str | os.PathLike[str]) -> int:
    """Bytes a backend's log takes on disk (allocated blocks: preallocation included)."""
    return sum(p.stat().st_blocks * 512 for p in (Path(storage_dir) / "log").glob("*"))


def backend_stats(client: Any, name: str) -> dict[str, int]:
    bid = next(b.id for b in client.backends() if b.name == name)
    return client._send(bid, *dumps(("stats",)))


def kill9_large_writers(cluster: Any, client: Any, rounds: int, *, writers: int = 2,
                        mib: tuple[int, int] = (20, 50), seconds: tuple[float, float] = (1.0, 4.0), seed: int = 0,
                        say: Any = lambda msg: None) -> dict[str, Any]:
    """Rounds of concurrent large writes into backend b0, each ended by kill -9 at a random moment.

    Each writer persists new objects (streamed), replaces the array of existing ones (a mutating
    call with a large argument) and deletes old ones, remembering what was acknowledged. After each
    kill the backend is restarted and asked directly for every object: ``lost`` counts acknowledged
    objects missing or older than acknowledged and acknowledged deletes undone, ``corrupt`` arrays
    that are not exactly one of ours. The log's disk use is taken after each restart.
    """
    import random

    from .models import Holder

    rng = random.Random(seed)
    lock = threading.Lock()
    state: dict[str, int] = {}  # oid -> last acknowledged generation (-1: deleted)
    unknown: dict[str, int] = {}  # oid -> generation (-1: delete) of a write the kill interrupted
    handles: dict[str, Any] = {}
    owned: list[list[str]] = [[] for _ in range(writers)]
    totals: dict[str, Any] = {"rounds": 0, "acked_ops": 0, "lost": 0, "corrupt": 0, "log_bytes": [], "live_bytes": []}
    gens = iter(range(1, 1 << 30))

    def ack(oid: str, gen: int) -> None:
        with lock:
            state[oid] = gen
            unknown.pop(oid, None)
            totals["acked_ops"] += 1

    def writer(w: int, wr: random.Random) -> None:
        mine = owned[w]
        while True:
            with lock:
                gen = next(gens)
            size = wr.randint(*mib) << 20
            op = wr.random()
            try:
                if len(mine) < 2 or (op < 0.3 and len(mine) < 4):  # at most 4 objects per writer
                    h = Holder(_array(gen, size))
                    oid = h.make_persistent(backend="b0")
                    handles[oid] = h
                    mine.append(oid)
                    ack(oid, gen)
                elif op < 0.9 or len(mine) < 3:
                    oid = wr.choice(mine)
                    with lock:
                        unknown[oid] = gen
                    handles[oid].put(_array(gen, size))
                    ack(oid, gen)
                else:
                    oid = mine.pop(0)
                    with lock:
                        unknown[oid] = -1
                    handles[oid].delete_persistent()
                    ack(oid, -1)
            except CommunicationError:
                return  # the kill: this write's outcome is unknown

    def read(oid: str) -> Any:
        """The object's array as backend b0 itself has it (not routed: Redis may not mask a resurrection)."""
        bid = next(b.id for b in client.backends() if b.name == "b0")
        return client._send(bid, *dumps(("call", oid, "take", (), {}, None)))

    for rnd in range(rounds):
        threads = [threading.Thread(target=writer, args=(w, random.Random(rng.random()))) for w in range(writers)]
        for t in threads:
            t.start()
        time.sleep(rng.uniform(*seconds))
        cluster.kill("b0", signal.SIGKILL)
        for t in threads:
            t.join(timeout=120)
        cluster.restart("b0")
        lost = corrupt = 0
        for oid, gen in list(state.items()):
            maybe = unknown.get(oid)
            try:
                found: int | None = _check(read(oid))
                exists = True
            except ObjectNotFound:
                exists = False
            if not exists:
                if gen >= 0 and maybe != -1:
                    lost += 1
                state.pop(oid)
                for mine in owned:
                    if oid in mine:
                        mine.remove(oid)
            elif gen < 0:
                lost += 1  # an acknowledged delete came undone
                state.pop(oid)
            elif found is None:
                corrupt += 1
            elif found != gen:
                if found == maybe:
                    state[oid] = found  # the interrupted write had been applied: allowed
                else:
                    lost += 1
        unknown.clear()
        usage = log_usage(cluster.backend("b0").storage_dir)
        live = backend_stats(client, "b0")["live_bytes"]
        totals["rounds"] += 1
        totals["lost"] += lost
        totals["corrupt"] += corrupt
        totals["log_bytes"].append(usage)
        totals["live_bytes"].append(live)
        say(f"round {rnd + 1}: {totals['acked_ops']} acknowledged operations so far; lost {lost}, corrupt {corrupt}; "
            f"log {usage / 2**20:.0f} MiB on disk for {live / 2**20:.0f} MiB live ({usage / max(live, 1):.2f}x)")
    return totals


def empty_redis_rounds(cluster: Any, client: Any, rounds: int, *, counters: int = 4, down: float = 1.5,
                       after: float = 3.0, say: Any = lambda msg: None) -> dict[str, Any]:
    """Rounds of: threads increment counters (on b0 and b1, with aliases; the first with a replica on
    b1), Redis is killed with SIGKILL and restarted empty ``down`` seconds later, calls go on for
    ``after`` seconds. Then every counter must be found by id and by alias from a fresh client and
    hold every acknowledged increment (at most the increments whose outcome a failure hid more);
    the first counter's replica list must be back."""
    from .models import Counter

    objs = [Counter(0) for _ in range(counters)]
    for i, c in enumerate(objs):
        c.make_persistent(backend=f"b{i % 2}", alias=f"redis-loss-{i}")
    objs[0].new_replica("b1")
    acked = [0] * counters
    unknown = [0] * counters
    totals: dict[str, Any] = {"rounds": 0, "acked_ops": 0, "lost": 0, "call_errors": 0, "other_errors": [],
                              "missing_by_id": 0, "missing_by_alias": 0, "replicas_lost": 0, "new_persist_failed": 0}

    def hammer(i: int, stop: threading.Event) -> None:
        while not stop.is_set():
            try:
                objs[i].inc()
                acked[i] += 1
            except CommunicationError:
                unknown[i] += 1
            except Exception as exc:
                totals["other_errors"].append(repr(exc))
                return

    for rnd in range(rounds):
        stop = threading.Event()
        pool = [threading.Thread(target=hammer, args=(i, stop)) for i in range(counters)]
        for t in pool:
            t.start()
        time.sleep(0.5)
        restart_redis_empty(cluster.dep, down=down)
        time.sleep(after)
        stop.set()
        for t in pool:
            t.join(timeout=60)
        fresh = cluster.client()
        try:
            ids = {b.name: b.id for b in fresh.backends() if b.alive}
            for i, c in enumerate(objs):
                try:
                    value = fresh.get_by_id(c.getID()).get()
                except ObjectNotFound:
                    totals["missing_by_id"] += 1
                    continue
                if not acked[i] <= value <= acked[i] + unknown[i]:
                    totals["lost"] += max(0, acked[i] - value)
                try:
                    fresh.get_by_alias(f"redis-loss-{i}", Counter)
                except ObjectNotFound:
                    totals["missing_by_alias"] += 1
                acked[i] = value  # the base of the next round
                unknown[i] = 0
            if fresh.placement(objs[0].getID()).replicas != (ids.get("b1"),):
                totals["replicas_lost"] += 1
            try:
                new = Counter(1)
                new.make_persistent()
            except Exception:
                totals["new_persist_failed"] += 1
        finally:
            fresh.close()
        totals["rounds"] += 1
        totals["acked_ops"] = sum(acked)
        say(f"round {rnd + 1}: Redis restarted empty; {sum(acked)} increments acknowledged so far, "
            f"lost {totals['lost']}, call errors {sum(unknown)}")
        totals["call_errors"] += sum(unknown)
    return totals


def disk_full_run(cluster: Any, client: Any, disk: Path, say: Any = lambda msg: None) -> dict[str, Any]:
    """Fill backend b0's disk (a small file system at ``disk``) with persists of 256 KiB-4 MiB arrays
    (small and streamed) and counter increments until they fail; every failure must be
    ``StorageFull``. Then read everything back, free the space, write again, restart the backend
    and read everything again."""
    import random

    import numpy as np

    from storage_api.errors import StorageFull

    from .models import Counter, Holder

    rng = random.Random(3)
    counter = Counter(0)
    counter.make_persistent(backend="b0")
    kept: dict[str, tuple[Any, int]] = {}
    acked_incs = refused = other = 0
    filler = fill(disk, leave=64 << 20)  # leave a little room: the writes fill the rest
    while refused < 50:
        gen = len(kept) + 1
        try:
            if rng.random() < 0.5:
                h = Holder(_array(gen, rng.choice([256 << 10, 1 << 20, 4 << 20, 6 << 20])))
                h.make_persistent(backend="b0")
                kept[h.getID()] = (h, gen)
            else:
                counter.inc()
                acked_incs += 1
        except StorageFull:
            refused += 1
        except Exception as exc:
            other += 1
            say(f"unexpected {exc!r}")
    corrupt = lost = 0

    def verify() -> None:
        nonlocal corrupt, lost
        for oid, (h, gen) in kept.items():
            try:
                if _check(h.take()) != gen:
                    corrupt += 1
            except ObjectNotFound:
                lost += 1
        if counter.get() != acked_incs:
            lost += abs(counter.get() - acked_incs)

    verify()
    filler.unlink()
    counter.inc()
    acked_incs += 1
    extra = Holder(np.ones(1 << 20))
    extra.make_persistent(backend="b0")
    cluster.kill("b0", signal.SIGKILL)
    cluster.restart("b0")
    verify()
    result = {"acked_persists": len(kept), "acked_increments": acked_incs, "refused_storage_full": refused,
              "other_errors": other, "lost": lost, "corrupt": corrupt}
    say(f"disk full: {len(kept)} persists and {acked_incs} increments acknowledged, {refused} refused with "
        f"StorageFull, {other} other errors; after freeing space and kill -9: lost {lost}, corrupt {corrupt}")
    return result


def moves_under_calls(moves: int, threads: int = 6, names: tuple[str, str] = ("b0", "b1"), pause: float = 0.01
                      ) -> dict[str, Any]:
    """``threads`` threads increment a counter while it moves ``moves`` times between two backends
    (``pause`` seconds apart, so that calls run between the moves as well as during them).

    Returns the calls made, the call errors (there must be none), and how many increments were
    lost or applied twice (the final value against the acknowledged results).
    """
    from .models import Counter

    c = Counter(0)
    c.make_persistent(backend=names[0])
    results: list[int] = []
    errors: list[BaseException] = []
    stop = threading.Event()

    def call() -> None:
        while not stop.is_set():
            try:
                results.append(c.inc())
            except Exception as exc:
                errors.append(exc)

    pool = [threading.Thread(target=call) for _ in range(threads)]
    for t in pool:
        t.start()
    try:
        for i in range(moves):
            c.move(names[(i + 1) % 2])
            time.sleep(pause)
    finally:
        stop.set()
        for t in pool:
            t.join()
    final = c.get()
    return {"moves": moves, "calls": len(results), "errors": len(errors),
            "lost": max(0, len(results) - final),
            "repeated": len(results) - len(set(results)),
            "final_matches": int(final == len(results) and sorted(results) == list(range(1, final + 1))),
            "first_error": repr(errors[0]) if errors else ""}


if __name__ == "__main__":
    if sys.argv[1:2] == ["throttle"] and len(sys.argv) == 7:
        _host, _port, _thost, _tport, _rate = sys.argv[2:]
        _serve_throttle(_host, int(_port), (_thost, int(_tport)), float(_rate))
    else:
        sys.exit("usage: python -m tests.faultkit throttle LISTEN_HOST PORT TARGET_HOST TARGET_PORT BYTES_PER_S")
