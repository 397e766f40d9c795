"""A small, thread-safe Redis client speaking RESP2 over a pool of sockets.

We talk to a real Redis server, but not through redis-py: importing redis-py costs about 70 ms and
17 MB of resident memory, more than the whole thin client is allowed. The metadata layer needs a
handful of commands, pipelines and ``MULTI``/``EXEC``; this module provides exactly that.

URLs: ``redis://[[user]:password@]host[:port][/db]`` and ``unix:///path/to.sock[?db=N]``.
"""

from __future__ import annotations

import select
import socket
import threading
from collections.abc import Iterable, Sequence
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

from .errors import CommunicationError, ConfigError, StoreError


class RedisReplyError(StoreError):
    """Redis answered a command with an error reply."""

    @property
    def code(self) -> str:
        """The reply's error code, its first word (``ERR``, ``LOADING``, ``NOAUTH``, ...)."""
        return str(self.args[0]).split(" ", 1)[0] if self.args else ""


Command = Sequence[Any]

MAX_BULK = 512 << 20  # Redis' own limit on one string (its default proto-max-bulk-len)
_CHUNK = 1 << 20


class RedisLoading(CommunicationError):
    """Redis answered ``LOADING``: it is loading its data set (after a restart). Transient, like an
    outage: callers that retry communication errors wait it out."""


def _check_loading(replies: list[Any], address: str) -> list[Any]:
    for reply in replies:
        if isinstance(reply, RedisReplyError) and reply.code == "LOADING":
            raise RedisLoading(f"Redis at {address} is loading its data set")
    return replies


def _encode(args: Command) -> bytes:
    out = [b"*%d\r\n" % len(args)]
    for a in args:
        if isinstance(a, bytes):
            b = a
        elif isinstance(a, str):
            b = a.encode()
        elif isinstance(a, (int, float)):
            b = repr(a).encode()
        else:
            raise TypeError(f"cannot send {type(a).__name__} to Redis")
        out.append(b"$%d\r\n%s\r\n" % (len(b), b))
    return b"".join(out)


class _Conn:
    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.file = sock.makefile("rb")

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def read(self) -> Any:
        line = self.file.readline()
        if not line.endswith(b"\r\n"):
            raise ConnectionError("connection closed by Redis")
        prefix, rest = line[:1], line[1:-2]
        if prefix == b"+":
            return rest.decode()
        if prefix == b"-":
            return RedisReplyError(rest.decode())
        if prefix == b":":
            return int(rest)
        if prefix == b"$":
            n = int(rest)
            if n < 0:
                return None
            if n > MAX_BULK:
                raise ConnectionError(f"Redis announced a string of {n} bytes, more than Redis allows")
            data = self._exact(n + 2)
            if data[-2:] != b"\r\n":
                raise ConnectionError("Redis reply out of step: a string without its CRLF")
            return data[:-2].decode()
        if prefix == b"*":
            n = int(rest)
            if n < 0:
                return None
            return [self.read() for _ in range(n)]
        raise ConnectionError(f"unexpected Redis reply {line[:40]!r}")

    def _exact(self, n: int) -> bytes:
        # In bounded pieces: memory grows with what arrives, not with what a length announces.
        parts = []
        while n:
            chunk = self.file.read(min(n, _CHUNK))
            if not chunk:
                raise ConnectionError("connection closed by Redis")
            parts.append(chunk)
            n -= len(chunk)
        return b"".join(parts)

    def stale(self) -> bool:
        """Whether this idle connection has something to read: Redis closed it (its ``timeout``
        setting, ``CLIENT KILL``, a restart) or it is out of step. Either way it must not be used."""
        poller = select.poll()  # not recv(MSG_DONTWAIT): on a socket with a timeout, that waits
        poller.register(self.sock, select.POLLIN)
        return bool(poller.poll(0))

    def close(self) -> None:
        try:
            self.file.close()
            self.sock.close()
        except OSError:
            pass


class Redis:
    """A pooled RESP2 client. Methods raise :class:`CommunicationError` when Redis is unreachable."""

    def __init__(self, url: str, *, timeout: float = 5.0, pool_size: int = 8) -> None:
        self.url = url
        self._timeout = timeout
        self._pool: list[_Conn] = []
        self._pool_size = pool_size
        self._lock = threading.Lock()
        parts = urlsplit(url)
        self._unix: str | None = None
        db = 0
        if parts.scheme == "redis":
            if not parts.hostname:
                raise ConfigError(f"Redis URL {url!r} names no host")
            self._addr = (parts.hostname, parts.port or 6379)
            if parts.path.strip("/"):
                try:
                    db = int(parts.path.strip("/"))
                except ValueError:
                    raise ConfigError(f"Redis URL {url!r}: database must be a number") from None
        elif parts.scheme == "unix":
            if not parts.path:
                raise ConfigError(f"Redis URL {url!r} names no socket path")
            self._unix = parts.path
            try:
                db = int(parse_qs(parts.query).get("db", ["0"])[0])
            except ValueError:
                raise ConfigError(f"Redis URL {url!r}: database must be a number") from None
        else:
            raise ConfigError(f"unsupported Redis URL {url!r} (use redis://host:port/db or unix:///path)")
        self._user = unquote(parts.username) if parts.username else None
        self._password = unquote(parts.password) if parts.password else None
        self._db = db

    @property
    def address(self) -> str:
        return self._unix or f"{self._addr[0]}:{self._addr[1]}"

    def _connect(self) -> _Conn:
        try:
            if self._unix:
                sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                sock.settimeout(self._timeout)
                sock.connect(self._unix)
            else:
                sock = socket.create_connection(self._addr, timeout=self._timeout)
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except OSError as exc:
            raise CommunicationError(f"cannot reach Redis at {self.address}: {exc}") from exc
        conn = _Conn(sock)
        setup: list[Command] = []
        if self._password is not None:
            setup.append(("AUTH", self._user, self._password) if self._user else ("AUTH", self._password))
        if self._db:
            setup.append(("SELECT", self._db))
        if setup:
            try:
                replies = _check_loading(self._roundtrip(conn, setup), self.address)
            except (OSError, ValueError, CommunicationError) as exc:
                conn.close()
                raise exc if isinstance(exc, CommunicationError) else CommunicationError(
                    f"lost connection to Redis at {self.address}: {exc}") from exc
            for reply in replies:
                if isinstance(reply, RedisReplyError):
                    conn.close()
                    raise ConfigError(f"Redis at {self.address} refused the connection setup: {reply}")
        return conn

    def _roundtrip(self, conn: _Conn, commands: Sequence[Command]) -> list[Any]:
        conn.send(b"".join(_encode(c) for c in commands))
        return [conn.read() for _ in commands]

    def _pooled(self) -> _Conn:
        """An idle pooled connection that is still good, else a new one."""
        while True:
            with self._lock:
                conn = self._pool.pop() if self._pool else None
            if conn is None:
                return self._connect()
            if not conn.stale():
                return conn
            conn.close()

    def _run(self, commands: Sequence[Command]) -> list[Any]:
        conn = self._pooled()
        try:
            replies = self._roundtrip(conn, commands)
        except (OSError, ValueError) as exc:
            conn.close()
            raise CommunicationError(f"lost connection to Redis at {self.address}: {exc}") from exc
        with self._lock:
            if len(self._pool) < self._pool_size:
                self._pool.append(conn)
                conn = None
        if conn is not None:
            conn.close()
        return _check_loading(replies, self.address)

    def execute(self, *args: Any) -> Any:
        """Run one command and return its reply (errors raise :class:`RedisReplyError`)."""
        (reply,) = self._run([args])
        if isinstance(reply, RedisReplyError):
            raise reply
        return reply

    def pipeline(self, commands: Iterable[Command], *, transaction: bool = False) -> list[Any]:
        """Run commands in one round trip; with ``transaction`` inside ``MULTI``/``EXEC``.

        Returns the replies; an error reply is returned in place (not raised) so callers can
        tell which command failed.
        """
        cmds = list(commands)
        if not cmds:
            return []
        if not transaction:
            return self._run(cmds)
        replies = self._run([("MULTI",), *cmds, ("EXEC",)])
        result = replies[-1]
        if isinstance(result, RedisReplyError):
            raise result
        if result is None:
            raise RedisReplyError("transaction aborted")
        return result

    def close(self) -> None:
        with self._lock:
            pool, self._pool = self._pool, []
        for conn in pool:
            conn.close()
