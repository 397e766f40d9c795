"""The built-in RESP client (storage_api._redis): against a real redis-server, and against a
scripted server that answers with crafted bytes for the parser's edge cases."""

from __future__ import annotations

import signal
import socket
import subprocess
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from storage_api._deploy._local import redis_binary
from storage_api._deploy._procs import terminate
from storage_api._redis import Redis
from storage_api.errors import CommunicationError, ConfigError
from tests.conftest import wait_for


def _key(label: str) -> str:
    return f"test-redis:{label}:{uuid.uuid4().hex}"


@pytest.fixture
def r(redis_url: str) -> Iterator[Redis]:
    client = Redis(redis_url, timeout=5.0)
    yield client
    client.close()


def _with_db(url: str, db: int) -> str:
    return url.rsplit("/", 1)[0] + f"/{db}"


@pytest.mark.parametrize("url", ["http://127.0.0.1:6379", "redis:///0", "redis://127.0.0.1:6379/x",
                                 "unix:///tmp/redis.sock?db=x", "unix://"])
def test_malformed_urls_are_config_errors(url: str) -> None:
    with pytest.raises(ConfigError):
        Redis(url)


# ------------------------------------------------------------------ a Redis on a Unix socket
class UnixRedis:
    """A redis-server that listens on a Unix socket only, and can be stopped and restarted."""

    def __init__(self, directory: Path) -> None:
        self.dir = directory
        self.path = directory / "redis.sock"
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        conf = f"port 0\nunixsocket {self.path}\nunixsocketperm 700\ndir {self.dir}\nsave \"\"\nappendonly no\n"
        (self.dir / "redis.conf").write_text(conf)
        self.proc = subprocess.Popen([redis_binary(), str(self.dir / "redis.conf")], stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL, start_new_session=True)
        probe = Redis(f"unix://{self.path}", timeout=1)

        def answers() -> bool:
            try:
                return probe.execute("PING") == "PONG"
            except CommunicationError:
                return False

        wait_for(answers, 20, "redis-server on its Unix socket")
        probe.close()

    def stop(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)  # all its connections break at once
        self.proc.wait()
        self.path.unlink(missing_ok=True)


@pytest.fixture
def unix_redis(tmp_path: Path) -> Iterator[UnixRedis]:
    server = UnixRedis(tmp_path)
    server.start()
    yield server
    if server.proc is not None and server.proc.poll() is None:
        terminate([server.proc.pid], 10)


# ------------------------------------------------------------------------------ reconnection
def test_a_connection_redis_dropped_is_replaced_not_reported(r: Redis, redis_url: str) -> None:
    """An idle pooled connection that Redis closed (``timeout`` setting, ``CLIENT KILL``, a
    restart) must not fail the next command: Redis is up."""
    conn_id = r.execute("CLIENT", "ID")  # one thread: the pool holds exactly this connection
    admin = Redis(redis_url)
    try:
        assert admin.execute("CLIENT", "KILL", "ID", conn_id) == 1
    finally:
        admin.close()
    assert r.execute("PING") == "PONG"
    assert r.execute("CLIENT", "ID") != conn_id


def test_a_restart_between_commands_is_invisible(unix_redis: UnixRedis) -> None:
    client = Redis(f"unix://{unix_redis.path}", timeout=2)
    try:
        assert client.execute("SET", "a", "1") == "OK"
        unix_redis.stop()
        unix_redis.start()
        assert client.execute("PING") == "PONG"
    finally:
        client.close()


# --------------------------------------------------------------- crafted replies (the parser)
class Scripted:
    """A TCP server that reads RESP commands and answers each with the next scripted reply.

    A reply is bytes or a list of byte chunks (sent one by one); ``None`` closes the connection
    (right after the reply before it, or instead of answering a command).
    """

    def __init__(self, replies: list) -> None:
        self.replies = list(replies)
        self.commands: list[list[bytes]] = []
        self.connections = 0
        self.server = socket.create_server(("127.0.0.1", 0))
        self.url = f"redis://127.0.0.1:{self.server.getsockname()[1]}/0"
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.server.accept()
            except OSError:
                return
            self.connections += 1
            with conn, conn.makefile("rb") as f:
                while self.replies:
                    command = _read_command(f)
                    if command is None:
                        break
                    self.commands.append(command)
                    reply = self.replies.pop(0)
                    if reply is None:
                        break
                    for chunk in reply if isinstance(reply, list) else [reply]:
                        conn.sendall(chunk)
                    if self.replies and self.replies[0] is None:  # close right after this reply
                        self.replies.pop(0)
                        break

    def close(self) -> None:
        self.server.close()


def _read_command(f) -> list[bytes] | None:
    line = f.readline()
    if not line:
        return None
    assert line.startswith(b"*"), line
    args = []
    for _ in range(int(line[1:])):
        n = int(f.readline()[1:])
        args.append(f.read(n + 2)[:-2])
    return args


@pytest.fixture
def scripted() -> Iterator[type[Scripted]]:
    made: list[Scripted] = []

    def make(replies: list) -> Scripted:
        s = Scripted(replies)
        made.append(s)
        return s

    yield make  # type: ignore[misc]
    for s in made:
        s.close()


@pytest.mark.parametrize("raw", [
    b"+OK",  # line cut short, then the connection closes
    b"$10\r\nabc",  # bulk string cut short
    b"*3\r\n:1\r\n",  # array cut short
    b"*99999999999\r\n:1\r\n",  # an absurd array, cut short
    b"$3\r\nabcXY",  # bulk string without its CRLF: the stream is out of step
    b"$abc\r\n",  # a length that is not a number
    b":12x\r\n",  # an integer that is not one
    b"%1\r\n+a\r\n+b\r\n",  # RESP3 map: not spoken here
    b"\r\n",  # an empty line
])
def test_malformed_replies_are_communication_errors_and_the_connection_is_dropped(scripted, raw: bytes) -> None:
    server = scripted([[raw], None, b"+OK\r\n"])
    client = Redis(server.url, timeout=5)
    with pytest.raises(CommunicationError):
        client.execute("GET", "k")
    assert client.execute("PING") == "OK"  # on a new connection: the broken one was not pooled
    assert server.connections == 2
    client.close()


def test_a_huge_announced_length_is_refused_before_anything_is_allocated(scripted) -> None:
    """A length beyond Redis' own 512 MB limit on a string: an error at once, without waiting for
    (or allocating) the announced bytes; the server keeps the connection open."""
    server = scripted([b"$99999999999999\r\n", b"+late\r\n"])
    client = Redis(server.url, timeout=30)
    with pytest.raises(CommunicationError, match="99999999999999"):
        client.execute("GET", "k")
    client.close()


