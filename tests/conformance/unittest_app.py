"""Run unittest modules as an application and write each test's outcome to a JSON file.

    python unittest_app.py OUT.json MODULE [MODULE ...]

It is the app the conformance harness runs in both modes (plain ``python`` with the sequential
``pycompss`` stand-in, and ``storage-api run``), so it imports nothing but the standard library
and the modules under test. OUT.json is rewritten after every test, with the test that is running
named in it, so a run killed by its timeout still tells which test hung and what ran before.
"""

from __future__ import annotations

import json
import os
import sys
import time
import unittest


def first_line(text: str) -> str:
    lines = str(text).strip().splitlines()
    return lines[0] if lines else ""


def describe(err: tuple) -> str:
    """The exception's type and first line, e.g. ``ValueError: bad shape``."""
    exc_type, exc, _tb = err
    line = first_line(str(exc))
    return f"{exc_type.__name__}: {line}" if line else exc_type.__name__


class RecordingResult(unittest.TextTestResult):
    """A text result that also keeps {test id: {outcome, message, seconds}} and saves it as it goes."""

    def __init__(self, out_path: str, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.out_path = out_path
        self.outcomes: dict[str, dict] = {}
        self.running: str | None = None
        self._started = 0.0

    def _record(self, test: unittest.TestCase, outcome: str, message: str = "") -> None:
        previous = self.outcomes.get(test.id())
        # A test with subtests keeps its worst outcome; a later "pass" does not hide a failure.
        if previous is not None and previous["outcome"] != "pass" and outcome == "pass":
            return
        self.outcomes[test.id()] = {"outcome": outcome, "message": message,
                                    "seconds": round(time.monotonic() - self._started, 3)}

    def save(self) -> None:
        tmp = self.out_path + ".tmp"
        with open(tmp, "w") as f:
            json.dump({"tests": self.outcomes, "running": self.running}, f, indent=1, sort_keys=True)
        os.replace(tmp, self.out_path)

    def startTest(self, test: unittest.TestCase) -> None:
        self.running, self._started = test.id(), time.monotonic()
        self.save()
        super().startTest(test)

    def stopTest(self, test: unittest.TestCase) -> None:
        super().stopTest(test)
        # A test stopped by an interrupt (the harness's time limit) has no outcome: it stays
        # "running", which is how the harness learns which test hung.
        if test.id() in self.outcomes:
            self.running = None
        self.save()

    def addSuccess(self, test):
        super().addSuccess(test)
        self._record(test, "pass")

    def addFailure(self, test, err):
        super().addFailure(test, err)
        self._record(test, "fail", describe(err))

    def addError(self, test, err):
        super().addError(test, err)
        self._record(test, "error", describe(err))

    def addSkip(self, test, reason):
        super().addSkip(test, reason)
        self._record(test, "skip", first_line(reason))

    def addExpectedFailure(self, test, err):
        super().addExpectedFailure(test, err)
        self._record(test, "pass", "expected failure")

    def addUnexpectedSuccess(self, test):
        super().addUnexpectedSuccess(test)
        self._record(test, "fail", "unexpected success")

    def addSubTest(self, test, subtest, err):
        super().addSubTest(test, subtest, err)
        if err is not None:
            failed = issubclass(err[0], test.failureException)
            self._record(test, "fail" if failed else "error", describe(err))


def main(argv: list[str]) -> int:
    if len(argv) < 2:
        print(__doc__.strip().splitlines()[2].strip(), file=sys.stderr)
        return 2
    out_path, modules = argv[0], argv[1:]
    suite = unittest.TestLoader().loadTestsFromNames(modules)
    runner = unittest.TextTestRunner(
        verbosity=2, resultclass=lambda *a, **k: RecordingResult(out_path, *a, **k))
    result = runner.run(suite)
    result.save()
    return 0 if result.wasSuccessful() else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
