"""Where the third-party suites are, and how their processes are started."""

from __future__ import annotations

import os
import sys
from pathlib import Path

ENV = "SA_CONFORMANCE_DIR"
REPO = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent


class SuitesMissing(RuntimeError):
    """The suites folder (or one suite in it) is not there."""


def root() -> Path:
    """The suites folder: $SA_CONFORMANCE_DIR, else ``shared/conformance`` beside the checkout."""
    return Path(os.environ.get(ENV) or REPO.parent / "shared" / "conformance").resolve()


def suite(relative: str) -> Path:
    path = root() / relative
    if not path.is_dir():
        raise SuitesMissing(f"{path} is not there (set {ENV} to the folder holding the conformance suites)")
    return path


def dislib() -> Path:
    """The folder holding dislib's ``tests/`` (its tests read ``tests/datasets`` relative to it)."""
    return suite("dislib-1.0.0")


def compss_apps() -> Path:
    return suite("compss-storage-tests/tests/sources/local")


def env(pythonpath: list[str | Path], home: Path | None = None) -> dict[str, str]:
    """This environment with PYTHONPATH = ``pythonpath`` then this checkout (so its code is used).

    The paths come first: dislib's ``tests`` package must win over this repository's.
    """
    out = dict(os.environ)
    out["PYTHONPATH"] = os.pathsep.join([*map(str, pythonpath), str(REPO)])
    out.pop("PYTHONSTARTUP", None)
    if home is not None:
        out["HOME"] = out["STORAGE_API_HOME"] = str(home)
    return out


def storage_api(*args: str) -> list[str]:
    """The ``storage-api`` command of this checkout, run by this interpreter."""
    return [sys.executable, "-m", "storage_api", *args]
