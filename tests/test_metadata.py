"""The metadata layer's contracts against a real Redis (storage_api._metadata): the placement Lua
scripts (register, move, add/drop replica, promote), aliases, the backend registry."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterator

import pytest

from storage_api._metadata import Metadata, ObjectRecord
from storage_api._redis import Redis
from storage_api.errors import AliasExists, MetadataRebuilding, ObjectNotFound

CLASS = "tests.models.Counter"


@pytest.fixture
def meta(redis_url: str) -> Iterator[Metadata]:
    """Metadata in a namespace of its own, so tests share the Redis but no keys."""
    m = Metadata(Redis(redis_url), namespace=f"t{uuid.uuid4().hex[:12]}")
    # one backend registered: with none, a missing record may be one the backends have yet to
    # register again (an emptied Redis), and look-ups answer MetadataRebuilding
    m.redis.execute("SADD", m.key("backends"), "b-registered")
    yield m
    keys = m.redis.execute("KEYS", m.key("*"))
    if keys:
        m.redis.execute("DEL", *keys)
    m.redis.close()


def _oid() -> str:
    return str(uuid.uuid4())


def _set(meta: Metadata, kind: str, bid: str) -> set[str]:
    """The ids in a backend's ``objs`` (primary of) or ``reps`` (replica of) set."""
    return set(meta.redis.execute("SMEMBERS", meta.key(kind, bid)))


def _alive(meta: Metadata, *bids: str, ttl: float = 30.0) -> None:
    for bid in bids:
        meta.heartbeat(bid, 1, ttl)


def _placed(meta: Metadata, primary: str, replicas: tuple[str, ...] = (), alias: str | None = None) -> str:
    """An object registered by ``primary`` with ``replicas`` listed (through the scripts)."""
    oid = _oid()
    assert meta.register_objects(primary, [(oid, CLASS, alias)]) == ([], {oid: "primary"})
    for r in replicas:
        assert meta.add_replica(oid, primary, r)
    return oid


# ---------------------------------------------------------------------------------- register
def test_register_creates_the_record_and_is_idempotent_for_its_primary(meta: Metadata) -> None:
    oid = _oid()
    assert meta.register_objects("b0", [(oid, CLASS, "reg-alias")]) == ([], {oid: "primary"})
    assert meta.object(oid) == ObjectRecord(oid, CLASS, "b0", "reg-alias", (), 0)
    assert _set(meta, "objs", "b0") == {oid} and meta.alias("reg-alias") == oid
    # a restarted backend registers again: same answer, nothing changes
    assert meta.register_objects("b0", [(oid, CLASS, "reg-alias")]) == ([], {oid: "primary"})
    assert meta.object(oid) == ObjectRecord(oid, CLASS, "b0", "reg-alias", (), 0)


def test_register_tells_a_backend_its_copy_is_stale_or_a_replica(meta: Metadata) -> None:
    oid = _placed(meta, "b0", ("b1",))
    before = meta.object(oid)
    verdicts = {bid: meta.register_objects(bid, [(oid, CLASS, None)])[1][oid] for bid in ("b1", "b2")}
    assert verdicts == {"b1": "replica", "b2": "stale"}
    assert meta.object(oid) == before  # neither took it over
    assert _set(meta, "reps", "b1") == {oid} and _set(meta, "objs", "b2") == set()


def test_a_replica_of_a_deleted_object_does_not_bring_it_back(meta: Metadata) -> None:
    oid = _placed(meta, "b0", ("b1",))
    meta.unregister_object("b0", oid, None, ("b1",))
    assert meta.register_objects("b1", [(oid, CLASS, None)], {oid: "replica"}) == ([], {oid: "stale"})
    with pytest.raises(ObjectNotFound):
        meta.object(oid)


def test_register_reports_alias_conflicts_and_keeps_the_first_owner(meta: Metadata) -> None:
    first, second = _oid(), _oid()
    meta.register_objects("b0", [(first, CLASS, "contested")])
    conflicts, verdicts = meta.register_objects("b1", [(second, CLASS, "contested")])
    assert conflicts == ["contested"] and verdicts == {second: "primary"}
    assert meta.alias("contested") == first


def test_register_in_batches(meta: Metadata) -> None:
    records = [(_oid(), CLASS, f"batch-{i}" if i % 100 == 0 else None) for i in range(1201)]
    conflicts, verdicts = meta.register_objects("b0", records)
    assert conflicts == [] and set(verdicts.values()) == {"primary"} and len(verdicts) == 1201
    assert meta.owned_objects("b0") == {oid for oid, _, _ in records}
    assert meta.alias("batch-1200") == records[1200][0]
    assert len(meta.objects()) == 1201


# -------------------------------------------------------------------------------------- move
def test_move_changes_the_primary_and_bumps_the_epoch(meta: Metadata) -> None:
    oid = _placed(meta, "b0", ("b1", "b2"))
    assert meta.move_primary(oid, "b0", "b1") == 1
    assert meta.object(oid) == ObjectRecord(oid, CLASS, "b1", None, ("b2",), 1)  # no replica of itself
    assert _set(meta, "objs", "b0") == set() and _set(meta, "objs", "b1") == {oid}
    assert _set(meta, "reps", "b1") == set() and _set(meta, "reps", "b2") == {oid}
    assert meta.move_primary(oid, "b1", "b3") == 2
    assert meta.object(oid).backend == "b3" and meta.object(oid).replicas == ("b2",)


def test_move_from_a_backend_that_is_not_the_primary_changes_nothing(meta: Metadata) -> None:
    oid = _placed(meta, "b0", ("b1",))
    before = meta.object(oid)
    assert meta.move_primary(oid, "b1", "b2") == -1
    assert meta.move_primary(_oid(), "b0", "b2") == -1  # no such object
    assert meta.object(oid) == before and _set(meta, "objs", "b2") == set()


# ----------------------------------------------------------------------------------- replicas
def test_add_replica_by_the_primary_only_and_once(meta: Metadata) -> None:
    oid = _placed(meta, "b0")
    assert meta.add_replica(oid, "b0", "b1") and meta.add_replica(oid, "b0", "b2")
    assert meta.add_replica(oid, "b0", "b1")  # listed already: still once
    assert meta.object(oid).replicas == ("b1", "b2")
    assert not meta.add_replica(oid, "b1", "b3")  # b1 is no primary
    assert meta.object(oid).replicas == ("b1", "b2") and _set(meta, "reps", "b3") == set()
    assert _set(meta, "reps", "b1") == {oid} == _set(meta, "reps", "b2")


def test_drop_replica_keeps_the_others_in_order(meta: Metadata) -> None:
    oid = _placed(meta, "b0", ("b1", "b2", "b3"))
    meta.drop_replica(oid, "b2")
    assert meta.object(oid).replicas == ("b1", "b3") and _set(meta, "reps", "b2") == set()
    meta.drop_replica(oid, "b9")  # not listed: nothing changes
    assert meta.object(oid).replicas == ("b1", "b3")


def test_drop_replica_of_a_deleted_object_does_not_recreate_it(meta: Metadata) -> None:
    oid = _placed(meta, "b0", ("b1",))
    meta.unregister_object("b0", oid, None, ("b1",))
    meta.drop_replica(oid, "b1")
    rec = meta.lookup(oid)  # the deletion's tombstone, still without a backend or replicas
    assert rec is not None and rec.backend == "" and rec.replicas == ()
    with pytest.raises(ObjectNotFound):
        meta.object(oid)
    assert _set(meta, "reps", "b1") == set()


# ----------------------------------------------------------------------------------- promote
def test_promote_waits_while_the_primary_heartbeat_lives(meta: Metadata) -> None:
    oid = _placed(meta, "b0", ("b1",))
    _alive(meta, "b0", "b1", ttl=30)
    answer = meta.promote(oid, "b0")
    assert answer.startswith("alive:") and 0 < int(answer.split(":")[1]) <= 30_000
    meta.redis.execute("PERSIST", meta.key("alive", "b0"))
    assert meta.promote(oid, "b0") == "alive:-1"  # a heartbeat without expiry
    assert meta.object(oid).backend == "b0" and meta.object(oid).epoch == 0


def test_promote_makes_the_first_live_replica_primary(meta: Metadata) -> None:
    oid = _placed(meta, "b0", ("b1", "b2", "b3"))
    _alive(meta, "b2", "b3")  # b0 (the primary) and b1 are dead
    assert meta.promote(oid, "b0") == "b2"
    assert meta.object(oid) == ObjectRecord(oid, CLASS, "b2", None, ("b1", "b3"), 1)
    assert _set(meta, "objs", "b0") == set() and _set(meta, "objs", "b2") == {oid}
    assert _set(meta, "reps", "b2") == set() and _set(meta, "reps", "b3") == {oid}
    # whoever asks again about the dead b0 is told where the object went
    assert meta.promote(oid, "b0") == "b2" and meta.object(oid).epoch == 1


def test_promote_without_a_live_replica_changes_nothing(meta: Metadata) -> None:
    lonely = _placed(meta, "b0")
    with_dead_replica = _placed(meta, "b0", ("b1",))
    assert meta.promote(lonely, "b0") == "none"
    assert meta.promote(with_dead_replica, "b0") == "none"
    assert meta.object(with_dead_replica) == ObjectRecord(with_dead_replica, CLASS, "b0", None, ("b1",), 0)


def test_promote_of_a_deleted_object_answers_empty(meta: Metadata) -> None:
    assert meta.promote(_oid(), "b0") == ""


def test_concurrent_promotions_agree_and_promote_once(meta: Metadata, redis_url: str) -> None:
    oid = _placed(meta, "b0", ("b1", "b2"))
    _alive(meta, "b1", "b2")
    answers: list[str] = []
    start = threading.Barrier(8, timeout=10)

    def promote() -> None:
        mine = Metadata(Redis(redis_url), namespace=meta.ns)  # each its own connection, as clients
        start.wait()
        answers.append(mine.promote(oid, "b0"))
        mine.redis.close()

    threads = [threading.Thread(target=promote) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(15)
    assert answers == ["b1"] * 8
    assert meta.object(oid) == ObjectRecord(oid, CLASS, "b1", None, ("b2",), 1)


# ------------------------------------------------------------------------------------ aliases
def test_an_alias_belongs_to_one_object_until_its_owner_releases_it(meta: Metadata) -> None:
    a, b = _oid(), _oid()
    meta.claim_alias("name", a)
    meta.claim_alias("name", a)  # claiming it again is fine
    with pytest.raises(AliasExists):
        meta.claim_alias("name", b)
    meta.release_alias("name", b)  # not b's to release
    assert meta.alias("name") == a
    meta.release_alias("name", a)
    with pytest.raises(ObjectNotFound):
        meta.alias("name")
    meta.claim_alias("name", b)
    assert meta.alias("name") == b


def test_unregister_removes_the_record_its_sets_and_only_its_own_alias(meta: Metadata) -> None:
    oid = _placed(meta, "b0", ("b1",), alias="mine")
    other = _placed(meta, "b0")
    meta.unregister_object("b0", oid, "mine", ("b1",))
    with pytest.raises(ObjectNotFound):
        meta.object(oid)
    with pytest.raises(ObjectNotFound):
        meta.alias("mine")
    assert meta.owned_objects("b0") == {other} and _set(meta, "reps", "b1") == set()
    meta.claim_alias("theirs", other)
    meta.unregister_object("b0", _oid(), "theirs")  # an alias that names another object stays
    assert meta.alias("theirs") == other


def test_a_missing_record_is_rebuilding_while_no_backend_is_registered(meta: Metadata) -> None:
    meta.redis.execute("SREM", meta.key("backends"), "b-registered")  # as after Redis lost its data
    with pytest.raises(MetadataRebuilding):
        meta.object(_oid())
    with pytest.raises(MetadataRebuilding):
        meta.alias("gone")
    meta.redis.execute("SADD", meta.key("backends"), "b-registered")
    with pytest.raises(ObjectNotFound) as err:
        meta.object(_oid())
    assert not isinstance(err.value, MetadataRebuilding)


# ----------------------------------------------------------------------- the backend registry
def test_backends_are_listed_with_liveness_and_counts(meta: Metadata) -> None:
    info = {"id": "bid-1", "name": "b0", "host": "127.0.0.1", "port": 4100, "compss_name": "node1",
            "pid": 42, "storage_dir": "/data/b0", "unix": "storage-api.bid-1"}
    meta.register_backend(info, ttl=30)
    meta.register_backend({**info, "id": "bid-2", "name": "b1", "port": 4101}, ttl=30)
    _placed(meta, "bid-1", ("bid-2",))
    _placed(meta, "bid-1")
    listed = {b.name: b for b in meta.backends()}
    assert (listed["b0"].alive, listed["b0"].objects, listed["b0"].replicas) == (True, 2, 0)
    assert (listed["b1"].objects, listed["b1"].replicas) == (0, 1)
    b0 = listed["b0"]
    assert (b0.host, b0.port, b0.compss_name, b0.pid, b0.storage_dir, b0.unix) == (
        "127.0.0.1", 4100, "node1", 42, "/data/b0", "storage-api.bid-1")
    assert b0.address == "127.0.0.1:4100"
    meta.mark_down("bid-2")
    assert {b.name: b.alive for b in meta.backends()} == {"b0": True, "b1": False}
    meta.heartbeat("bid-2", 43, ttl=30)
    assert all(b.alive for b in meta.backends())


def test_class_metadata_round_trips(meta: Metadata) -> None:
    doc = {"class": "pkg.Model", "methods": {"inc": {"readonly": False, "doc": "é"}}}
    meta.publish_class(doc)
    assert meta.class_meta("pkg.Model") == doc and meta.class_meta("pkg.Missing") is None
