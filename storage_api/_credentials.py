"""Per-client credentials: ``storage-api credential issue|revoke|list``.

A credential is a name, a generation (random, new at each issue) and a key derived from the
deployment secret (:func:`storage_api._wire.credential_key`), so backends verify any credential
without storing keys. The registry in Redis (:meth:`Metadata.issue_credential`) holds each name's
current generation: backends refuse a credential whose generation is not the current one, so
revoking a name, or issuing it again, shuts out the old key at its next connection.

Issuing writes what a client on another machine needs, and nothing more: a settings file with the
backends' addresses, the CA certificate and the credential itself (no Redis URL, no secret).
"""

from __future__ import annotations

import os
import re
import secrets
from pathlib import Path

from . import _wire
from ._config import Settings, to_toml
from ._metadata import Metadata
from ._redis import Redis
from .errors import ConfigError

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")


def _meta(settings: Settings) -> Metadata:
    return Metadata(Redis(settings.require_redis()), settings.namespace)


def issue(settings: Settings, name: str, out: Path, backends: list[str] | None = None) -> Path:
    """Issue (or re-issue) credential ``name``; write ``out/<name>.toml`` and ``out/<name>-ca.pem``."""
    if not _NAME.fullmatch(name):
        raise ConfigError(f"credential name {name!r}: use 1 to 64 letters, digits, '.', '_' or '-'")
    meta = _meta(settings)  # first: with no deployment at all, its error says to start one
    try:
        secret = settings.secret_bytes()
        ca = settings.tls_ca and Path(settings.tls_ca).read_text() or meta.tls_ca()
        if not ca:
            raise ConfigError("no deployment CA: set tls_ca, or start a backend first (backends publish it)")
        addresses = backends or [f"{b.host}:{b.port}" for b in meta.backends() if b.alive]
        if not addresses:
            raise ConfigError("no backend is alive to name in the client's settings: start one, or pass --backend")
        generation = secrets.token_hex(8)
        identity = f"{name}/{generation}"
        meta.issue_credential(name, generation)
    finally:
        meta.redis.close()
    out.mkdir(parents=True, exist_ok=True)
    ca_path = (out / f"{name}-ca.pem").resolve()
    ca_path.write_text(ca)
    config = (out / f"{name}.toml").resolve()
    key = _wire.credential_key(secret, identity).hex()
    fd = os.open(config, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:  # tls_ca relative to the file: the two travel together
        fh.write(to_toml({"backends": ",".join(addresses), "tls_ca": ca_path.name, "credential": f"{identity}:{key}"}))
    return config


def revoke(settings: Settings, name: str) -> bool:
    meta = _meta(settings)
    try:
        return meta.revoke_credential(name)
    finally:
        meta.redis.close()


def listing(settings: Settings) -> dict[str, float]:
    meta = _meta(settings)
    try:
        return meta.credentials()
    finally:
        meta.redis.close()
