"""The COMPSs bundle: the ``storage.StorageItf`` jar, built with plain ``javac``/``jar``, plus the layout
``runcompss --storage_impl=<name>`` expects under ``$COMPSS_HOME/Tools/storage/<name>/``::

    storage-api-compss.jar        storage/StorageItf, storage/StorageException, storageapi/* only
    python/storage/               storage.api (PyCOMPSs' entry point)
    python/storage_api/           the store itself, so --pythonpath=DEST/python is self-contained
    scripts/storage_init.sh       enqueue_compss --storage_home=DEST
    scripts/storage_stop.sh
    scripts/_run.sh               what both scripts run (sourced)
    scripts/bundle.env            the Python interpreter that built the bundle (the scripts use it)
    storage_props.example         every storage conf / props key with its default

Bytecode targets Java 8 (``--release 8``): COMPSs 3.3 runs on Java 8 and later, and Java 8 class
files load in every newer JVM (dataClay's StorageItf jar does the same). The other COMPSs
``storage.*`` classes the jar compiles against (``CallbackHandler``, ``CallbackEvent``, ...) are
test-only stand-ins: at run time COMPSs' own come from ``compss-engine.jar``.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from ..errors import StoreError, UsageError

JAVA_DIR = Path(__file__).resolve().parent / "java"
SCRIPTS_DIR = Path(__file__).resolve().parent / "scripts"
JAR_NAME = "storage-api-compss.jar"
RELEASE = "8"
# Stand-ins of the COMPSs interfaces StorageItf is compiled against (COMPSs provides the real ones
# at run time, so the jar leaves them out).
STAND_INS = ("StubItf", "StorageObject", "CallbackHandler", "CallbackEvent")


class BuildError(StoreError):
    """The Java side could not be built (no JDK, a compile error, missing JUnit)."""


def default_build_dir() -> Path:
    """``build/java`` in a source checkout (gitignored), else a per-user cache directory."""
    root = Path(__file__).resolve().parents[2]
    if (root / "pyproject.toml").exists() and os.access(root, os.W_OK):
        return root / "build" / "java"
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "storage-api" / "java"


def sources(directory: Path) -> list[Path]:
    return sorted(directory.rglob("*.java"))


def stand_ins() -> list[Path]:
    """The sources of the COMPSs stand-ins (see STAND_INS)."""
    return [JAVA_DIR / "compss" / "storage" / f"{name}.java" for name in STAND_INS]


def _run(cmd: list[str]) -> None:
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True)
    except FileNotFoundError as exc:
        raise BuildError(f"{cmd[0]} not found: install a JDK (apt install openjdk-17-jdk-headless)") from exc
    if proc.returncode:
        raise BuildError(f"{' '.join(cmd[:3])} ... failed:\n{proc.stdout}{proc.stderr}")


def javac(out: Path, classpath: list[Path], files: list[Path]) -> None:
    """Compile ``files`` for Java 8 into ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    cmd = ["javac", "--release", RELEASE, "-Xlint:-options", "-encoding", "UTF-8", "-d", str(out)]
    if classpath:
        cmd += ["-cp", os.pathsep.join(map(str, classpath))]
    _run(cmd + [str(s) for s in files])


def stale(target: Path, files: list[Path]) -> bool:
    """Whether ``target`` is missing or older than one of ``files``."""
    return not target.exists() or any(s.stat().st_mtime > target.stat().st_mtime for s in files)


def build_jar(build_dir: Path | None = None) -> Path:
    """Compile the main sources against the stand-ins and jar only our classes; return the jar.

    Rebuilt only when a source is newer than the jar; the jar is replaced atomically, so concurrent
    builders never see half a file.
    """
    build = Path(build_dir or default_build_dir())
    jar = build / JAR_NAME
    main = sources(JAVA_DIR / "main")
    if not stale(jar, main + stand_ins()):
        return jar
    build.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=build) as tmp:
        t = Path(tmp)
        javac(t / "stand-ins", [], stand_ins())
        javac(t / "classes", [t / "stand-ins"], main)
        _run(["jar", "cf", str(t / JAR_NAME), "-C", str(t / "classes"), "."])
        os.replace(t / JAR_NAME, jar)
    return jar


def make_bundle(dest: str | os.PathLike[str], build_dir: Path | None = None) -> Path:
    """Assemble the bundle in ``dest`` (created; existing bundle files are replaced)."""
    from ._conf import CONF_KEYS, PROPS_KEYS

    d = Path(dest).resolve()
    if d.exists() and not d.is_dir():
        raise UsageError(f"{dest} is a file: DEST names the bundle's directory (made if it does not exist)")
    try:
        d.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UsageError(f"cannot make the bundle directory {d}: {exc.strerror}") from None
    shutil.copy2(build_jar(build_dir), d / JAR_NAME)
    pkg_root = Path(__file__).resolve().parents[2]
    python = d / "python"
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "java")
    for name in ("storage", "storage_api"):
        src = pkg_root / name
        if not (src / "__init__.py").exists():
            raise BuildError(f"package {name} not found next to storage_api ({src})")
        shutil.rmtree(python / name, ignore_errors=True)
        shutil.copytree(src, python / name, ignore=ignore)
    scripts = d / "scripts"
    scripts.mkdir(exist_ok=True)
    for script in ("storage_init.sh", "storage_stop.sh", "_run.sh"):
        shutil.copy2(SCRIPTS_DIR / script, scripts / script)
        os.chmod(scripts / script, 0o755)
    (scripts / "bundle.env").write_text(f"SA_BUNDLE_PYTHON={sys.executable}\n")
    lines = ["# storage_api: storage conf (runcompss --storage_conf) and props (enqueue_compss --storage_props).",
             "# Every key is optional (an empty file works); unknown keys are errors, and props-only keys",
             "# are unknown in a conf. Defaults shown.", "", "# --- conf and props"]
    lines += [f"# {k}={v}    # {doc}" for k, (v, doc) in CONF_KEYS.items()]
    lines += ["", "# --- props only (storage_init.sh)"]
    lines += [f"# {k}={v}    # {doc}" for k, (v, doc) in PROPS_KEYS.items()]
    (d / "storage_props.example").write_text("\n".join(lines) + "\n")
    return d
