"""Metadata in Redis: the backend registry, object locations, aliases and class metadata.

Key layout (``ns`` is the configured namespace, ``sa`` by default)::

    ns:backends            SET   ids of every registered backend
    ns:backend:<bid>       HASH  id name host port compss_name pid storage_dir state started
    ns:alive:<bid>         STR   heartbeat; expires after heartbeat_ttl (alive = the key exists)
    ns:obj:<oid>           HASH  class backend alias
    ns:objs:<bid>          SET   ids of the objects a backend owns
    ns:alias:<alias>       STR   the id registered under an alias
    ns:class:<path>        STR   JSON class metadata (methods, signatures, docs) for stubs

Backends own the entries of their objects: they write them after the object is on their disk, and
write them again when they start (so Redis itself may be volatile). Clients only read.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import Any

from ._redis import Redis, RedisReplyError
from .errors import AliasExists, ObjectNotFound

# Delete an alias only if it still names the object being deleted.
_DEL_IF = "if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('del', KEYS[1]) end return 0"
# Claim an alias for an object: free, or already ours.
_CLAIM = (
    "local v = redis.call('get', KEYS[1]) "
    "if v == false or v == ARGV[1] then redis.call('set', KEYS[1], ARGV[1]) return 1 end return 0"
)


@dataclass(frozen=True)
class BackendInfo:
    """A backend as registered in Redis."""

    id: str
    name: str
    host: str
    port: int
    compss_name: str
    pid: int
    alive: bool
    storage_dir: str = ""
    objects: int = 0
    unix: str = ""  # abstract Unix socket name (without the leading NUL), for same-host clients

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"


@dataclass(frozen=True)
class ObjectRecord:
    id: str
    class_path: str
    backend: str
    alias: str | None


class Metadata:
    def __init__(self, redis: Redis, namespace: str = "sa") -> None:
        self.redis = redis
        self.ns = namespace

    def key(self, *parts: str) -> str:
        return ":".join((self.ns, *parts))

    # -------------------------------------------------------------- backends
    def register_backend(self, info: dict[str, Any], ttl: float) -> None:
        bid = info["id"]
        self.redis.pipeline(
            [
                ("SADD", self.key("backends"), bid),
                ("HSET", self.key("backend", bid), *[x for kv in info.items() for x in (kv[0], str(kv[1]))]),
                ("SET", self.key("alive", bid), str(info.get("pid", "")), "PX", int(ttl * 1000)),
            ],
            transaction=True,
        )

    def heartbeat(self, bid: str, pid: int, ttl: float) -> None:
        self.redis.execute("SET", self.key("alive", bid), str(pid), "PX", int(ttl * 1000))

    def mark_down(self, bid: str) -> None:
        self.redis.pipeline(
            [("DEL", self.key("alive", bid)), ("HSET", self.key("backend", bid), "state", "down", "stopped", str(time.time()))],
            transaction=True,
        )

    def backends(self) -> list[BackendInfo]:
        ids = sorted(self.redis.execute("SMEMBERS", self.key("backends")) or [])
        if not ids:
            return []
        cmds: list[tuple] = []
        for bid in ids:
            cmds += [("HGETALL", self.key("backend", bid)), ("EXISTS", self.key("alive", bid)), ("SCARD", self.key("objs", bid))]
        replies = self.redis.pipeline(cmds)
        out = []
        for i, bid in enumerate(ids):
            raw, alive, count = replies[3 * i : 3 * i + 3]
            if not raw:
                continue
            h = dict(zip(raw[::2], raw[1::2]))
            out.append(
                BackendInfo(
                    id=bid,
                    name=h.get("name", bid),
                    host=h.get("host", ""),
                    port=int(h.get("port", 0)),
                    compss_name=h.get("compss_name", ""),
                    pid=int(h.get("pid", 0) or 0),
                    alive=bool(alive),
                    storage_dir=h.get("storage_dir", ""),
                    objects=int(count or 0),
                    unix=h.get("unix", ""),
                )
            )
        return out

    def backend(self, bid: str) -> BackendInfo | None:
        for b in self.backends():
            if b.id == bid:
                return b
        return None

    # --------------------------------------------------------------- objects
    def claim_alias(self, alias: str, oid: str) -> None:
        ok = self.redis.execute("EVAL", _CLAIM, 1, self.key("alias", alias), oid)
        if not ok:
            raise AliasExists(f"alias {alias!r} is already taken")

    def release_alias(self, alias: str, oid: str) -> None:
        self.redis.execute("EVAL", _DEL_IF, 1, self.key("alias", alias), oid)

    def register_objects(self, bid: str, records: list[tuple[str, str, str | None]]) -> list[str]:
        """Register ``(oid, class_path, alias)`` entries owned by ``bid``; return alias conflicts."""
        conflicts: list[str] = []
        for start in range(0, len(records), 500):
            batch = records[start : start + 500]
            cmds: list[tuple] = []
            for oid, path, alias in batch:
                fields = ["class", path, "backend", bid, "alias", alias or ""]
                cmds.append(("HSET", self.key("obj", oid), *fields))
                cmds.append(("SADD", self.key("objs", bid), oid))
                if alias:
                    cmds.append(("EVAL", _CLAIM, 1, self.key("alias", alias), oid))
            for cmd, reply in zip(cmds, self.redis.pipeline(cmds)):
                if isinstance(reply, RedisReplyError):
                    raise reply
                if cmd[0] == "EVAL" and not reply:
                    conflicts.append(cmd[3].split(":", 2)[2])
        return conflicts

    def unregister_object(self, bid: str, oid: str, alias: str | None) -> None:
        cmds: list[tuple] = [("DEL", self.key("obj", oid)), ("SREM", self.key("objs", bid), oid)]
        if alias:
            cmds.append(("EVAL", _DEL_IF, 1, self.key("alias", alias), oid))
        self.redis.pipeline(cmds)

    def object(self, oid: str) -> ObjectRecord:
        raw = self.redis.execute("HGETALL", self.key("obj", oid))
        if not raw:
            raise ObjectNotFound(f"no object with id {oid}")
        h = dict(zip(raw[::2], raw[1::2]))
        return ObjectRecord(oid, h["class"], h["backend"], h.get("alias") or None)

    def alias(self, alias: str) -> str:
        oid = self.redis.execute("GET", self.key("alias", alias))
        if oid is None:
            raise ObjectNotFound(f"no object with alias {alias!r}")
        return oid

    def owned_objects(self, bid: str) -> set[str]:
        return set(self.redis.execute("SMEMBERS", self.key("objs", bid)) or [])

    # --------------------------------------------------------------- classes
    def publish_class(self, meta: dict[str, Any]) -> None:
        self.redis.execute("SET", self.key("class", meta["class"]), json.dumps(meta, sort_keys=True))

    def class_meta(self, path: str) -> dict[str, Any] | None:
        raw = self.redis.execute("GET", self.key("class", path))
        return json.loads(raw) if raw else None
