"""Metadata in Redis: the backend registry, object locations, aliases and class metadata.

Key layout (``ns`` is the configured namespace, ``sa`` by default)::

    ns:backends            SET   ids of every registered backend
    ns:backend:<bid>       HASH  id name host port compss_name pid storage_dir unix health state started stopped
    ns:alive:<bid>         STR   heartbeat; expires after heartbeat_ttl (alive = the key exists)
    ns:obj:<oid>           HASH  class backend alias replicas epoch (deleted: a tombstone, kept 7 days)
    ns:objs:<bid>          SET   ids of the objects a backend owns (is the primary of)
    ns:reps:<bid>          SET   ids of the objects a backend holds a replica of
    ns:alias:<alias>       STR   the id registered under an alias
    ns:rebuilding          STR   set while a backend re-registers into a Redis that lost its data
    ns:class:<path>        STR   JSON class metadata (methods, signatures, docs) for stubs
    ns:tls:ca              STR   the deployment CA certificate (PEM), for clients that hold the secret
    ns:cred:<name>         HASH  generation issued: a client credential (its key is derived from the
                                 secret and name/generation; deleting the entry revokes it)
    ns:ctl:<bid>, ns:ctl:any  LIST  JSON control requests for backends (COMPSs' Java side, storage_stop.sh)
    ns:ctl:reply:<uuid>    LIST  the reply to one control request (expires after 60 s)
    ns:prev:<oid>          STR   the previous version of a COMPSs new version (expires after 7 days)
    ns:compss:expect:<n>   STR   how many backends the node helper of COMPSs node <n> starts

This class is the only Python code that knows these keys; the COMPSs jar, which cannot import it,
reads the object records and writes control requests (``storage_api/_compss/java/main/storageapi/
Store.java``) with the same layout.

Backends own the entries of their objects: they write them after the object is on their disk, and
write them again when they start or notice that Redis lost them (so Redis itself may be volatile:
it is an index the backends rebuild). A missing record therefore never means that another backend
took an object over; a record naming another primary, or a tombstone left by a delete, does. ``backend`` is the primary;
``replicas`` lists, comma-separated, the backends holding a copy that has every acknowledged write
(a primary drops a replica from the list before acknowledging a write the replica missed).
``epoch`` grows with every change of primary (move, failover). Changes of placement are Lua
scripts, so each is atomic. Clients read, and write only to promote a replica of a dead primary.
"""

from __future__ import annotations

import json
import re
import time
import uuid
from dataclasses import dataclass
from typing import Any

from ._redis import Redis, RedisReplyError
from .errors import AliasExists, MetadataRebuilding, ObjectNotFound

CONTROL_REPLY_TTL_MS = 60_000  # a control reply nobody collected expires
VERSION_LINK_TTL_S = 7 * 24 * 3600  # version links outlive any COMPSs run
TOMBSTONE_MS = 7 * 24 * 3600 * 1000  # how long a deleted object's record says so


def natural_key(name: str) -> list[Any]:
    """Sort key that orders the numbers in names by value: b2 before b10."""
    return [(0, int(part), "") if part.isdigit() else (1, 0, part) for part in re.split(r"(\d+)", name) if part]


# Delete an alias only if it still names the object being deleted.
_DEL_IF = "if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('del', KEYS[1]) end return 0"
# Claim an alias for an object: free, or already ours.
_CLAIM = (
    "local v = redis.call('get', KEYS[1]) "
    "if v == false or v == ARGV[1] then redis.call('set', KEYS[1], ARGV[1]) return 1 end return 0"
)

# Placement scripts. KEYS[1] is the object's hash; ARGV[1] the namespace, used to build the other
# keys (one Redis, not a cluster). Replica lists are comma-separated backend ids.
_LUA_LIB = """
local function split(s) local t = {} for x in string.gmatch(s or '', '[^,]+') do t[#t+1] = x end return t end
local function without(t, v) local r = {} for _, x in ipairs(t) do if x ~= v then r[#r+1] = x end end return r end
local function has(t, v) for _, x in ipairs(t) do if x == v then return true end end return false end
"""
# A backend (re)registering an object it holds: ARGV ns, bid, class, alias, its local role, and (for a
# primary) its in-sync replicas, comma-separated. Returns 'primary', 'replica', 'orphan' (a replica
# of an object Redis does not know: the primary has not re-registered it yet) or 'stale' (another
# backend is primary and does not list us, or the object was deleted: a tombstone). ARGV[7] 'new':
# the object was just made persistent under this id, which a tombstone does not forbid (re-use of
# a deleted object's id); an old copy elsewhere then finds a record naming another primary.
_REGISTER = _LUA_LIB + """
local ns, bid = ARGV[1], ARGV[2]
local cur = redis.call('hget', KEYS[1], 'backend')
if cur == '' and ARGV[7] == 'new' then redis.call('del', KEYS[1]) cur = false end
if not cur then
  if ARGV[5] == 'replica' then return 'orphan' end
  redis.call('hset', KEYS[1], 'class', ARGV[3], 'backend', bid, 'alias', ARGV[4], 'replicas', ARGV[6], 'epoch', '0')
  redis.call('sadd', ns .. ':objs:' .. bid, KEYS[2])
  for _, r in ipairs(split(ARGV[6])) do redis.call('sadd', ns .. ':reps:' .. r, KEYS[2]) end
  return 'primary'
end
if cur == '' then return 'stale' end
if cur == bid then redis.call('sadd', ns .. ':objs:' .. bid, KEYS[2]) return 'primary' end
if has(split(redis.call('hget', KEYS[1], 'replicas')), bid) then
  redis.call('sadd', ns .. ':reps:' .. bid, KEYS[2]) return 'replica'
end
return 'stale'
"""
# Move the primary: ARGV ns, oid, from, to. Returns the new epoch, or -1 if `from` is not primary.
_MOVE = _LUA_LIB + """
local ns, oid, src, dst = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
if redis.call('hget', KEYS[1], 'backend') ~= src then return -1 end
local reps = without(split(redis.call('hget', KEYS[1], 'replicas')), dst)
redis.call('hset', KEYS[1], 'backend', dst, 'replicas', table.concat(reps, ','))
redis.call('srem', ns .. ':objs:' .. src, oid)
redis.call('sadd', ns .. ':objs:' .. dst, oid)
redis.call('srem', ns .. ':reps:' .. dst, oid)
return redis.call('hincrby', KEYS[1], 'epoch', 1)
"""
# Add a replica: ARGV ns, oid, primary, replica. 1 if added, 0 if `primary` no longer is.
_ADD_REPLICA = _LUA_LIB + """
local ns, oid, p, r = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
if redis.call('hget', KEYS[1], 'backend') ~= p then return 0 end
local reps = split(redis.call('hget', KEYS[1], 'replicas'))
if not has(reps, r) then reps[#reps+1] = r end
redis.call('hset', KEYS[1], 'replicas', table.concat(reps, ','))
redis.call('sadd', ns .. ':reps:' .. r, oid)
return 1
"""
# Drop a replica: ARGV ns, oid, replica.
_DROP_REPLICA = _LUA_LIB + """
local ns, oid, r = ARGV[1], ARGV[2], ARGV[3]
if redis.call('exists', KEYS[1]) == 0 then return 0 end
local reps = split(redis.call('hget', KEYS[1], 'replicas'))
redis.call('hset', KEYS[1], 'replicas', table.concat(without(reps, r), ','))
redis.call('srem', ns .. ':reps:' .. r, oid)
return 1
"""
# Fail over: ARGV ns, oid, dead primary. Promotes the first live replica if the primary's
# heartbeat is gone. Returns the primary after the call ('' if the object is gone), or
# 'alive:<ms>' while the primary's heartbeat key lives (ms: its remaining time to live, -1 if it
# has none), or 'none' when no replica is alive.
_PROMOTE = _LUA_LIB + """
local ns, oid, old = ARGV[1], ARGV[2], ARGV[3]
local cur = redis.call('hget', KEYS[1], 'backend')
if not cur then return '' end
if cur ~= old then return cur end
local ttl = redis.call('pttl', ns .. ':alive:' .. old)
if ttl ~= -2 then return 'alive:' .. ttl end
local reps = split(redis.call('hget', KEYS[1], 'replicas'))
for _, r in ipairs(reps) do
  if redis.call('exists', ns .. ':alive:' .. r) == 1 then
    redis.call('hset', KEYS[1], 'backend', r, 'replicas', table.concat(without(reps, r), ','))
    redis.call('hincrby', KEYS[1], 'epoch', 1)
    redis.call('srem', ns .. ':objs:' .. old, oid)
    redis.call('sadd', ns .. ':objs:' .. r, oid)
    redis.call('srem', ns .. ':reps:' .. r, oid)
    return r
  end
end
return 'none'
"""


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
    objects: int = 0  # objects it is the primary of
    replicas: int = 0  # objects it holds a replica of
    unix: str = ""  # abstract Unix socket name (without the leading NUL), for same-host clients
    health: str = ""  # why it takes no new connections now ("" when it does)
    stopped: bool = False  # it stopped gracefully and deregistered (it is not alive, but did not fail)
    threads: int = 0  # intra-op threads (torch, BLAS, OpenMP) its methods use; 0: not reported
    slice_us: float = 0.0  # the CPU slice the kernel granted it (cpu_slice_us); 0: the kernel's default

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"


@dataclass(frozen=True)
class ObjectRecord:
    id: str
    class_path: str
    backend: str  # the primary
    alias: str | None
    replicas: tuple[str, ...] = ()
    epoch: int = 0


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

    def heartbeat(self, bid: str, pid: int, ttl: float) -> tuple[bool, str]:
        """Renew ``bid``'s heartbeat; return whether Redis still holds its registration, and the
        Redis server's run id (it changes when the server restarts, maybe without its latest data)."""
        _ok, registered, info = self.redis.pipeline([
            ("SET", self.key("alive", bid), str(pid), "PX", int(ttl * 1000)),
            ("SISMEMBER", self.key("backends"), bid),
            ("INFO", "server"),
        ])
        run_id = ""
        for line in info.splitlines() if isinstance(info, str) else ():
            if line.startswith("run_id:"):
                run_id = line[7:].strip()
        return registered == 1, run_id

    def mark_rebuilding(self, bid: str, ttl: float) -> None:
        """Tell clients, for ``ttl`` seconds, that a missing record may be one being re-registered."""
        self.redis.execute("SET", self.key("rebuilding"), bid, "PX", int(ttl * 1000))

    def rebuilding(self) -> bool:
        """Whether Redis may be missing records that backends are about to re-register: a backend
        is re-registering, or no backend is registered at all (an empty or replaced Redis)."""
        marked, registered = self.redis.pipeline([("EXISTS", self.key("rebuilding")),
                                                  ("SCARD", self.key("backends"))])
        return marked == 1 or registered == 0

    # ----------------------------------------------------------- credentials
    def issue_credential(self, name: str, generation: str) -> None:
        self.redis.execute("HSET", self.key("cred", name), "generation", generation, "issued", str(time.time()))

    def revoke_credential(self, name: str) -> bool:
        return bool(self.redis.execute("DEL", self.key("cred", name)))

    def credential(self, name: str) -> str | None:
        """The current generation of credential ``name`` (None: revoked or never issued)."""
        return self.redis.execute("HGET", self.key("cred", name), "generation")

    def credentials(self) -> dict[str, float]:
        """Every valid credential's name and when it was issued."""
        names: list[str] = []
        cursor = "0"
        while True:
            cursor, batch = self.redis.execute("SCAN", cursor, "MATCH", self.key("cred", "*"), "COUNT", 1000)
            names += [k.split(":", 2)[2] for k in batch]
            if cursor == "0":
                break
        issued = self.redis.pipeline([("HGET", self.key("cred", n), "issued") for n in names]) if names else []
        return {n: float(t or 0) for n, t in zip(names, issued)}

    def publish_tls_ca(self, pem: str) -> None:
        self.redis.execute("SET", self.key("tls", "ca"), pem)

    def tls_ca(self) -> str | None:
        return self.redis.execute("GET", self.key("tls", "ca"))

    def set_health(self, bid: str, problem: str) -> None:
        """Why a live backend takes no new connections ("" when it does)."""
        self.redis.execute("HSET", self.key("backend", bid), "health", problem)

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
            cmds += [("HGETALL", self.key("backend", bid)), ("EXISTS", self.key("alive", bid)),
                     ("SCARD", self.key("objs", bid)), ("SCARD", self.key("reps", bid))]
        replies = self.redis.pipeline(cmds)
        out = []
        for i, bid in enumerate(ids):
            raw, alive, count, reps = replies[4 * i : 4 * i + 4]
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
                    replicas=int(reps or 0),
                    unix=h.get("unix", ""),
                    health=h.get("health", ""),
                    stopped=not alive and h.get("state") == "down",
                    threads=int(h.get("threads", 0) or 0),
                    slice_us=float(h.get("slice_us", 0) or 0),
                )
            )
        out.sort(key=lambda b: natural_key(b.name))
        return out

    # --------------------------------------------------------------- objects
    def claim_alias(self, alias: str, oid: str) -> None:
        ok = self.redis.execute("EVAL", _CLAIM, 1, self.key("alias", alias), oid)
        if not ok:
            raise AliasExists(f"alias {alias!r} is already taken")

    def release_alias(self, alias: str, oid: str) -> None:
        self.redis.execute("EVAL", _DEL_IF, 1, self.key("alias", alias), oid)

    def register_objects(self, bid: str, records: list[tuple[str, str, str | None]],
                         roles: dict[str, str] | None = None, replicas: dict[str, list[str]] | None = None,
                         rebuilding: float = 0.0, new: bool = False) -> tuple[list[str], dict[str, str]]:
        """Register ``(oid, class_path, alias)`` entries held by ``bid`` (as primary unless ``roles``
        says otherwise; a primary's in-sync replicas in ``replicas``).

        Returns the alias conflicts and each object's verdict (see ``_REGISTER``): ``primary``,
        ``replica``, ``orphan`` or ``stale``. With ``rebuilding`` (seconds), each batch also renews
        the marker that tells clients the index is being rebuilt. ``new``: objects just made
        persistent, which may take a deleted object's id.
        """
        conflicts: list[str] = []
        verdicts: dict[str, str] = {}
        for start in range(0, len(records), 500):
            batch = records[start : start + 500]
            cmds: list[tuple] = []
            if rebuilding:
                cmds.append(("SET", self.key("rebuilding"), bid, "PX", int(rebuilding * 1000)))
            for oid, path, alias in batch:
                role = (roles or {}).get(oid, "primary")
                reps = ",".join((replicas or {}).get(oid, ())) if role == "primary" else ""
                cmds.append(("EVAL", _REGISTER, 2, self.key("obj", oid), oid, self.ns, bid, path, alias or "", role,
                             reps, "new" if new else ""))
                if alias:
                    cmds.append(("EVAL", _CLAIM, 1, self.key("alias", alias), oid))
            for cmd, reply in zip(cmds, self.redis.pipeline(cmds)):
                if isinstance(reply, RedisReplyError):
                    raise reply
                if cmd[0] != "EVAL":
                    continue
                if cmd[1] is _CLAIM:
                    if not reply:
                        conflicts.append(cmd[3].split(":", 2)[2])
                else:
                    verdicts[cmd[4]] = reply
        return conflicts, verdicts

    def unregister_object(self, bid: str, oid: str, alias: str | None, replicas: tuple[str, ...] = ()) -> None:
        """Record a deletion. The record becomes a tombstone for a while, so that a backend still
        holding an old copy (a primary frozen past a failover, a replica that missed the drop
        notice) learns the object is gone, rather than taking the missing record for a loss of
        Redis' data and registering the copy again."""
        key = self.key("obj", oid)
        cmds: list[tuple] = [("HSET", key, "backend", "", "replicas", "", "deleted", "1"),
                             ("PEXPIRE", key, TOMBSTONE_MS), ("SREM", self.key("objs", bid), oid)]
        cmds += [("SREM", self.key("reps", r), oid) for r in replicas]
        if alias:
            cmds.append(("EVAL", _DEL_IF, 1, self.key("alias", alias), oid))
        self.redis.pipeline(cmds)

    def object(self, oid: str) -> ObjectRecord:
        """The object's record: :class:`ObjectNotFound` if there is none or it was deleted, and
        :class:`MetadataRebuilding` if there is none while the backends re-register their objects
        (it may be one of them)."""
        rec = self.lookup(oid)
        if rec is None and self.rebuilding():
            raise MetadataRebuilding(f"object {oid} is not in Redis, whose data the backends are rebuilding")
        if rec is None or not rec.backend:
            raise ObjectNotFound(f"no object with id {oid}")
        return rec

    def lookup(self, oid: str) -> ObjectRecord | None:
        """The object's record; None if Redis has none, one with ``backend == ""`` if it was deleted."""
        raw = self.redis.execute("HGETALL", self.key("obj", oid))
        if not raw:
            return None
        return _object_record(oid, raw)

    def objects(self) -> list[ObjectRecord]:
        """Every object record (a SCAN: for status displays, not for hot paths)."""
        keys: list[str] = []
        cursor = "0"
        while True:
            cursor, batch = self.redis.execute("SCAN", cursor, "MATCH", self.key("obj", "*"), "COUNT", 1000)
            keys += batch
            if cursor == "0":
                break
        out = []
        for start in range(0, len(keys), 500):
            chunk = keys[start : start + 500]
            for key, raw in zip(chunk, self.redis.pipeline([("HGETALL", k) for k in chunk])):
                if raw and not isinstance(raw, RedisReplyError):
                    rec = _object_record(key.rsplit(":", 1)[1], raw)
                    if rec.backend:  # not a tombstone
                        out.append(rec)
        return out

    # ------------------------------------------------------------ placement
    def _eval(self, script: str, oid: str, *args: str) -> Any:
        return self.redis.execute("EVAL", script, 1, self.key("obj", oid), self.ns, oid, *args)

    def move_primary(self, oid: str, src: str, dst: str) -> int:
        """Make ``dst`` the primary if ``src`` still is; the new epoch, or -1."""
        return int(self._eval(_MOVE, oid, src, dst))

    def add_replica(self, oid: str, primary: str, replica: str) -> bool:
        return bool(self._eval(_ADD_REPLICA, oid, primary, replica))

    def drop_replica(self, oid: str, replica: str) -> None:
        self._eval(_DROP_REPLICA, oid, replica)

    def promote(self, oid: str, dead: str) -> str:
        """Fail over from ``dead`` (see ``_PROMOTE`` for the answers)."""
        return self._eval(_PROMOTE, oid, dead)

    def alias(self, alias: str) -> str:
        oid = self.redis.execute("GET", self.key("alias", alias))
        if oid is None and self.rebuilding():
            raise MetadataRebuilding(f"alias {alias!r} is not in Redis, whose data the backends are rebuilding")
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

    # ------------------------------------------------ control queue (see _backend/_control)
    def request_control(self, bid: str, op: str, args: dict[str, Any] | None = None) -> str:
        """Queue a control request for backend ``bid`` (``"any"``: any backend); return the key its
        reply will be pushed to (see :meth:`control_reply`)."""
        reply = self.key("ctl", "reply", str(uuid.uuid4()))
        request = {"op": op, "reply": reply, **({"args": args} if args else {})}
        self.redis.execute("RPUSH", self.key("ctl", bid), json.dumps(request))
        return reply

    def control_reply(self, reply: str, timeout: float) -> str | None:
        """The reply to a control request (JSON), waiting up to ``timeout`` seconds; None if none came.
        The Redis connection's timeout must exceed ``timeout``."""
        popped = self.redis.execute("BLPOP", reply, timeout)
        return None if popped is None else popped[1]

    def next_control(self, bid: str, timeout: float) -> str | None:
        """The next control request for backend ``bid`` (its own queue, then ``any``), waiting up to
        ``timeout`` seconds; None if none came. The Redis connection's timeout must exceed it."""
        popped = self.redis.execute("BLPOP", self.key("ctl", bid), self.key("ctl", "any"), timeout)
        return None if popped is None else popped[1]

    def reply_control(self, reply: str, answer: str) -> None:
        """Push the answer to a control request to the key the request named (it expires unread)."""
        self.redis.pipeline([("RPUSH", reply, answer), ("PEXPIRE", reply, CONTROL_REPLY_TTL_MS)])

    def link_version(self, new_id: str, old_id: str) -> None:
        """Remember that ``new_id`` is a new version of ``old_id`` (for a later consolidation)."""
        self.redis.execute("SET", self.key("prev", new_id), old_id, "EX", VERSION_LINK_TTL_S)

    def pop_version_link(self, oid: str) -> str | None:
        """The version ``oid`` was made from, forgetting the link; None if there is none."""
        prev = self.redis.execute("GET", self.key("prev", oid))
        if prev is not None:
            self.redis.execute("DEL", self.key("prev", oid))
        return prev

    # ------------------------------------------------ COMPSs deployments (see _compss)
    def expect_backends(self, compss_name: str, count: int) -> None:
        """Record how many backends the node helper of COMPSs node ``compss_name`` starts."""
        self.redis.execute("SET", self.key("compss", "expect", compss_name), count)

    def expected_backends(self, compss_name: str) -> int | None:
        count = self.redis.execute("GET", self.key("compss", "expect", compss_name))
        return None if count is None else int(count)


def _object_record(oid: str, raw: list[str]) -> ObjectRecord:
    """An object's record from its hash (HGETALL's flat list)."""
    h = dict(zip(raw[::2], raw[1::2]))
    return ObjectRecord(oid, h.get("class", ""), h.get("backend", ""), h.get("alias") or None,
                        tuple(x for x in h.get("replicas", "").split(",") if x), int(h.get("epoch") or 0))
