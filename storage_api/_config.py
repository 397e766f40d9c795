"""Configuration, declared once.

Every setting is a typed, documented field of :class:`Settings`. Values come from, in increasing
priority: the defaults below, a TOML file (``STORAGE_API_CONFIG``, or the file ``storage-api up``
wrote), environment variables ``STORAGE_API_<FIELD>`` and explicit keyword arguments. Unknown keys
in a file, unknown ``STORAGE_API_*`` variables and ill-typed values are a :class:`ConfigError`.

``storage-api config`` prints every field with its value and documentation.
"""

from __future__ import annotations

import dataclasses
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import ConfigError

ENV_PREFIX = "STORAGE_API_"
#: Variables with the prefix that are not settings.
ENV_SPECIAL = {"STORAGE_API_CONFIG": "path of the TOML settings file", "STORAGE_API_HOME": "directory of local deployments",
               "STORAGE_API_DEBUG": "1: commands show the traceback of every error (storage_api.cmdline)"}


def _f(default: Any, doc: str) -> Any:
    return field(default=default, metadata={"doc": doc})


@dataclass(frozen=True)
class Settings:
    """Settings of clients and backends (backends read all of them, clients the first group)."""

    # --- connection (clients and backends)
    redis_url: str = _f("", "URL of the metadata Redis: redis://[:password@]host:port/db or unix:///path")
    secret: str = _f("", "deployment secret shared by every client and backend (prefer secret_file)")
    secret_file: str = _f("", "file holding the deployment secret")
    backends: str = _f("", "clients without Redis: host:port,... of backends to reach the deployment through")
    credential: str = _f("", "this client's own credential, name/generation:key (prefer credential_file)")
    credential_file: str = _f("", "file holding this client's credential (storage-api credential issue writes it)")
    namespace: str = _f("sa", "prefix of every Redis key, so several deployments can share one Redis")
    connect_timeout: float = _f(2.0, "seconds to connect and authenticate to a backend")
    liveness_timeout: float = _f(2.0, "calls to a backend that stays silent fail within this many seconds")
    import_classes: bool = _f(True, "build handles from importable classes; when False always use stubs")
    spin_us: float = _f(200.0, "microseconds a caller polls for its reply before sleeping, at most (less while replies come late; 0: never)")
    retry_deadline: float = _f(10.0, "seconds a call keeps retrying a dead or failing-over backend (0: no retries)")
    retry_backoff: float = _f(0.02, "first pause between retries, doubled each time up to retry_backoff_cap")
    retry_backoff_cap: float = _f(0.5, "longest pause between retries")
    tls_ca: str = _f("", "deployment CA certificate (PEM) that backends' TLS certificates must chain to "
                         "(default for holders of the secret: the one backends publish)")
    local_socket: bool = _f(True, "use a backend's Unix socket when it runs on this host (else TCP with TLS)")
    # --- backend
    storage_dir: str = _f("", "backend: directory of the durable object log")
    name: str = _f("", "backend: human-readable name (default: host-pid)")
    host: str = _f("127.0.0.1", "backend: interface to listen on")
    port: int = _f(0, "backend: TCP port (0 picks a free one)")
    advertise_host: str = _f("", "backend: address clients use to reach it (default: host, or the hostname)")
    compss_name: str = _f("", "backend: the node name COMPSs knows this backend's node by (default: hostname + network suffix)")
    network: str = _f("ethernet", "backend: COMPSs network type (ethernet, infiniband, data or another word of network_suffixes)")
    network_suffixes: str = _f("ethernet=,infiniband=-ib0,data=-data",
                               "backend: suffix COMPSs appends to hostnames per network type, as word=suffix,...")
    heartbeat_interval: float = _f(1.0, "backend: seconds between heartbeats in Redis")
    heartbeat_ttl: float = _f(3.0, "backend: a backend silent for this long is reported dead")
    tls_ca_key: str = _f("", "backend: the CA's private key (default: derived from the deployment secret)")
    tls_cert: str = _f("", "backend: its TLS certificate (default: made at start-up, signed by the CA; given, it needs tls_key and tls_ca)")
    tls_key: str = _f("", "backend: the private key of tls_cert")
    fsync: bool = _f(True, "backend: fsync the log before acknowledging (turn off only for throwaway data)")
    log_segment_mb: int = _f(256, "backend: size at which the log starts a new segment file (MiB)")
    write_watch: bool = _f(True, "backend: store a large buffer again only if it was written since it was stored (Linux; off stores every buffer on every write)")
    log_prealloc_mb: int = _f(64, "backend: largest step by which a log segment is preallocated (MiB; less on a small or full disk)")
    max_workers: int = _f(64, "backend: most requests executed at once per connection (more wait their turn)")
    intra_op_threads: int = _f(0, "backend: threads of torch/BLAS/OpenMP in its methods and tasks "
                                  "(0: OMP_NUM_THREADS if set, else the CPUs it may run on, as numactl/taskset leave them)")
    log_level: str = _f("INFO", "backend: logging level of the 'storage' loggers")
    cpu_slice_us: float = _f(300.0, "backend: CPU time slice it asks the Linux scheduler for (6.12+), so that it runs as soon as "
                                     "a request or fdatasync wakes it on a busy machine (0: the kernel's default)")
    serve_spin_us: float = _f(100.0, "backend: microseconds a connection polls for the next request after one, at most (as spin_us)")
    handshake_timeout: float = _f(5.0, "backend: seconds a connection has to complete its whole handshake")
    max_pending: int = _f(256, "backend: most connections still authenticating (over it, the oldest is dropped)")
    max_pending_per_host: int = _f(32, "backend: most connections still authenticating from one address")

    def validate(self) -> Settings:
        for name in ("connect_timeout", "liveness_timeout", "heartbeat_interval", "heartbeat_ttl", "handshake_timeout"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"{name} must be positive")
        if self.heartbeat_ttl <= self.heartbeat_interval:
            raise ConfigError("heartbeat_ttl must exceed heartbeat_interval")
        if not 0 <= self.port < 65536:
            raise ConfigError(f"port {self.port} is out of range")
        if self.retry_deadline < 0 or self.retry_backoff <= 0 or self.retry_backoff_cap < self.retry_backoff:
            raise ConfigError("retry_deadline >= 0 and 0 < retry_backoff <= retry_backoff_cap are required")
        if self.spin_us < 0 or self.serve_spin_us < 0:
            raise ConfigError("spin_us and serve_spin_us cannot be negative")
        if self.cpu_slice_us and not 100 <= self.cpu_slice_us <= 100_000:
            raise ConfigError("cpu_slice_us must be 0 (the kernel's default) or between 100 and 100000")
        if self.log_segment_mb < 1 or self.log_prealloc_mb < 1:
            raise ConfigError("log_segment_mb and log_prealloc_mb must be at least 1")
        if self.max_workers < 1:
            raise ConfigError("max_workers must be at least 1")
        if self.intra_op_threads < 0:
            raise ConfigError("intra_op_threads cannot be negative (0: sized to the CPUs the backend may run on)")
        if self.max_pending < 1 or self.max_pending_per_host < 1:
            raise ConfigError("max_pending and max_pending_per_host must be at least 1")
        if not self.namespace or ":" in self.namespace:
            raise ConfigError("namespace must be non-empty and contain no ':'")
        check_log_level(self.log_level)
        network_suffix(self.network, self.network_suffixes)
        self.backend_addresses()
        return self

    def compss_node_name(self, hostname: str | None = None) -> str:
        """The name COMPSs gives this node: ``compss_name``, else the hostname plus the network's suffix.

        COMPSs' ``launch_compss`` names cluster workers ``<hostname><suffix>`` with the suffix of the
        chosen network; ``getLocations`` must return exactly those names for locality to work.
        """
        if self.compss_name:
            return self.compss_name
        import socket

        return (hostname or socket.gethostname()) + network_suffix(self.network, self.network_suffixes)

    @staticmethod
    def spin_seconds(us: float) -> float:
        """A polling budget in seconds; none on a single CPU, where polling only delays the peer."""
        try:
            cpus = len(os.sched_getaffinity(0))
        except AttributeError:  # not Linux
            cpus = os.cpu_count() or 1
        return us / 1e6 if cpus > 1 else 0.0

    def secret_bytes(self) -> bytes:
        """The deployment secret, from ``secret`` or ``secret_file``."""
        if self.secret:
            return self.secret.encode()
        if self.secret_file:
            try:
                text = Path(self.secret_file).read_text().strip()
            except OSError as exc:
                raise ConfigError(f"cannot read secret_file {self.secret_file}: {exc}") from exc
            if not text:
                raise ConfigError(f"secret_file {self.secret_file} is empty")
            return text.encode()
        raise ConfigError("no deployment secret: set STORAGE_API_SECRET or secret_file")

    def require_redis(self) -> str:
        if not self.redis_url:
            raise ConfigError(
                "no metadata Redis configured: run `storage-api up`, or set STORAGE_API_REDIS_URL "
                "(or redis_url in the file named by STORAGE_API_CONFIG; a client without Redis needs "
                "backends and a credential: see `storage-api credential issue`)"
            )
        return self.redis_url

    def credential_parts(self) -> tuple[str, bytes] | None:
        """``(identity, key)`` of this client's credential, or None when it has none."""
        text = self.credential
        if not text and self.credential_file:
            try:
                text = Path(self.credential_file).read_text().strip()
            except OSError as exc:
                raise ConfigError(f"cannot read credential_file {self.credential_file}: {exc}") from exc
        if not text:
            return None
        identity, sep, key = text.strip().rpartition(":")
        name, slash, generation = identity.partition("/")
        try:
            raw = bytes.fromhex(key)
        except ValueError:
            raw = b""
        if not (sep and slash and name and generation and len(raw) == 32):
            raise ConfigError("a credential reads name/generation:key (64 hex digits); issue one with "
                              "`storage-api credential issue NAME`")
        return identity, raw

    def backend_addresses(self) -> list[tuple[str, int]]:
        """``backends`` as (host, port) pairs."""
        out = []
        for item in self.backends.split(","):
            host, sep, port = item.strip().rpartition(":")
            if not item.strip():
                continue
            if not sep or not host or not port.isdigit():
                raise ConfigError(f"backends: {item.strip()!r} is not host:port")
            out.append((host.strip("[]"), int(port)))
        return out


FIELDS = {f.name: f for f in dataclasses.fields(Settings)}


#: The levels ``log_level`` takes (any case), as the logging module names them.
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")


def check_log_level(level: str) -> str:
    """``level`` in upper case; a :class:`ConfigError` unless it is one of :data:`LOG_LEVELS`."""
    if level.upper() not in LOG_LEVELS:
        raise ConfigError(f"log_level {level!r} is not a level: use one of {', '.join(LOG_LEVELS)}")
    return level.upper()


def network_suffix(network: str, suffixes: str) -> str:
    """The hostname suffix of ``network`` in a ``word=suffix,...`` table (``ConfigError`` if absent)."""
    table: dict[str, str] = {}
    for item in suffixes.split(","):
        if not item.strip():
            continue
        word, sep, suffix = item.partition("=")
        if not sep or not word.strip():
            raise ConfigError(f"network_suffixes: {item!r} is not word=suffix")
        table[word.strip()] = suffix.strip()
    word = network.strip() or "ethernet"
    if word not in table:
        raise ConfigError(f"network {word!r} has no suffix in network_suffixes ({', '.join(sorted(table))})")
    return table[word]


def home() -> Path:
    return Path(os.environ.get("STORAGE_API_HOME") or Path.home() / ".storage-api")


def default_config_path() -> Path:
    """Where ``storage-api up`` writes the client configuration of the local deployment."""
    return home() / "local" / "client.toml"


def coerce(name: str, value: Any, source: str) -> Any:
    kind = FIELDS[name].type
    try:
        if kind == "bool":
            if isinstance(value, bool):
                return value
            if isinstance(value, str) and value.lower() in ("1", "true", "yes", "on"):
                return True
            if isinstance(value, str) and value.lower() in ("0", "false", "no", "off"):
                return False
            raise ValueError(value)
        if kind == "int":
            if isinstance(value, bool):
                raise ValueError(value)
            return int(value)
        if kind == "float":
            if isinstance(value, bool):
                raise ValueError(value)
            number = float(value)
            if not math.isfinite(number):  # nan and inf pass float() but no timeout or period means them
                raise ValueError(value)
            return number
        if not isinstance(value, str):
            raise ValueError(value)
        return value
    except ValueError:
        raise ConfigError(f"{source}: {name} must be a {kind}, got {value!r}") from None


def read_file(path: str | os.PathLike[str]) -> dict[str, Any]:
    import tomllib

    try:
        with open(path, "rb") as fh:
            data = tomllib.load(fh)
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc}") from exc
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"config file {path} is not valid TOML: {exc}") from None
    unknown = sorted(set(data) - set(FIELDS))
    if unknown:
        raise ConfigError(f"config file {path}: unknown keys {unknown} (known: {sorted(FIELDS)})")
    values = {k: coerce(k, v, str(path)) for k, v in data.items()}
    # A file that names other files names them relative to itself, so that a settings file and
    # the files beside it can be copied together to another machine (a device's credential).
    here = Path(path).resolve().parent
    for k in FILE_SETTINGS:
        if values.get(k):
            values[k] = str(here / Path(values[k]).expanduser())
    return values


FILE_SETTINGS = ("secret_file", "credential_file", "tls_ca", "tls_ca_key", "tls_cert", "tls_key")


def read_env(environ: dict[str, str] | os._Environ[str] | None = None) -> dict[str, Any]:
    env = os.environ if environ is None else environ
    out: dict[str, Any] = {}
    for key, value in env.items():
        if not key.startswith(ENV_PREFIX) or key in ENV_SPECIAL:
            continue
        name = key[len(ENV_PREFIX) :].lower()
        if name not in FIELDS:
            raise ConfigError(f"unknown environment variable {key} (settings: {sorted(FIELDS)})")
        out[name] = coerce(name, value, key)
    return out


def load(config: str | os.PathLike[str] | None = None, *, use_default_file: bool = True, **overrides: Any) -> Settings:
    """Resolve settings from file, environment and keyword overrides (``None`` overrides are ignored)."""
    values: dict[str, Any] = {}
    path = config or os.environ.get("STORAGE_API_CONFIG")
    env = read_env()
    explicit = {k: v for k, v in overrides.items() if v is not None}
    for k in explicit:
        if k not in FIELDS:
            raise ConfigError(f"unknown setting {k!r}")
    if path:
        values.update(read_file(path))
    elif use_default_file and "redis_url" not in env and "redis_url" not in explicit and default_config_path().exists():
        values.update(read_file(default_config_path()))
    values.update(env)
    values.update({k: coerce(k, v, "argument") for k, v in explicit.items()})
    return Settings(**values).validate()


def to_toml(values: dict[str, Any]) -> str:
    lines = []
    for k, v in values.items():
        if k not in FIELDS:
            raise ConfigError(f"unknown setting {k!r}")
        if isinstance(v, bool):
            lines.append(f"{k} = {'true' if v else 'false'}")
        elif isinstance(v, (int, float)):
            lines.append(f"{k} = {v!r}")
        else:
            escaped = str(v).replace("\\", "\\\\").replace('"', '\\"')
            lines.append(f'{k} = "{escaped}"')
    return "\n".join(lines) + "\n"


def describe(settings: Settings) -> str:
    rows = []
    for f in dataclasses.fields(Settings):
        value = getattr(settings, f.name)
        if f.name in ("secret", "credential") and value:
            value = "<set>"
        elif f.name == "redis_url" and "@" in value:  # its password: not for the terminal
            scheme, _, rest = value.partition("://")
            value = f"{scheme}://<password>@{rest.rpartition('@')[2]}"
        rows.append(f"{f.name:20} = {value!r:32} # {f.metadata['doc']}  [{ENV_PREFIX}{f.name.upper()}]")
    return "\n".join(rows)
