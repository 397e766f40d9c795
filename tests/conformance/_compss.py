"""COMPSs' storage test apps, unchanged, on a fresh deployment: ``storage-api up --backends 2``,
``storage-api run --workers 2 APP``, ``storage-api down --purge``.

Each app gives named checks, each ``pass``, ``fail``, ``error`` or ``skip`` with a detail: the
ones its folder's ``result`` script makes that do not depend on the COMPSs runtime (the unittest
outcomes, the checks it prints, the files it writes), plus its printed counters. README lists the
checks of ``result`` left out and why.
"""

from __future__ import annotations

import fcntl
import json
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from . import _process, _suites

EXPECTED = _suites.HERE / "compss_expected.json"
DUMMY_BACKEND = _suites.HERE / "dummy_backend"
Checks = dict[str, tuple[str, str]]  # check name -> (outcome, detail)


@dataclass(frozen=True)
class App:
    folder: str  # under tests/sources/local of COMPSs' sources
    script: str  # the app, relative to folder
    pythonpath: tuple[str, ...]  # relative to folder, as its `execution` passes --pythonpath
    check: Callable[[Path, _process.Finished], Checks]
    # Its models use the dummy backend's classes (see dummy_backend/sitecustomize.py).
    dummy_backend: bool = False


def run(app: App, *, timeout: float = 600) -> Checks:
    folder = _suites.compss_apps() / app.folder
    paths = [folder / p for p in app.pythonpath] + ([DUMMY_BACKEND] if app.dummy_backend else [])
    # cwd: the app's src/, not its folder, whose storage/ package (the dummy backend) would shadow ours.
    cwd = folder / "src"
    with tempfile.TemporaryDirectory(prefix="sa-compss-app-") as tmp, _shared_disk_lock():
        env = _suites.env(paths, home=Path(tmp))
        up = _process.run(_suites.storage_api("up", "--backends", "2", "--no-fsync"), cwd=cwd, env=env, timeout=180)
        if up.returncode != 0:
            return {"deployment": ("error", _last_line(up.stderr or up.stdout))}
        try:
            done = _process.run(_suites.storage_api("run", "--workers", "2", str(folder / app.script)),
                                cwd=cwd, env=env, timeout=timeout)
        finally:
            _process.run(_suites.storage_api("down", "--purge"), cwd=cwd, env=env, timeout=120)
    output = done.stdout + done.stderr
    checks: Checks = {
        "exit status 0": _check(done.returncode == 0, "timed out" if done.timed_out else f"status {done.returncode}: "
                                + _last_line(done.stderr)),
        "no ERROR or FAIL in the output": _check(not re.search("ERROR|FAIL", output),
                                                 _first_match(r".*(ERROR|FAIL).*", output)),
    }
    checks.update(app.check(folder, done))
    return checks


def load_expected(path: Path = EXPECTED) -> dict[str, dict[str, str]]:
    return json.loads(path.read_text())


# --- the apps' own checks ---------------------------------------------------------------------

_STATUS = {"ok": "pass", "FAIL": "fail", "ERROR": "error", "expected failure": "pass", "unexpected success": "fail"}


def unittest_checks(folder: Path, done: _process.Finished) -> Checks:
    """One check per test, read from unittest's verbose report (``name (id) ... ok``)."""
    checks: Checks = {}
    pending = None
    for line in done.stderr.splitlines():
        head = re.match(r"^(\w+) \(([\w.]+)\)(?: \.\.\. (.*))?$", line)
        status = head.group(3) if head else line.strip()
        if head:
            pending = head.group(2)
        if pending and status is not None:
            outcome = "skip" if status.startswith("skipped") else _STATUS.get(status)
            if outcome is not None:
                checks[pending] = (outcome, status if outcome == "skip" else _failure(done.stderr, pending))
                pending = None
    return checks


def _failure(report: str, test: str) -> str:
    """The exception line of a failed test's traceback in unittest's report, '' if it passed."""
    block = re.search(rf"^(?:ERROR|FAIL): \w+ \({re.escape(test)}\)\n-+\n(.*?)(?:\n=+\n|\n-+\nRan )",
                      report, re.S | re.M)
    return _last_line(block.group(1)) if block else ""


def printed_checks(folder: Path, done: _process.Finished) -> Checks:
    """The ``- <check>: OK|ERROR`` lines the app prints (a repeated name numbered from its second
    line on) and its closing ``- ... FINISHED SUCCESSFULLY.`` line."""
    checks: Checks = {}
    for name, word in re.findall(r"^- (.+?): (OK|ERROR)\s*$", done.stdout, re.M):
        key, n = name, 1
        while key in checks:
            n += 1
            key = f"{name} ({n})"
        checks[key] = _check(word == "OK", word)
    final = re.search(r"^- (.+?) FINISHED (SUCCESSFULLY|WITH ERRORS)\.$", done.stdout, re.M)
    checks["finished successfully"] = _check(bool(final) and final.group(2) == "SUCCESSFULLY",
                                             final.group(0) if final else "not printed")
    return checks


def counters(*expected: str) -> Callable[[str], Checks]:
    """The app's ``Final counter value is ...`` lines, in order, against the values COMPSs gives."""
    def check(stdout: str) -> Checks:
        got = re.findall(r"^Final counter value is (.+?)\s*$", stdout, re.M)
        return {f"printed counter {i + 1}: {want}": _check(i < len(got) and got[i] == want,
                                                          got[i] if i < len(got) else "not printed")
                for i, want in enumerate(expected)}
    return check


def file_checks(folder: Path, script: str, done: _process.Finished,
                expected: dict[str, Callable[[str], bool]]) -> Checks:
    """The files the app wrote under its STORAGE_PATH (read from the app: it is hard-coded there).

    A file older than this run is an earlier run's: it counts as missing.
    """
    storage = Path(re.search(r'^STORAGE_PATH = "(.+)"', (folder / script).read_text(), re.M).group(1))
    out: Checks = {}
    for name, ok in expected.items():
        path = storage / name
        fresh = path.exists() and path.stat().st_mtime >= done.started - 1
        text = path.read_text().strip() if fresh else None
        out[f"file {name}"] = _check(text is not None and ok(text), "missing" if text is None else repr(text[:80]))
    return out


def concurrent_checks(folder: Path, done: _process.Finished) -> Checks:
    writes = {f"file{i}.txt": (lambda text: len(text) == 8) for i in (1, 2)}  # result: 8 writers each
    return {**file_checks(folder, "src/testConcurrentObj.py", done, writes),
            **counters("4 ones and 4twos", "4 three", "4 fours")(done.stdout)}


def commutative_checks(folder: Path, done: _process.Finished) -> Checks:
    values = {1: "31", 2: "2", 3: "2", 4: "1", 5: "1", 6: "9"}  # as result checks them
    files = {f"fileCommutativeTest{i}.txt": (lambda text, v=v: text == v) for i, v in values.items()}
    return {**file_checks(folder, "src/testCommutativeAnnotation.py", done, files),
            **counters("21", "49")(done.stdout)}


APPS = {
    "1_redis_python": App("pscos/1_redis_python", "src/testredis.py", ("src", "src/modules"), unittest_checks),
    "0_dummy_python": App("pscos/0_dummy_python", "src/pscos.py", ("src",), printed_checks, dummy_backend=True),
    "0_annotation_concurrent": App("python/0_annotation_concurrent", "src/testConcurrentObj.py", ("src",),
                                   concurrent_checks, dummy_backend=True),
    "0_annotation_commutative": App("python/0_annotation_commutative", "src/testCommutativeAnnotation.py",
                                    ("src",), commutative_checks, dummy_backend=True),
}


# --- helpers ----------------------------------------------------------------------------------

def _check(ok: bool, detail: str) -> tuple[str, str]:
    return ("pass", "") if ok else ("fail", detail)


def _last_line(text: str) -> str:
    lines = [line for line in text.strip().splitlines() if line.strip()]
    return lines[-1].strip()[:200] if lines else ""


def _first_match(pattern: str, text: str) -> str:
    found = re.search(pattern, text)
    return found.group(0)[:200] if found else ""


class _shared_disk_lock:
    """The annotation apps write to a fixed folder: one app run at a time on this machine."""

    def __enter__(self) -> None:
        self._file = open(Path(tempfile.gettempdir()) / "sa-conformance-apps.lock", "w")
        fcntl.flock(self._file, fcntl.LOCK_EX)

    def __exit__(self, *exc) -> None:
        fcntl.flock(self._file, fcntl.LOCK_UN)
        self._file.close()
