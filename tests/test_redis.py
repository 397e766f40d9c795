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
from urllib.parse import urlsplit

import pytest

from storage_api._deploy._local import redis_binary
from storage_api._deploy._procs import terminate
from storage_api._redis import Redis, RedisReplyError
from storage_api.errors import CommunicationError, ConfigError, StoreError
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


# ------------------------------------------------------------------ replies from a real Redis
def test_replies_of_every_type(r: Redis) -> None:
    k, lst = _key("k"), _key("list")
    assert r.execute("PING") == "PONG"  # simple string
    assert r.execute("SET", k, "v") == "OK"
    assert r.execute("GET", k) == "v"  # bulk string
    assert r.execute("GET", _key("missing")) is None  # null bulk string
    assert r.execute("INCR", _key("n")) == 1  # integer
    assert r.execute("RPUSH", lst, "a", "b", "c") == 3
    assert r.execute("LRANGE", lst, 0, -1) == ["a", "b", "c"]  # array
    assert r.execute("LRANGE", _key("none"), 0, -1) == []  # empty array
    assert r.execute("BLPOP", _key("empty"), 0.01) is None  # null array (timed out)
    nested = "return {1, {2, 'x', {}}, 'y', redis.status_reply('FINE')}"
    assert r.execute("EVAL", nested, 0) == [1, [2, "x", []], "y", "FINE"]


def test_error_replies_raise_a_typed_error_and_the_connection_stays_usable(r: Redis) -> None:
    k = _key("text")
    r.execute("SET", k, "not a number")
    with pytest.raises(RedisReplyError, match="not an integer") as info:
        r.execute("INCR", k)
    assert isinstance(info.value, StoreError) and info.value.code == "ERR"
    with pytest.raises(RedisReplyError, match="MY failure"):
        r.execute("EVAL", "return redis.error_reply('MY failure')", 0)
    with pytest.raises(RedisReplyError, match="unknown command"):
        r.execute("NO-SUCH-COMMAND")
    assert r.execute("GET", k) == "not a number"


@pytest.mark.parametrize("value", ["", "line\r\nbreak", "$3\r\n*1\r\n", "é € 漢字", "x" * 300_000])
def test_values_are_binary_safe(r: Redis, value: str) -> None:
    k = _key("value")
    r.execute("SET", k, value)
    assert r.execute("GET", k) == value
    r.execute("SET", k, value.encode())  # bytes arguments go as they are
    assert r.execute("GET", k) == value


def test_numbers_are_sent_as_their_text_and_other_types_are_refused(r: Redis) -> None:
    k = _key("num")
    r.execute("SET", k, 1.5)
    assert r.execute("INCRBYFLOAT", k, 2) == "3.5"
    for bad in (None, {"a": 1}, [1]):
        with pytest.raises(TypeError):
            r.execute("SET", k, bad)
    assert r.execute("GET", k) == "3.5"  # nothing was sent: the connection is in step


def test_pipeline_returns_replies_in_order_with_errors_in_place(r: Redis) -> None:
    k, text = _key("k"), _key("text")
    r.execute("SET", text, "abc")
    replies = r.pipeline([("SET", k, "1"), ("INCR", text), ("INCR", k), ("GET", k)])
    assert replies[0] == "OK" and replies[2] == 2 and replies[3] == "2"
    assert isinstance(replies[1], RedisReplyError)  # returned, not raised: the others ran
    assert r.pipeline([]) == []


def test_transaction_applies_all_or_reports_the_abort(r: Redis) -> None:
    k, text = _key("k"), _key("text")
    r.execute("SET", text, "abc")
    replies = r.pipeline([("INCR", k), ("INCR", text), ("INCR", k)], transaction=True)
    assert replies[0] == 1 and replies[2] == 2 and isinstance(replies[1], RedisReplyError)
    # a command Redis refuses while queueing aborts the whole transaction: nothing is applied
    with pytest.raises(RedisReplyError, match="EXECABORT"):
        r.pipeline([("INCR", k), ("GET",)], transaction=True)
    assert r.execute("GET", k) == "2"
    assert r.execute("PING") == "PONG"


def test_threads_share_a_bounded_pool_and_each_gets_its_own_replies(redis_url: str, r: Redis) -> None:
    def connected() -> int:
        info = r.execute("INFO", "clients")
        return int(info.split("connected_clients:")[1].split()[0])

    before = connected()
    pooled = Redis(redis_url, pool_size=3)
    keys = [_key(f"thread{i}") for i in range(12)]
    results: dict[str, list] = {}
    errors: list[BaseException] = []

    def work(k: str) -> None:
        try:
            results[k] = [pooled.pipeline([("INCR", k), ("GET", k)]) for _ in range(100)]
        except BaseException as exc:  # the assertion below shows it
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(k,)) for k in keys]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    for k in keys:
        assert results[k] == [[i, str(i)] for i in range(1, 101)]
    # connections beyond the pool's size were closed when handed back
    wait_for(lambda: connected() - before <= 3, 10, "at most 3 pooled connections")
    pooled.close()
    wait_for(lambda: connected() == before, 10, "every pooled connection closed")


# --------------------------------------------------------------------------- URLs and set-up
def test_database_and_password_come_from_the_url(redis_url: str, r: Redis) -> None:
    k = _key("db")
    db3 = Redis(_with_db(redis_url, 3))
    try:
        db3.execute("SET", k, "three")
        assert db3.execute("GET", k) == "three" and r.execute("GET", k) is None
    finally:
        db3.execute("DEL", k)
        db3.close()
    port = urlsplit(redis_url).port
    with pytest.raises(ConfigError, match="refused the connection setup"):
        Redis(f"redis://:wrong@127.0.0.1:{port}/0").execute("PING")
    with pytest.raises(RedisReplyError, match="NOAUTH"):
        Redis(f"redis://127.0.0.1:{port}/0").execute("GET", k)


def test_a_user_and_password_authenticate_as_that_acl_user(redis_url: str, r: Redis) -> None:
    user = f"u{uuid.uuid4().hex[:8]}"
    r.execute("ACL", "SETUSER", user, "on", ">p@ss:w/rd", "~*", "+@all")
    try:
        port = urlsplit(redis_url).port
        as_user = Redis(f"redis://{user}:p%40ss%3Aw%2Frd@127.0.0.1:{port}/0")  # percent-encoded
        assert as_user.execute("ACL", "WHOAMI") == user
        as_user.close()
    finally:
        r.execute("ACL", "DELUSER", user)


@pytest.mark.parametrize("url", ["http://127.0.0.1:6379", "redis:///0", "redis://127.0.0.1:6379/x",
                                 "unix:///tmp/redis.sock?db=x", "unix://"])
def test_malformed_urls_are_config_errors(url: str) -> None:
    with pytest.raises(ConfigError):
        Redis(url)


def test_unreachable_redis_is_a_communication_error(tmp_path: Path) -> None:
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(CommunicationError, match=f"127.0.0.1:{port}"):
        Redis(f"redis://127.0.0.1:{port}/0", timeout=1).execute("PING")
    with pytest.raises(CommunicationError, match="no-such.sock"):
        Redis(f"unix://{tmp_path}/no-such.sock").execute("PING")


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


def test_unix_socket_url_with_a_database(unix_redis: UnixRedis) -> None:
    two = Redis(f"unix://{unix_redis.path}?db=2")
    zero = Redis(f"unix://{unix_redis.path}")
    try:
        two.execute("SET", "k", "in two")
        assert two.execute("GET", "k") == "in two" and zero.execute("GET", "k") is None
        assert two.address == str(unix_redis.path)
    finally:
        two.close()
        zero.close()


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


def test_commands_fail_while_redis_is_down_and_work_once_it_is_back(unix_redis: UnixRedis) -> None:
    client = Redis(f"unix://{unix_redis.path}", timeout=2)
    try:
        client.pipeline([("SET", "a", "1"), ("SET", "b", "2")])
        unix_redis.stop()
        with pytest.raises(CommunicationError):
            client.execute("GET", "a")
        unix_redis.start()
        assert client.execute("GET", "a") is None  # a new, empty Redis: but an answer
        assert client.execute("SET", "a", "3") == "OK"
    finally:
        client.close()


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


@pytest.mark.parametrize(("raw", "value"), [
    (b"+OK\r\n", "OK"),
    (b":-42\r\n", -42),
    (b"$0\r\n\r\n", ""),
    (b"$-1\r\n", None),
    (b"*-1\r\n", None),
    (b"*0\r\n", []),
    (b"*3\r\n$1\r\na\r\n$-1\r\n:7\r\n", ["a", None, 7]),
    (b"*2\r\n*2\r\n:1\r\n$1\r\na\r\n*0\r\n", [[1, "a"], []]),
    (b"*1\r\n" * 40 + b":1\r\n", [[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[1]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]),
    (b"$12\r\nhello\r\nworld\r\n", "hello\r\nworld"),
])
def test_crafted_replies_parse(scripted, raw: bytes, value) -> None:
    server = scripted([raw, [bytes([b]) for b in raw]])  # whole, then one byte per segment
    client = Redis(server.url)
    assert client.execute("GET", "k") == value
    assert client.execute("GET", "k") == value
    assert server.commands == [[b"GET", b"k"]] * 2 and server.connections == 1
    client.close()


def test_a_crafted_error_reply_is_raised_with_its_message(scripted) -> None:
    server = scripted([b"-WRONGTYPE custom message\r\n", b"+OK\r\n"])
    client = Redis(server.url)
    with pytest.raises(RedisReplyError, match="WRONGTYPE custom message") as info:
        client.execute("GET", "k")
    assert info.value.code == "WRONGTYPE"
    assert client.execute("PING") == "OK" and server.connections == 1
    client.close()


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


def test_a_silent_server_is_a_communication_error_after_the_timeout(scripted) -> None:
    server = scripted([b""])  # reads the command, answers nothing, keeps the connection
    client = Redis(server.url, timeout=0.3)
    with pytest.raises(CommunicationError):
        client.execute("GET", "k")
    client.close()
