"""dislib's unit tests, module by module, under the sequential control and under the launcher.

A module runs as an app (``unittest_app.py``) with dislib's test folder as the working directory:
``sequential`` is plain ``python`` with the stand-in ``pycompss`` of ``sequential/`` first on the
path; ``launcher`` is ``storage-api run --workers 2 --pythonpath=<that folder>``. Each gives
{test id: outcome, message}.
"""

from __future__ import annotations

import json
import re
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from . import _process, _suites

APP = _suites.HERE / "unittest_app.py"
SEQUENTIAL = _suites.HERE / "sequential"
EXPECTED = _suites.HERE / "dislib_expected.json"
MODES = ("sequential", "launcher")

# Why a test does not pass under the sequential control: the environment, not the launcher.
# (message pattern, cause); the first that matches names the cause in the expected results.
CAUSES = [
    (r"'bool' object has no attribute 'items'", "cbor2 6: dislib's cbor load_model expects cbor2 < 6"),
    (r"_check_version", "numpy 2.4: numpy.lib.format._check_version is gone"),
    (r"only 0-dimensional arrays can be converted|0-d array", "numpy 2.4: a 1-element array is no longer a scalar"),
    (r"No module named 'torch'|torch", "no torch in this environment"),
    (r"No module named 'pyeddl'|eddl", "no pyeddl (EDDL) in this environment"),
]


@dataclass
class ModuleRun:
    module: str
    mode: str
    tests: dict[str, dict] = field(default_factory=dict)  # test id -> {outcome, message, seconds}
    hung: str | None = None  # the test that was running when the time limit stopped the run
    seconds: float = 0.0
    returncode: int | None = 0
    output_tail: str = ""


def modules() -> list[str]:
    """Every test module of the suite, as ``tests.test_x``."""
    return sorted(f"tests.{p.stem}" for p in (_suites.dislib() / "tests").glob("test_*.py"))


def run(module: str, mode: str, *, timeout: float = 600, workers: int = 2, scheduler: str | None = None) -> ModuleRun:
    """Run dislib's test ``module`` sequentially or through the launcher (``workers`` local Dask
    workers, or those of the Dask ``scheduler`` at that address)."""
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, not {mode!r}")
    cwd = _suites.dislib()
    with tempfile.TemporaryDirectory(prefix="sa-conformance-") as tmp:
        out = Path(tmp) / "outcomes.json"
        if mode == "sequential":
            cmd = [sys.executable, str(APP), str(out), module]
            env = _suites.env([cwd, SEQUENTIAL])
        else:
            # as upstream runs it: runcompss --pythonpath=$(pwd) (the folder holding tests/)
            where = ["--scheduler", scheduler] if scheduler else ["--workers", str(workers)]
            cmd = _suites.storage_api("run", *where, f"--pythonpath={cwd}", str(APP), str(out), module)
            env = _suites.env([], home=Path(tmp))
        done = _process.run(cmd, cwd=cwd, env=env, timeout=timeout)
        saved = json.loads(out.read_text()) if out.exists() else {"tests": {}, "running": None}
    result = ModuleRun(module, mode, saved["tests"], seconds=done.seconds, returncode=done.returncode,
                       output_tail=(done.stdout + done.stderr)[-3000:])
    if done.timed_out:
        result.hung = saved["running"] or "(before the first test)"
    elif not result.tests:
        # The app itself failed (e.g. the module does not import under this mode): one error entry.
        last = (done.stderr.strip().splitlines() or ["no output"])[-1]
        result.tests[f"{module} (app)"] = {"outcome": "error", "message": last}
    return result


def kind(entry: dict) -> tuple[str, str]:
    """What must match between two runs: the outcome and, for failures, the exception's type."""
    outcome = entry["outcome"]
    if outcome in ("fail", "error"):
        return outcome, entry.get("message", "").split(":", 1)[0]
    return outcome, ""


def cause(message: str) -> str:
    return next((why for pattern, why in CAUSES if re.search(pattern, message)), "unclassified")


# --- expected results: the control's outcomes, plus the launcher's known deviations -------------

def load_expected(path: Path = EXPECTED) -> dict:
    return json.loads(path.read_text())


def expectation(control: ModuleRun, launcher: ModuleRun | None = None) -> dict:
    """One module's entry of the expected results: its test count, what does not pass under the
    control (with the cause), and where the launcher is known to differ (empty when it matches)."""
    entry = {"tests": len(control.tests), "not_passing": {}, "launcher_differences": {}}
    for test, got in sorted(control.tests.items()):
        if got["outcome"] != "pass":
            entry["not_passing"][test] = {"outcome": got["outcome"], "message": got["message"][:200],
                                          "cause": cause(got["message"])}
    if launcher is not None:
        for test, want, got in differences(entry, launcher):
            entry["launcher_differences"][test] = {"outcome": got["outcome"], "message": got["message"][:200]}
    return entry


def expected_outcome(entry: dict, test: str, *, launcher: bool) -> dict:
    if launcher and test in entry.get("launcher_differences", {}):
        return entry["launcher_differences"][test]
    return entry["not_passing"].get(test, {"outcome": "pass", "message": ""})


def differences(entry: dict, got: ModuleRun, *, launcher_known: bool = False) -> list[tuple[str, dict, dict]]:
    """(test, expected, got) for every test whose outcome differs from ``entry``'s.

    With ``launcher_known`` the launcher's recorded deviations count as expected. A test missing
    from the run (the run hung or stopped early) differs; so does a test the expectation lacks.
    """
    out = []
    if got.hung is not None:
        out.append((got.hung, {"outcome": "pass", "message": ""},
                    {"outcome": "hang", "message": f"still running after {got.seconds:.0f} s"}))
    names = set(got.tests) | set(entry["not_passing"])
    for test in sorted(names):
        want = expected_outcome(entry, test, launcher=launcher_known)
        have = got.tests.get(test, {"outcome": "missing", "message": "not run"})
        if test != got.hung and kind(want) != kind(have):
            out.append((test, want, have))
    if len(got.tests) != entry["tests"] and got.hung is None:
        out.append((f"{got.module} (test count)", {"outcome": str(entry["tests"]), "message": ""},
                    {"outcome": str(len(got.tests)), "message": ""}))
    return out


def same(entry: dict, got: ModuleRun, *, launcher_known: bool = False) -> int:
    """How many of the run's tests have the expected outcome."""
    return sum(kind(expected_outcome(entry, test, launcher=launcher_known)) == kind(have)
               for test, have in got.tests.items() if test != got.hung)


def environment() -> dict[str, str]:
    """The versions the control's outcomes depend on (the causes above name them)."""
    from importlib import metadata

    out = {"python": sys.version.split()[0]}
    for dist in ("dislib", "numpy", "scipy", "scikit-learn", "cbor2", "torch", "pandas", "parameterized"):
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            out[dist] = "absent"
    return out
