"""A backend process: identity, recovery, registration, heartbeat, serving and graceful stop.

Start-up order: the log is recovered first, then the listening socket is bound, then the backend
(re-)registers itself and every object it holds in Redis, so metadata lost with a volatile Redis
comes back with the backends. Each heartbeat also checks that Redis still knows the backend and is
the same server (its run id): a Redis that restarted (maybe without its latest writes), was
flushed or replaced gets everything registered again within a heartbeat, without a restart.
SIGTERM/SIGINT stop it gracefully: it stops accepting, is marked down in Redis (status reports it
dead at once), syncs and closes its log.
"""

from __future__ import annotations

import fcntl
import importlib.util
import json
import logging
import os
import signal
import socket
import ssl
import sys
import threading
import time
import uuid
from pathlib import Path

from .. import _context, _pki, _tls
from .._config import Settings
from .._metadata import Metadata
from .._redis import Redis
from .._handshake import local_socket_name
from ..errors import CommunicationError, ConfigError
from . import _imports
from ._control import ControlLoop
from ._gate import Limits
from ._peer import PeerClient
from ._runtime import LocalBackend
from ._server import Server, defer_sync
from ._slice import request_slice
from ._store import Store
from ._threads import size_pools

log = logging.getLogger("storage.backend")

# Share of heartbeat_ttl during which a backend trusts that its heartbeat key is still in Redis
# (the key was set after the renewal started, so it lives at least heartbeat_ttl from then).
LEASE_FRACTION = 0.8


def _identity(storage_dir: Path, name: str) -> tuple[str, str]:
    """The backend's id and name, kept in its storage directory across restarts."""
    path = storage_dir / "backend.json"
    if path.exists():
        ident = json.loads(path.read_text())
        if name and name != ident["name"]:
            ident["name"] = name
            path.write_text(json.dumps(ident))
        return ident["id"], ident["name"]
    ident = {"id": str(uuid.uuid4()), "name": name or f"{socket.gethostname()}-{os.getpid()}"}
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(ident))
    os.replace(tmp, path)
    return ident["id"], ident["name"]


LOCK_WAIT = 5.0  # seconds a backend waits for a previous process on its directory to finish exiting


def _lock_storage_dir(storage_dir: Path) -> int:
    """Hold an exclusive lock on the storage directory for the life of the process (the kernel
    drops it when the process dies, kill -9 included): two backends on one log would corrupt it."""
    fd = os.open(storage_dir / "backend.lock", os.O_RDWR | os.O_CREAT, 0o600)
    deadline = time.monotonic() + LOCK_WAIT
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            break
        except BlockingIOError:
            if time.monotonic() >= deadline:
                holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
                os.close(fd)
                raise ConfigError(f"storage directory {storage_dir} is in use by another backend (pid {holder}): "
                                  "one backend per directory") from None
            time.sleep(0.05)
    os.ftruncate(fd, 0)
    os.pwrite(fd, str(os.getpid()).encode(), 0)
    return fd


def _check_name_free(meta: Metadata, bid: str, name: str) -> None:
    """Refuse a name that a live backend of the deployment already has: calls naming it would go
    to either one. (The same backend restarted on its directory has the same id: that is fine.)"""
    try:
        others = meta.backends()
    except Exception as exc:  # Redis not ready yet: registering deals with that (it waits)
        log.info("could not check whether name %r is taken: %s", name, exc)
        return
    for other in others:
        if other.name == name and other.id != bid and other.alive:
            raise ConfigError(f"a live backend of this deployment is already named {name!r} (pid {other.pid} on "
                              f"{other.host}, storage {other.storage_dir or '?'}): choose another --name, or stop it")


class BackendProcess:
    def __init__(self, settings: Settings) -> None:
        if not settings.storage_dir:
            raise ConfigError("a backend needs a storage directory (--storage-dir)")
        self.settings = settings
        # First: every thread started from now on inherits the slice, and the libraries that
        # methods use (numpy, torch) size their pools when they load.
        self.slice_us = settings.cpu_slice_us if request_slice(settings.cpu_slice_us) else 0.0
        self.threads = size_pools(settings.intra_op_threads)
        self.storage_dir = Path(settings.storage_dir).resolve()
        try:
            self.storage_dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ConfigError(f"cannot create the storage directory {self.storage_dir}: {exc.strerror}") from None
        self._dir_lock = _lock_storage_dir(self.storage_dir)
        self.id, self.name = _identity(self.storage_dir, settings.name)
        self.secret = settings.secret_bytes()
        self.store = Store(self.storage_dir, fsync=settings.fsync, segment_bytes=settings.log_segment_mb << 20,
                           prealloc=settings.log_prealloc_mb << 20)
        self.redis = Redis(settings.require_redis())
        self.meta = Metadata(self.redis, settings.namespace)
        _check_name_free(self.meta, self.id, self.name)
        self.backend = LocalBackend(self.id, self.name, self.store, self.meta, defer_sync=defer_sync,
                                    watch_writes=settings.write_watch)
        self.client = PeerClient(settings, self.backend)
        self.backend.peer = self.client
        self.backend.reregister = self._reregister
        _context.install(self.client)
        socks = [socket.create_server((settings.host, settings.port), backlog=128)]
        self.unix = ""
        if sys.platform.startswith("linux"):
            local = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                local.bind(local_socket_name(self.id))
                local.listen(128)
                socks.append(local)
                self.unix = local_socket_name(self.id)[1:]
            except OSError as exc:  # another process with our id? keep TCP only
                log.warning("no local socket: %s", exc)
                local.close()
        limits = Limits(settings.handshake_timeout, settings.max_pending, settings.max_pending_per_host)
        self.server = Server(self.backend, socks, self.secret, settings.max_workers, self._tls(),
                             spin=settings.spin_seconds(settings.serve_spin_us), limits=limits)
        self._health = ""  # the problem last reported in Redis
        self._stop = threading.Event()
        self._stopping = False
        self._beat = threading.RLock()  # a heartbeat and the deregistration never interleave
        self._rebeat = False  # a module load started or ended while a heartbeat was under way
        self.server.on_quiet = self._quiet
        self._redis_run_id = ""  # the Redis server we registered with

    def _tls(self) -> tuple[object, bytes]:
        """The TLS context of the TCP listener and its certificate's channel binding.

        The certificate is ``tls_cert`` or a fresh one signed by the CA (``tls_ca_key``, by
        default the key derived from the secret); :attr:`tls_ca` is what clients must trust.
        """
        s = self.settings
        tls_dir = self.storage_dir / "tls"
        if s.tls_cert or s.tls_key:
            if not (s.tls_cert and s.tls_key and s.tls_ca):
                raise ConfigError("tls_cert needs tls_key and tls_ca (the CA that signed it)")
            cert, key, ca = Path(s.tls_cert), Path(s.tls_key), Path(s.tls_ca)
        else:
            ca_key = _pki.ca_key_file(tls_dir, self.secret, s.tls_ca_key)
            ca = Path(s.tls_ca) if s.tls_ca else _pki.make_ca(tls_dir, ca_key)
            cert, key = _pki.make_backend_cert(tls_dir, ca, ca_key, self.id)
        try:
            self.tls_ca = ca.read_text()
            der = ssl.PEM_cert_to_DER_cert(cert.read_text())
        except (OSError, ValueError) as exc:
            raise ConfigError(f"cannot read the TLS certificates: {exc}") from exc
        return _tls.server_context(str(cert), str(key)), _tls.binding(der)

    def info(self) -> dict[str, object]:
        s = self.settings
        host = s.advertise_host or (s.host if s.host not in ("", "0.0.0.0", "::") else socket.gethostname())
        return {
            "id": self.id,
            "name": self.name,
            "host": host,
            "port": self.server.port,
            "compss_name": s.compss_node_name(),
            "pid": os.getpid(),
            "storage_dir": str(self.storage_dir),
            "unix": self.unix,
            "health": "",
            "threads": self.threads,
            "slice_us": self.slice_us,
            "state": "up",
            "started": time.time(),
        }

    def register(self) -> None:
        """Register the backend and every object it holds (at start, and when Redis lost them)."""
        s = self.settings
        self.meta.mark_rebuilding(self.id, self._rebuild_window())
        self.meta.publish_tls_ca(self.tls_ca)  # for clients that hold the secret but no CA file
        self.meta.register_backend(self.info(), s.heartbeat_ttl)
        self._health = ""  # info() registers a healthy backend: the next heartbeat corrects it
        _registered, self._redis_run_id = self.meta.heartbeat(self.id, os.getpid(), s.heartbeat_ttl)
        t0 = time.monotonic()
        records = self._reconcile(rebuilding=True)
        self.backend.lease_until = t0 + s.heartbeat_ttl * LEASE_FRACTION
        stale = self.meta.owned_objects(self.id) - {oid for oid, _p, _a in records}
        for oid in stale:  # deleted while Redis was not told (e.g. a crash mid-delete)
            self.meta.unregister_object(self.id, oid, None)
        log.info("backend %s (%s) serving %d objects on port %d", self.name, self.id, len(records), self.server.port)

    def _reregister(self) -> None:
        """Register everything again unless Redis still knows this backend (a call found an
        object's record missing before the heartbeat noticed that Redis lost its data)."""
        with self._beat:
            if self._stopping:
                return
            registered, run_id = self._beat_now()
            if not registered or run_id != self._redis_run_id:
                log.warning("Redis lost this backend's registration: registering it and its objects again")
                self.register()

    def _rebuild_window(self) -> float:
        # Long enough for every other backend to notice at its next heartbeat and start its own.
        return 2 * self.settings.heartbeat_ttl

    def _reconcile(self, rebuilding: bool = False) -> list[tuple[str, str, str | None]]:
        """(Re-)register every object in the log (and the classes loaded); drop the copies another
        backend took over."""
        self.backend.publish_classes()
        records = self.backend.registration_records()
        conflicts, verdicts = self.meta.register_objects(
            self.id, records, self.backend.roles(), self.backend.replica_lists(),
            self._rebuild_window() if rebuilding else 0.0)
        for alias in conflicts:
            log.warning("alias %r is held by another object; this backend's claim was dropped", alias)
        self.backend.apply_verdicts(verdicts)
        return records

    def _ttl(self) -> float:
        """How long the heartbeat vouches for this backend: longer while a module loads (the
        interpreter lock held for seconds keeps the next heartbeat from coming in time)."""
        return max(self.settings.heartbeat_ttl, _imports.IMPORT_QUIET if _imports.loading() else 0.0)

    def _quiet(self, seconds: float) -> None:
        """Modules started loading, or all are loaded: vouch for the time a load may take at once,
        and stop vouching as soon as it is over (a backend frozen right after a quick import must
        not look alive for a minute). Waiting for a heartbeat under way is bounded (it may itself
        wait for the module being loaded); past that, the heartbeat thread beats again at once."""
        self._rebeat = True
        if not self._beat.acquire(timeout=1.0):
            return
        try:
            if not self._stopping:
                self._beat_now()
        except CommunicationError as exc:
            log.info("could not renew the heartbeat as a module loads: %s", exc)
        finally:
            self._beat.release()

    def _beat_now(self) -> tuple[bool, str]:
        """Renew the heartbeat (caller holds ``_beat``), again if a load started or ended while
        it was written: the time it vouches for must be the one that holds when it is done."""
        while True:
            self._rebeat = False
            ttl = self._ttl()
            answer = self.meta.heartbeat(self.id, os.getpid(), ttl)
            if self._ttl() == ttl and not self._rebeat:
                return answer

    def _heartbeat(self) -> None:
        s = self.settings
        while not self._stop.wait(0 if self._rebeat else s.heartbeat_interval):
            with self._beat:
                if self._stopping:
                    return
                t0 = time.monotonic()
                try:
                    registered, run_id = self._beat_now()
                    if not registered or run_id != self._redis_run_id:
                        # Redis restarted, was flushed or replaced: what it knew may be gone.
                        log.warning("Redis lost this backend's registration (%s): registering it and its "
                                    "objects again", "server restarted" if registered else "backend unknown")
                        self.register()
                    elif not self.backend.lease_ok() or self.backend.orphans:
                        # We were silent long enough for clients to promote our replicas: check
                        # every object before serving as its primary again. (Orphans: replicas
                        # whose primary had not re-registered their object yet.)
                        if not self.backend.lease_ok():
                            log.warning("heartbeat lease lapsed: re-checking which objects are still ours")
                        self._reconcile()
                    self.backend.lease_until = t0 + s.heartbeat_ttl * LEASE_FRACTION
                    if self.server.problem != self._health:  # status shows why we take no connections
                        self.meta.set_health(self.id, self.server.problem)
                        self._health = self.server.problem
                except Exception as exc:  # the heartbeat must outlive any failure
                    log.warning("heartbeat failed: %s", exc)

    def run(self) -> int:
        # The handlers come first: a SIGTERM that arrives while we register (we are alive in Redis
        # from its first step) must still deregister; stop() waits for the registration (_beat).
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: threading.Thread(target=self.stop, daemon=True).start())
        with self._beat:
            self.register()
        threading.Thread(target=self._heartbeat, name="storage-api-heartbeat", daemon=True).start()
        ControlLoop(self).start()  # COMPSs' Java side (newVersion, ...) and storage_stop.sh talk through Redis
        self.server.serve_forever()  # returns at once if stop() already ran
        while not self._stop.wait(0.5):  # see Server.serve_forever: keep signal handlers running
            pass
        return 0

    @property
    def stopping(self) -> bool:
        """Whether :meth:`stop` has begun."""
        return self._stopping or self._stop.is_set()

    def wait_stopped(self, timeout: float) -> bool:
        """Wait up to ``timeout`` seconds for the end of :meth:`stop`; whether it ended."""
        return self._stop.wait(timeout)

    def stop(self) -> None:
        with self._beat:  # after this, no heartbeat can mark us alive again
            if self._stopping:
                return
            self._stopping = True
        log.info("backend %s stopping", self.name)
        self.server.stop()
        try:
            self.meta.mark_down(self.id)
        except CommunicationError as exc:
            log.warning("could not deregister: %s", exc)
        self.store.close()
        self._stop.set()


# Where the task executor (workflows/, installed beside this package) keeps its stand-in ``pycompss``.
_STAND_IN = Path(__file__).resolve().parents[2] / "workflows" / "executor" / "shim"


def add_pycompss_stand_in(stand_in: Path = _STAND_IN) -> str | None:
    """Put the stand-in ``pycompss`` on ``sys.path`` when no real one is importable; return its folder.

    PyCOMPSs models put ``@task`` methods on persistent classes, so their modules import
    ``pycompss.api.task`` when a backend loads the class. Without COMPSs, the backend must load
    them all the same, from its first object on (not only once some shipped task brought the
    stand-in along). It goes last on the path: it never shadows anything the deployment provides.
    Nothing of the executor is imported here; a model that imports the stand-in imports it.
    """
    if importlib.util.find_spec("pycompss") is not None or not (stand_in / "pycompss").is_dir():
        return None
    if str(stand_in) not in sys.path:
        sys.path.append(str(stand_in))
    return str(stand_in)


def main(settings: Settings) -> int:
    logging.basicConfig(
        level=settings.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s [%(process)d] %(message)s",
        stream=sys.stderr,
    )
    if os.getcwd() not in sys.path:  # user classes are imported relative to the working directory
        sys.path.insert(0, os.getcwd())
    stand_in = add_pycompss_stand_in()
    proc = BackendProcess(settings)
    if stand_in:  # said once the settings are known good: a mistake ends with its one line
        log.info("no pycompss installed: model modules import the task executor's stand-in (%s)", stand_in)
    return proc.run()
