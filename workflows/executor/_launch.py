"""The launcher: defer to real COMPSs when it is there, else run the app with the engine."""

from __future__ import annotations

import argparse
import importlib.util
import os
import signal
import importlib.machinery
import sys
import threading
import types
from pathlib import Path
from typing import Any

from storage_api import cmdline
from storage_api.errors import StoreError

from ._errors import UnwaitedTaskFailed

SHIM = str(Path(__file__).resolve().parent / "shim")


def real_pycompss() -> str | None:
    """Where the real ``pycompss`` is, if it can be imported (our shim does not count)."""
    spec = importlib.util.find_spec("pycompss")
    if spec is None or spec.origin is None:
        return None
    return None if spec.origin.startswith(SHIM) else spec.origin


def parser(prog: str = "python -m workflows.executor") -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=prog,
                                description="Run a PyCOMPSs app without COMPSs (storage-api's development executor).")
    p.add_argument("--workers", type=cmdline.positive_int, default=os.cpu_count() or 1,
                   help="processes of the local Dask cluster that runs the tasks no backend runs (default: cores)")
    p.add_argument("--scheduler", default=os.environ.get("STORAGE_API_DASK_SCHEDULER") or None, metavar="ADDRESS",
                   help="run those tasks on the workers of this running Dask scheduler (tcp://host:port, or its "
                        "--scheduler-file) instead of a local cluster (default: $STORAGE_API_DASK_SCHEDULER)")
    p.add_argument("--dashboard", default=":0", metavar="[HOST]:PORT",
                   help="where the local cluster serves Dask's dashboard (default :0, a free port; 'none': no "
                        "dashboard); its address is printed")
    p.add_argument("--backend-slots", type=cmdline.positive_int, default=1,
                   help="tasks one backend runs at a time (default 1: one core per backend)")
    p.add_argument("--pythonpath", default="", metavar="DIRS",
                   help="colon-separated directories the app, the Dask workers and the backends' tasks "
                        "import from, ahead of the app's own directory (runcompss' --pythonpath)")
    p.add_argument("app", type=cmdline.input_file, help="the PyCOMPSs application script")
    p.add_argument("args", nargs=argparse.REMAINDER, help="the app's own arguments")
    return p


def main(argv: list[str] | None = None, prog: str = "python -m workflows.executor") -> int:
    """Run an app (``argv``: the options of :func:`parser`); also ``storage-api run`` (its plugin entry point)."""
    opts = parser(prog).parse_args(argv)
    real = real_pycompss()
    if real is not None:
        print(f"PyCOMPSs is installed ({real}): run the app with COMPSs instead, e.g.\n"
              f"  runcompss --storage_impl=storage_api --storage_conf=<conf> {opts.app} {' '.join(opts.args)}\n"
              "(storage-api compss-bundle DEST assembles the storage bundle)", file=sys.stderr)
        return 3
    return run(opts.app, opts.args, workers=opts.workers, backend_slots=opts.backend_slots,
               pythonpath=[d for d in opts.pythonpath.split(os.pathsep) if d], scheduler=opts.scheduler,
               dashboard=None if opts.dashboard.lower() == "none" else opts.dashboard)


def run(app: str, args: list[str], *, workers: int, backend_slots: int = 1, pythonpath: list[str] = (),  # type: ignore[assignment]
        scheduler: str | None = None, dashboard: str | None = ":0") -> int:
    """Run ``app``; its exit status. An error the app does not catch is printed as Python would
    print it for ``python APP.py``: from the app's own frames on (not the launcher's before them,
    nor the executor's after them, unless ``--debug``/``STORAGE_API_DEBUG`` asks for everything),
    with status 1. The store's errors stay one-line mistakes (status 2, see storage_api.cmdline)."""
    try:
        return _run(app, args, workers=workers, backend_slots=backend_slots, pythonpath=pythonpath,
                    scheduler=scheduler, dashboard=dashboard)
    except Exception as exc:
        if isinstance(exc, StoreError) or cmdline.debugging():
            raise
        print(app_traceback(exc, str(Path(app).resolve())), end="", file=sys.stderr)
        return 1


def app_traceback(exc: BaseException, app_path: str) -> str:
    """``exc``'s traceback without the frames before the app's first one, nor the executor's after
    the app's last one (``compss_wait_on`` raising a task's error, and what it called), nor the
    worker's or backend's own frames around the task's in a task's traceback (a local one's
    ``__cause__``, a backend's note)."""
    import traceback

    error = traceback.TracebackException(type(exc), exc, exc.__traceback__)
    frames = list(error.stack)
    mine = [i for i, f in enumerate(frames) if f.filename == app_path]
    if mine:
        last = mine[-1] + 1
        frames = frames[mine[0]:last if last < len(frames) and _internal(frames[last].filename) else None]
    else:
        frames = []
    error.stack = traceback.StackSummary.from_list(frames)
    cause = error.__cause__
    if cause is not None and cause.exc_type.__name__ == "_RemoteTraceback" and hasattr(cause, "_str"):
        cause._str = _without_internal_frames(cause._str)
    if getattr(error, "__notes__", None):
        error.__notes__ = [_without_internal_frames(note) for note in error.__notes__]
    return "".join(error.format())


_HERE = str(Path(__file__).resolve().parent)
_POOL = str(Path(threading.__file__).resolve().parent / "concurrent")
_BACKEND = str(Path(cmdline.__file__).resolve().parent / "_backend")


def _internal(filename: str) -> bool:
    """A frame of the executor, the process pool, a backend's task handling, or the import system."""
    return filename.startswith((_HERE, _POOL, _BACKEND, "<frozen importlib"))


def _without_internal_frames(text: str) -> str:
    """A formatted traceback (a worker's) without the frames of the executor and the process pool."""
    out: list[str] = []
    keep = True
    for line in text.splitlines(keepends=True):
        if line.startswith('  File "'):
            keep = not _internal(line.split('"', 2)[1])
        elif not line.startswith("    "):
            keep = True
        if keep:
            out.append(line)
    return "".join(out)


def _run(app: str, args: list[str], *, workers: int, backend_slots: int, pythonpath: list[str],
         scheduler: str | None, dashboard: str | None) -> int:
    from . import _current, _engine

    app_path = str(Path(app).resolve())
    app_dir = str(Path(app_path).parent)
    # sys.path[0] first: the shim, the --pythonpath directories in their order, the app's directory
    # (spawned workers start with this process's sys.path; backends get it with each task)
    paths = [SHIM, *(str(Path(d).resolve()) for d in pythonpath), app_dir]
    for p in reversed(paths):
        if p in sys.path:
            sys.path.remove(p)
        sys.path.insert(0, p)
    if pythonpath:  # and programs the app starts, as runcompss exports it
        os.environ["PYTHONPATH"] = os.pathsep.join([*paths[1:-1], *filter(None, [os.environ.get("PYTHONPATH")])])
    engine = _engine.Engine(workers, paths=paths, script=app_path, backend_slots=backend_slots, scheduler=scheduler,
                            dashboard=dashboard)
    _current.install(engine)
    saved_argv, saved_main, saved_mp_main = sys.argv, sys.modules["__main__"], sys.modules.get("__mp_main__")
    sys.argv = [app_path, *args]
    # The app runs as __main__ in a module of ours that stays __main__ until its last task ran:
    # local workers and backends find its functions by reference, also for tasks still pending
    # when the script's last line returns. Its spec is named __main__ so that multiprocessing
    # does not run the script in each worker it spawns: a worker runs it only when a task needs
    # one of its names (see _worker.setup), as PyCOMPSs' workers import only their tasks' modules.
    app = types.ModuleType("__main__")
    app.__file__ = app_path
    app.__spec__ = importlib.machinery.ModuleSpec("__main__", None)
    app.__builtins__ = __builtins__
    # and as __mp_main__, the name values of the script's classes come back under from workers
    # (multiprocessing sets that name once, to whatever was __main__ when it was first imported)
    sys.modules["__main__"] = sys.modules["__mp_main__"] = app
    from storage_api._messages import script_module

    script_name = script_module(app_path)
    sys.modules[script_name] = app  # how backends name the script's classes
    code = 0
    previous = _stop_on_sigterm(engine)
    try:
        program = compile(Path(app_path).read_text(), app_path, "exec", dont_inherit=True)  # not our __future__s
        engine.start_pool()
        exec(program, app.__dict__)
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
        if not isinstance(exc.code, int) and exc.code is not None:
            print(exc.code, file=sys.stderr)
        if code:
            engine.abort()  # the app failed or was interrupted: its remaining tasks are of no use
    except BaseException:
        engine.abort()
        raise
    finally:
        try:
            try:
                engine.close()
            except StoreError as exc:
                raise UnwaitedTaskFailed(f"a task nobody waited on failed: {type(exc).__name__}: {exc}") from exc
        finally:
            _current.install(None)
            sys.argv = saved_argv
            sys.modules["__main__"] = saved_main
            if saved_mp_main is not None:
                sys.modules["__mp_main__"] = saved_mp_main
            else:
                sys.modules.pop("__mp_main__", None)
            sys.modules.pop(script_name, None)
            if previous is not None:
                signal.signal(signal.SIGTERM, previous)
    return code


def _stop_on_sigterm(engine: Any) -> Any:
    """SIGTERM (``kill``, ``timeout``, ``scancel``, a job's time limit) stops the run as Ctrl-C does:
    the local workers are stopped and the app exits with 143. By default it ended the launcher
    alone, and its workers lived on. Returns the previous handler (None off the main thread)."""
    if threading.current_thread() is not threading.main_thread():
        return None

    def terminated(signum: int, frame: Any) -> None:
        engine.abort()
        print("terminated (SIGTERM): the run's workers are stopped", file=sys.stderr, flush=True)
        raise SystemExit(128 + signum)

    return signal.signal(signal.SIGTERM, terminated)
