"""Clients without the deployment's keys: per-client credentials, metadata through the backends."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from storage_api import _config, _context
from storage_api._client import Client
from storage_api._deploy._procs import free_port
from storage_api.errors import AuthenticationError, BackendUnavailable
from tests.conftest import ROOT
from tests.models import Counter


def _cli(cluster, *args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("STORAGE_API_")}
    return subprocess.run([sys.executable, "-m", "storage_api", *args, "--config", str(cluster.dep.config_path)],
                          capture_output=True, text=True, cwd=ROOT, env=env, timeout=60)


def _issue(cluster, name: str, out: Path) -> Path:
    proc = _cli(cluster, "credential", "issue", name, "--out", str(out))
    assert proc.returncode == 0, proc.stderr
    return out / f"{name}.toml"


def _thin(config: Path, **overrides) -> Client:
    return Client(_config.load(config, use_default_file=False, **overrides))


# A thin client in its own interpreter: only its settings file, no Redis URL, no secret.
_THIN = r"""
import json, sys
import storage_api
client = storage_api.connect()
c = storage_api.stub("tests.models.Counter")(5)
c.make_persistent(alias=sys.argv[1])
c.inc(2)
again = storage_api.stub("tests.models.Counter").get_by_alias(sys.argv[1])
print(json.dumps({"value": again.inc(1), "same": again.getID() == c.getID(),
                  "backends": sorted(b.name for b in storage_api.backends()),
                  "redis": client.redis is not None,
                  "io": [type(ch.fs.io).__name__ for key, ch in client._channels.items() if not key.startswith("metadata")]}))
"""


@pytest.mark.parametrize("local_socket", ["true", "false"])
def test_a_client_with_only_its_credential_works_through_the_backends(cluster, tmp_path, local_socket):
    issued = _issue(cluster, f"edge-{local_socket}", tmp_path)
    assert oct(issued.stat().st_mode & 0o777) == "0o600"
    # the two files are copied to the device, and are no longer where they were made
    device = tmp_path / "device"
    device.mkdir()
    for made in (issued, issued.with_name(f"edge-{local_socket}-ca.pem")):
        shutil.move(made, device / made.name)
    config = device / issued.name
    settings = _config.read_file(config)
    assert set(settings) == {"backends", "tls_ca", "credential"}  # no Redis URL, no deployment secret
    assert settings["tls_ca"] == str(device / f"edge-{local_socket}-ca.pem")
    env = {k: v for k, v in os.environ.items() if not k.startswith("STORAGE_API_")}
    env.update(STORAGE_API_CONFIG=str(config), STORAGE_API_LOCAL_SOCKET=local_socket,
               STORAGE_API_IMPORT_CLASSES="false")
    proc = subprocess.run([sys.executable, "-c", _THIN, f"thin-{local_socket}"], capture_output=True, text=True,
                          cwd=ROOT, env=env, timeout=60)
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert out["value"] == 8 and out["same"] and out["backends"] == ["b0", "b1"]
    assert out["redis"] is False
    # calls go over the Unix socket when allowed (the first metadata question went to the
    # configured address, over TLS)
    assert set(out["io"]) == {"PlainIO" if local_socket == "true" else "TlsIO"}


def test_a_revoked_credential_is_refused_at_its_next_connection(cluster, client, tmp_path):
    config = _issue(cluster, "lost-phone", tmp_path)
    thin = _thin(config)
    previous = _context.install(thin)
    try:
        c = Counter(1)
        c.make_persistent(backend="b0")
        assert c.inc() == 2
    finally:
        _context.install(previous)
    proc = _cli(cluster, "credential", "revoke", "lost-phone")
    assert proc.returncode == 0, proc.stderr
    assert "lost-phone" not in _cli(cluster, "credential", "list").stdout
    previous = _context.install(thin)
    try:
        assert c.inc() == 3  # a connection opened before the revocation is not cut
    finally:
        _context.install(previous)
    thin.close()
    again = _thin(config, retry_deadline=0)
    with pytest.raises(AuthenticationError, match="revoked"):
        again.backends()
    again.close()
    again = _cli(cluster, "credential", "revoke", "lost-phone")  # nothing left to revoke: a mistake
    assert again.returncode == 2 and "no valid credential named 'lost-phone'" in again.stderr


def test_reissuing_a_credential_replaces_the_old_key(cluster, tmp_path):
    old = _issue(cluster, "laptop", tmp_path / "old")
    new = _issue(cluster, "laptop", tmp_path / "new")
    with pytest.raises(AuthenticationError, match="revoked"):
        _thin(old).backends()
    fresh = _thin(new)
    assert {b.name for b in fresh.backends()} == {"b0", "b1"}
    fresh.close()
    assert "laptop" in _cli(cluster, "credential", "list").stdout


def test_a_credential_naming_ports_nobody_listens_on_says_to_issue_it_again(cluster, tmp_path):
    """A credential pins the backends' ports of the deployment that issued it; after `down` and `up`
    nothing listens there (here: a port just found free), and the error says what to do."""
    config = _issue(cluster, "old-ports", tmp_path)
    gone = f"127.0.0.1:{free_port()}"
    stale = _thin(config, backends=gone, retry_deadline=0)
    with pytest.raises(BackendUnavailable) as info:
        stale.backends()
    stale.close()
    message = str(info.value)
    assert message.startswith(f"no backend of the deployment is reachable ({gone}: ")
    assert message.endswith("the backend addresses configured (setting backends) may be out of date, as a "
                            "deployment started again listens on new ports: have the credential issued again "
                            "(`storage-api credential issue NAME`) after the deployment's latest start")


def test_a_forged_credential_is_refused(cluster, tmp_path):
    config = _issue(cluster, "genuine", tmp_path)
    identity = _config.read_file(config)["credential"].rpartition(":")[0]
    forged = _thin(config, credential=f"{identity}:{'ab' * 32}")
    with pytest.raises(AuthenticationError, match="refused our credentials"):
        forged.backends()
    forged.close()
