"""Process helpers shared by the deployments (the embedded one and the COMPSs scripts' one): starting
processes and Redis servers, watching and stopping them."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from pathlib import Path

from .._redis import Redis, RedisLoading
from ..errors import CommunicationError


def spawn(cmd: list[str], log: Path, *, env: dict[str, str] | None = None) -> subprocess.Popen:
    """Start ``cmd`` in its own session (a terminal's signals do not reach it), output to ``log``,
    in the current working directory, with ``env`` (default: ours)."""
    with open(log, "ab") as fh:
        return subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                start_new_session=True, env=env, cwd=os.getcwd())


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port free on ``host`` now (another process may take it before we bind it)."""
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def redis_config(port: int, bind: str, password: str, directory: Path, *, append_only: bool,
                 protected: bool) -> str:
    """A redis.conf: password, working directory, no snapshots, in the foreground, log to stdout."""
    persistence = "appendonly yes\nappendfsync everysec\n" if append_only else "appendonly no\n"
    return (f"port {port}\nbind {bind}\nprotected-mode {'yes' if protected else 'no'}\nrequirepass {password}\n"
            f"dir {directory}\n{persistence}save \"\"\ndaemonize no\nlogfile \"\"\n")


def redis_ready(url: str, proc: subprocess.Popen, timeout: float) -> bool:
    """Wait until the Redis at ``url`` answers PING; False if ``proc`` exits first or it stays silent
    for ``timeout`` seconds (while it loads its data it answers LOADING: that is progress, not silence)."""
    client = Redis(url, timeout=1.0)
    deadline = time.monotonic() + timeout
    try:
        while proc.poll() is None and time.monotonic() < deadline:
            try:
                # EXISTS, unlike PING, is refused (LOADING) until the data set is loaded
                if client.execute("PING") == "PONG" and client.execute("EXISTS", "storage-api:probe") == 0:
                    return True
            except RedisLoading:  # it answers, but until its data is in, only that
                deadline = time.monotonic() + timeout  # it is working: wait as long as the load takes
            except CommunicationError:
                pass
            time.sleep(0.05)
        return False
    finally:
        client.close()


def alive(pid: int) -> bool:
    """Whether ``pid`` runs; a zombie counts as dead (ours is reaped; an orphan's parent may never)."""
    if pid <= 0:  # not a process (kill(0) would signal our own group)
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        done, _ = os.waitpid(pid, os.WNOHANG)
        if done:
            return False
    except ChildProcessError:  # not our child (started by an earlier command)
        pass
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rpartition(")")[2].split()[0] != "Z"
    except OSError:
        return True


def wait_gone(pids: list[int], timeout: float) -> list[int]:
    """Wait up to ``timeout`` seconds for ``pids`` to exit; return those still running."""
    deadline = time.monotonic() + timeout
    left = [p for p in pids if alive(p)]
    while left and time.monotonic() < deadline:
        time.sleep(0.05)
        left = [p for p in left if alive(p)]
    return left


def terminate(pids: list[int], timeout: float) -> None:
    """SIGTERM, then SIGKILL what is left after ``timeout`` (each pid is one we started)."""
    for sig, wait in ((signal.SIGTERM, timeout), (signal.SIGKILL, 5.0)):
        left = [p for p in pids if alive(p)]
        for p in left:
            try:
                os.kill(p, sig)
            except ProcessLookupError:
                pass
        if not wait_gone(left, wait):
            return


def tail(path: str | os.PathLike[str], lines: int = 15, since: int = 0) -> str:
    """The last lines of a log file after byte ``since`` ('' if it cannot be read): a log that
    outlives its process (appended to at each start) holds earlier runs' lines before ``since``."""
    try:
        with open(path, "rb") as fh:
            fh.seek(since)
            text = fh.read().decode(errors="replace")
    except OSError:
        return ""
    return "\n".join(text.splitlines()[-lines:])


def size(path: str | os.PathLike[str]) -> int:
    """Bytes in a file now (0 if there is none): where what a process appends from now on begins."""
    try:
        return os.path.getsize(path)
    except OSError:
        return 0
