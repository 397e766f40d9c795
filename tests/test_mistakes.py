"""A newcomer's mistakes: each ends with one line saying what was wrong and what to do, exit status
2 (130 for Ctrl-C), no traceback unless asked for, and nothing left running or on disk.

Every command runs in a fresh process with a marker in its environment; the processes it starts
(Redis, backends, workers) inherit it, so "nothing left running" is checked by looking for the
marker in every process's environment afterwards. ``STORAGE_API_HOME`` and ``TMPDIR`` point into
the test's directory, so "nothing left on disk" is checked there.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from storage_api._metadata import Metadata
from storage_api._redis import Redis
from tests.conftest import ROOT

UNREACHABLE_REDIS = "redis://127.0.0.1:1/0"  # configured but never reached: any connection attempt fails
USAGE_PREFIX = "usage: "


class Run:
    """One command in a marked environment; ``check_clean`` asserts it left nothing behind."""

    def __init__(self, tmp_path: Path, **env: str) -> None:
        self.marker = uuid.uuid4().hex
        self.home = tmp_path / "home"
        self.tmp = tmp_path / "tmp"
        self.tmp.mkdir()
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("STORAGE_API_")}
        self.env.update(STORAGE_API_HOME=str(self.home), TMPDIR=str(self.tmp), PYTHONPATH=str(ROOT),
                        SA_TEST_MARKER=self.marker, **env)

    def __call__(self, *cmd: str, timeout: float = 120, clean: bool = True) -> subprocess.CompletedProcess:
        proc = subprocess.run(list(cmd), capture_output=True, text=True, cwd=ROOT, env=self.env, timeout=timeout)
        if clean:
            self.check_clean()
        return proc

    def into_closed_pipe(self, *cmd: str, timeout: float = 120, stderr: bool = False) -> subprocess.CompletedProcess:
        """The command with its stdout (and ``stderr``: its stderr too) a pipe whose reader has
        gone (``CMD | head -0``, ``CMD 2>&1 | head -0``)."""
        read, write = os.pipe()
        os.close(read)
        try:
            return subprocess.run(list(cmd), stdout=write, stderr=write if stderr else subprocess.PIPE, text=True,
                                  cwd=ROOT, env=self.env, timeout=timeout)
        finally:
            os.close(write)

    def popen(self, *cmd: str) -> subprocess.Popen:
        return subprocess.Popen(list(cmd), stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=ROOT, env=self.env,
                                start_new_session=True)

    def check_clean(self) -> None:
        deadline = time.monotonic() + 10  # processes being stopped may take a moment to be reaped
        while (left := marked_processes(self.marker)) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not left, f"left running: {left}"
        assert not (self.home / "local" / "deployment.json").exists(), "a deployment was left up"
        # torch makes its (empty) compile cache directory there on import, as a cache it keeps
        left = [p for p in self.tmp.iterdir() if not p.name.startswith("torchinductor_")]
        assert not left, f"left in TMPDIR: {left}"


def marked_processes(marker: str) -> list[str]:
    """Command lines of the live processes whose environment holds ``marker``."""
    found = []
    needle = f"SA_TEST_MARKER={marker}".encode()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if needle in (entry / "environ").read_bytes().split(b"\0"):
                found.append((entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace"))
        except OSError:  # gone meanwhile, or a zombie whose environment is no longer readable
            continue
    return found


def one_line(stderr: str) -> str:
    """The line a mistake ends with; asserts there is no traceback before it."""
    assert "Traceback" not in stderr, stderr
    lines = stderr.strip().splitlines()
    for line in lines[:-1]:  # argparse's usage lines may come first, nothing else
        assert line.startswith((USAGE_PREFIX, " ")), stderr
    return lines[-1]


def cli(*args: str) -> tuple[str, ...]:
    return (sys.executable, "-m", "storage_api", *args)


def app(name: str, *args: str) -> tuple[str, ...]:
    return (sys.executable, f"apps/{name}", *args)


@pytest.fixture
def run(tmp_path: Path) -> Run:
    return Run(tmp_path)


# ----------------------------------------------------------------------- missing files
def test_run_of_a_missing_app(run: Run) -> None:
    proc = run(*cli("run", "--workers", "2", "nonexistent.py"))
    assert proc.returncode == 2
    assert one_line(proc.stderr) == "storage-api run: error: argument app: no such file: nonexistent.py"


def test_lstm_csv_missing_or_a_directory(run: Run, tmp_path: Path) -> None:
    proc = run(*app("lstm_offload.py", "--csv", "/nonexistent"))
    assert proc.returncode == 2
    assert one_line(proc.stderr) == "lstm_offload: error: argument --csv: no such file: /nonexistent"
    proc = run(*app("lstm_offload.py", "--csv", str(tmp_path)))
    assert proc.returncode == 2
    assert one_line(proc.stderr) == f"lstm_offload: error: argument --csv: {tmp_path} is not a file"


def test_bad_csv_is_refused_before_connecting(tmp_path: Path) -> None:
    """The CSV is checked on the client first: with a configured Redis that cannot be reached, the
    message is still the CSV's (a connection attempt would have failed first)."""
    run = Run(tmp_path, STORAGE_API_REDIS_URL=UNREACHABLE_REDIS, STORAGE_API_SECRET="s")
    binary = tmp_path / "binary.csv"
    binary.write_bytes(b"timestamp,CPU,MEM\n\xa1\xff\x00\x01")
    proc = run(*app("lstm_offload.py", "--csv", str(binary)))
    assert proc.returncode == 2
    assert one_line(proc.stderr) == (f"lstm_offload: NotText: {binary} is not a UTF-8 text file (byte 18); "
                                     "expected a CSV with timestamp,CPU,MEM columns")
    columns = tmp_path / "columns.csv"
    columns.write_text("time,cpu_pct,mem_pct\n1,2,3\n")
    proc = run(*app("lstm_offload.py", "--csv", str(columns)))
    assert proc.returncode == 2
    assert one_line(proc.stderr) == (f"lstm_offload: MissingColumns: {columns} lacks column(s) timestamp, CPU, MEM "
                                     "(header: time,cpu_pct,mem_pct)")
    proc = run(*app("lstm_baseline.py", "--csv", str(columns)))  # the baseline checks it before importing torch
    assert proc.returncode == 2 and one_line(proc.stderr).startswith("lstm_baseline: MissingColumns: ")


# ----------------------------------------------------------------------- wrong flags
@pytest.mark.parametrize("cmd, line", [
    (app("lstm_offload.py", "--epochs", "0"), "lstm_offload: error: argument --epochs: must be at least 1, not 0"),
    (app("lstm_offload.py", "--epochs", "-1"), "lstm_offload: error: argument --epochs: must be at least 1, not -1"),
    (app("lstm_offload.py", "--passes", "3"),
     "lstm_offload: error: argument --passes: invalid choice: 3 (choose from 1, 2)"),
    (cli("up", "--backends", "0"), "storage-api up: error: argument --backends: must be at least 1, not 0"),
    (cli("run", "--workers", "0", "apps/csvm.py"),
     "storage-api run: error: argument --workers: must be at least 1, not 0"),
    (cli("run", "--workers", "2", "apps/csvm.py", "--processors", "0", "--cores-per-processor", "1"),
     "csvm: error: argument --processors: must be at least 1, not 0"),
    (cli("run", "--workers", "2", "apps/csvm.py", "--arity", "1"), "csvm: error: argument --arity: must be at least 2, not 1"),
], ids=["epochs-0", "epochs-negative", "passes-3", "up-no-backends", "run-no-workers", "csvm-no-processors",
        "csvm-arity-1"])
def test_wrong_flags(tmp_path: Path, cmd: tuple[str, ...], line: str) -> None:
    run = Run(tmp_path, STORAGE_API_REDIS_URL=UNREACHABLE_REDIS, STORAGE_API_SECRET="s")
    proc = run(*cmd)
    assert proc.returncode == 2
    assert one_line(proc.stderr) == line
    assert proc.stderr.startswith(USAGE_PREFIX)  # the usage line says what the command takes


# ----------------------------------------------------------------------- no deployment, unknown backends
def test_nothing_up(run: Run) -> None:
    no_redis = ("ConfigError: no metadata Redis configured: run `storage-api up`, or set STORAGE_API_REDIS_URL "
                "(or redis_url in the file named by STORAGE_API_CONFIG; a client without Redis needs backends and "
                "a credential: see `storage-api credential issue`)")
    proc = run(*cli("status"))
    assert proc.returncode == 2 and one_line(proc.stderr) == f"storage-api: {no_redis}"
    proc = run(*cli("run", "--workers", "2", "apps/csvm.py", "--processors", "1", "--cores-per-processor", "1",
                    "--storage"))
    assert proc.returncode == 2 and one_line(proc.stderr) == f"csvm: {no_redis}"
    proc = run(*cli("credential", "issue", "sensor-7", "--out", str(run.tmp / "sensor-7")))
    assert proc.returncode == 2 and one_line(proc.stderr) == f"storage-api: {no_redis}"
    assert not (run.tmp / "sensor-7").exists()


# ----------------------------------------------------------------------- up: checked before anything starts
@pytest.mark.parametrize("args, line", [
    (("--redis-server", "/nope/redis"), "storage-api: ConfigError: redis-server /nope/redis: no such file"),
    (("--redis-server", "/etc"), "storage-api: ConfigError: redis-server /etc: not an executable file"),
    (("--redis-server", "nosuch-redis"),
     "storage-api: ConfigError: redis-server nosuch-redis: no such file or command on PATH"),
    (("--dir", "/proc/nope"),
     "storage-api: DeploymentError: cannot make the deployment directory /proc/nope: No such file or directory"),
    (("--log-level", "LOUD"), "storage-api up: error: argument --log-level: invalid choice: 'LOUD' "
                              "(choose from 'DEBUG', 'INFO', 'WARNING', 'ERROR', 'CRITICAL')"),
], ids=["redis-server-missing", "redis-server-a-directory", "redis-server-not-on-path", "dir-impossible",
        "log-level-unknown"])
def test_up_mistakes_start_nothing(run: Run, args: tuple[str, ...], line: str) -> None:
    proc = run(*cli("up", *args))
    assert proc.returncode == 2
    assert one_line(proc.stderr) == line
    assert not run.home.exists()  # not even the deployment's directory was made


def test_settings_and_arguments_that_cannot_mean_anything(run: Run, tmp_path: Path) -> None:
    """Bad bytes in a settings file, a timeout of nan or inf, an impossible storage directory, a
    negative count: one line, status 2, whatever command reads them."""
    binary = tmp_path / "binary.toml"
    binary.write_bytes(b"\xff\xfe\x00junk = 1\n")
    proc = run(*cli("status", "--config", str(binary)))
    assert proc.returncode == 2 and one_line(proc.stderr).startswith(
        f"storage-api: ConfigError: config file {binary} is not valid TOML: "), proc.stderr
    for value in ("nan", "inf", "-inf"):
        (tmp_path / value).mkdir()
        env_run = Run(tmp_path / value, STORAGE_API_CONNECT_TIMEOUT=value)
        proc = env_run(*cli("status"))
        assert proc.returncode == 2 and one_line(proc.stderr) == (
            f"storage-api: ConfigError: STORAGE_API_CONNECT_TIMEOUT: connect_timeout must be a float, got {value!r}")
    proc = run(*cli("backend", "--storage-dir", "/proc/1/nope", "--redis", "redis://127.0.0.1:1/0", "--secret-file",
                    str(binary)))
    assert proc.returncode == 2 and one_line(proc.stderr) == (
        "storage-api: ConfigError: cannot create the storage directory /proc/1/nope: No such file or directory")
    proc = run(*cli("status", "--objects", "-1"))
    assert proc.returncode == 2 and one_line(proc.stderr) == (
        "storage-api status: error: argument --objects: must be at least 0, not -1")


def test_a_redis_server_that_fails_is_reported_with_this_start_s_log_only(run: Run) -> None:
    """The log of Redis is appended to at each start: the failure quotes this start's lines, not a
    previous run's (here: a binary that exits at once and writes nothing)."""
    logs = run.home / "local" / "logs"
    logs.mkdir(parents=True)
    (logs / "redis.log").write_text("* Ready to accept connections tcp\n# Redis is now ready to exit, bye bye...\n")
    proc = run(*cli("up", "--redis-server", "/bin/true"))
    assert proc.returncode == 2
    assert one_line(proc.stderr) == (f"storage-api: DeploymentError: /bin/true did not start: it exited with status "
                                     f"0, writing nothing to {logs / 'redis.log'}")


def test_compss_bundle_onto_a_file_or_an_impossible_path(run: Run, tmp_path: Path) -> None:
    taken = tmp_path / "few.csv"
    taken.write_text("a,b\n")
    proc = run(*cli("compss-bundle", str(taken)))
    assert proc.returncode == 2
    assert one_line(proc.stderr) == (f"storage-api: {taken} is a file: DEST names the bundle's directory (made if it "
                                     "does not exist)")
    assert taken.read_text() == "a,b\n"
    proc = run(*cli("compss-bundle", "/proc/x/y"))
    assert proc.returncode == 2
    assert one_line(proc.stderr) == "storage-api: cannot make the bundle directory /proc/x/y: No such file or directory"


def test_revoking_an_unknown_credential(cluster, run: Run) -> None:
    run.env["STORAGE_API_CONFIG"] = str(cluster.dep.config_path)
    proc = run(*cli("credential", "revoke", "nosuch"))
    assert proc.returncode == 2
    assert one_line(proc.stderr) == ("storage-api: no valid credential named 'nosuch' (never issued, or revoked "
                                     "already): `storage-api credential list` lists the valid ones")


def test_certificates_are_made_among_the_deployment_s_files(run: Run, tmp_path: Path) -> None:
    """The openssl extensions file of a backend's certificate lies among the deployment's files and is
    gone once the certificate is made: an interrupted start leaves nothing in the temporary directory.
    (An openssl on PATH records where it was told to read it, then runs the real one.)"""
    record, bin_dir = tmp_path / "extfiles", tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "openssl").write_text(
        "#!/bin/sh\nprev=\nfor a in \"$@\"; do [ \"$prev\" = -extfile ] && echo \"$a\" >> " + str(record)
        + "; prev=$a; done\nexec " + shutil.which("openssl") + " \"$@\"\n")
    (bin_dir / "openssl").chmod(0o755)
    run.env["PATH"] = f"{bin_dir}{os.pathsep}{run.env['PATH']}"
    up = run(*cli("up", "--backends", "1"), clean=False)
    try:
        assert up.returncode == 0, up.stderr
        [extfile] = record.read_text().split()
        assert Path(extfile).parent == run.home / "local" / "backends" / "b0" / "tls"
        assert not Path(extfile).exists()
    finally:
        run(*cli("down", "--purge"))


# ----------------------------------------------------------------------- a reader that goes away
@pytest.mark.parametrize("stderr", [False, True], ids=["stdout", "stdout-and-stderr"])
def test_a_closed_stdout_neither_fails_a_command_nor_cuts_it_short(run: Run, stderr: bool) -> None:
    """`up | head -0` (and `up 2>&1 | head -0`): `up` still starts the whole deployment and says so
    with its status (0), and `status` into a closed pipe ends with the status of what it found, no
    traceback either way."""
    up = run.into_closed_pipe(*cli("up", "--backends", "1"), stderr=stderr)
    assert up.returncode == 0
    if not stderr:
        assert "Traceback" not in up.stderr and up.stderr.splitlines()[-1] == "storage-api: 1 backends serving"
    try:
        for args in (("status",), ("status", "--json")):
            status = run.into_closed_pipe(*cli(*args))
            assert status.returncode == 0 and status.stderr == "", status.stderr
        table = run(*cli("status"), clean=False)
        assert table.returncode == 0 and table.stdout.splitlines()[1].split()[6] == "yes"
    finally:
        down = run(*cli("down", "--purge"))
    assert down.returncode == 0 and down.stdout.startswith(f"deployment in {run.home / 'local'} stopped")


@pytest.mark.slow
def test_unknown_backend(run: Run) -> None:
    """Nothing configured: the app starts an embedded deployment (one backend, b0), refuses the
    name before building anything on it, and stops the deployment."""
    proc = run(*app("lstm_offload.py", "--backend", "nope", "--epochs", "1"))
    assert proc.returncode == 2
    assert one_line(proc.stderr) == ("lstm_offload: --backend nope: no live backend of that name (live: b0; "
                                     "`storage-api status` lists them)")


# ----------------------------------------------------------------------- running an app the wrong way
def test_csvm_without_the_launcher(run: Run) -> None:
    proc = run(*app("csvm.py", "--processors", "1", "--cores-per-processor", "1"))
    assert proc.returncode == 2
    assert one_line(proc.stderr) == ("csvm: PyCOMPSs is not importable: run the app with `storage-api run "
                                     "apps/csvm.py [ARGS]` (storage-api's executor), or under COMPSs with runcompss")


def test_debug_shows_the_traceback(run: Run) -> None:
    proc = run(*cli("--debug", "status"))
    assert proc.returncode == 1 and "Traceback" in proc.stderr
    assert proc.stderr.strip().splitlines()[-1].startswith("storage_api.errors.ConfigError: no metadata Redis")
    run.env["STORAGE_API_DEBUG"] = "1"
    proc = run(*app("csvm.py"))
    assert proc.returncode == 1 and proc.stderr.strip().splitlines()[-1].startswith(
        "storage_api.errors.UsageError: PyCOMPSs is not importable")


# ----------------------------------------------------------------------- Ctrl-C
def _interrupt_when(proc: subprocess.Popen, text: bytes, timeout: float = 120, sig: int = signal.SIGINT) -> bytes:
    """Send SIGINT to the command's process group (as a terminal's Ctrl-C) once stderr shows ``text``
    (another ``sig``: to the command's process alone, as ``kill`` or ``timeout`` do)."""
    os.set_blocking(proc.stderr.fileno(), False)
    seen = b""
    deadline = time.monotonic() + timeout
    while text not in seen:
        assert proc.poll() is None and time.monotonic() < deadline, seen.decode(errors="replace")
        seen += proc.stderr.read() or b""
        time.sleep(0.05)
    if sig == signal.SIGINT:
        os.killpg(proc.pid, sig)
    else:
        os.kill(proc.pid, sig)
    proc.wait(timeout=60)
    os.set_blocking(proc.stderr.fileno(), True)
    return seen + proc.stderr.read()


NAPPING_APP = ("import sys, time\n"
               "from pycompss.api.task import task\n"
               "from pycompss.api.api import compss_wait_on\n"
               "@task(returns=1)\n"
               "def nap(n):\n"
               "    time.sleep(n)\n"
               "    return n\n"
               "futures = [nap(60) for _ in range(2)]\n"
               "print('napping', file=sys.stderr, flush=True)\n"
               "compss_wait_on(futures)\n")


def test_ctrl_c_in_an_executor_run(run: Run, tmp_path: Path) -> None:
    """Ctrl-C while tasks run on the local Dask workers: one line from the launcher, no traceback
    from any worker, and the workers are stopped at once (their task would sleep for a minute)."""
    script = tmp_path / "slow.py"
    script.write_text(NAPPING_APP)
    proc = run.popen(*cli("run", "--workers", "2", str(script)))
    started = time.monotonic()
    stderr = _interrupt_when(proc, b"napping").decode()
    assert time.monotonic() - started < 50
    assert proc.returncode == 130
    lines = stderr.strip().splitlines()
    notice = [line for line in lines if line.startswith("storage-api run: ")]  # where the tasks go, the dashboard
    assert len(notice) == 1 and "Dask (2 local workers); dashboard: http" in notice[0], stderr
    assert [line for line in lines if line not in notice] == ["napping", "storage-api: interrupted"]
    run.check_clean()


@pytest.mark.parametrize("delay", [0.3, 1.0])
def test_sigterm_while_the_workers_start_ends_the_run(run: Run, tmp_path: Path, delay: float) -> None:
    """SIGTERM while the run is starting its Dask workers: the run ends (status 143) and leaves
    nothing: its handler never waits for the start."""
    script = tmp_path / "slow.py"
    script.write_text(NAPPING_APP)
    proc = run.popen(*cli("run", "--workers", "2", str(script)))
    time.sleep(delay)
    os.kill(proc.pid, signal.SIGTERM)
    proc.wait(timeout=60)
    assert proc.returncode == 143, proc.stderr.read().decode()
    run.check_clean()


def test_sigterm_of_an_executor_run_stops_its_workers(run: Run, tmp_path: Path) -> None:
    """SIGTERM to the launcher alone (``timeout``, ``scancel``): its workers are stopped too (they
    were left running, orphaned, until their task ended)."""
    script = tmp_path / "slow.py"
    script.write_text(NAPPING_APP)
    proc = run.popen(*cli("run", "--workers", "2", str(script)))
    stderr = _interrupt_when(proc, b"napping", sig=signal.SIGTERM).decode()
    assert proc.returncode == 143, stderr
    assert stderr.strip().splitlines()[-1] == "terminated (SIGTERM): the run's workers are stopped"
    run.check_clean()


@pytest.mark.slow
def test_ctrl_c_during_a_csvm_run_deletes_its_blocks(cluster, run: Run) -> None:
    """Ctrl-C once the app has made blocks on the backends: one line, status 130, no block left."""
    client = cluster.client()
    blocks = lambda: {o.id for o in client.meta.objects() if o.class_path.endswith(".PersistentBlock")}  # noqa: E731
    try:
        before = blocks()
        run.env["STORAGE_API_CONFIG"] = str(cluster.dep.config_path)
        proc = run.popen(*cli("run", "--workers", "2", "apps/csvm.py", "--processors", "2", "--cores-per-processor",
                              "1", "--storage"))
        deadline = time.monotonic() + 120
        while not blocks() - before:
            assert proc.poll() is None and time.monotonic() < deadline, proc.stderr.read().decode()
            time.sleep(0.05)
        os.killpg(proc.pid, signal.SIGINT)
        _, stderr = proc.communicate(timeout=120)
        assert proc.returncode == 130
        assert one_line(stderr.decode()) == "csvm: interrupted"
        run.check_clean()
        assert blocks() == before
    finally:
        client.close()


@pytest.mark.slow
def test_ctrl_c_during_a_training(run: Run) -> None:
    """Ctrl-C while the LSTM trains on the embedded deployment: one line, status 130, and the
    deployment (Redis, the backend, its temporary directory) is gone."""
    proc = run.popen(*app("lstm_offload.py", "--epochs", "500"))
    stderr = _interrupt_when(proc, b"pass=1 of 2").decode()
    assert proc.returncode == 130
    assert "Traceback" not in stderr
    assert stderr.replace("\r", "\n").strip().splitlines()[-1] == "lstm_offload: interrupted"  # after the bar
    run.check_clean()


@pytest.mark.slow  # the backend imports torch
def test_ctrl_c_during_a_training_on_a_running_deployment_stops_it_and_deletes_the_trainer(run: Run) -> None:
    """On a deployment the app did not start, Ctrl-C must not leave the backend training for
    nobody: the interrupted call's connection closes, the training stops at its next epoch, the
    trainer is deleted before the app exits, and the backend is free for the next call."""
    up = run(*cli("up", "--backends", "1"), clean=False)
    assert up.returncode == 0, up.stderr
    try:
        proc = run.popen(*app("lstm_offload.py", "--epochs", "500"))
        stderr = _interrupt_when(proc, b"pass=1 of 2").decode()
        assert proc.returncode == 130, stderr
        assert "deleting the trainer" in stderr and "may be left" not in stderr, stderr
        listing = json.loads(run(*cli("status", "--json"), clean=False).stdout)
        assert listing["objects"] == [] and [b["objects"] for b in listing["backends"]] == [0]
    finally:
        assert run(*cli("down", "--purge"), clean=False).returncode == 0
    run.check_clean()


# ----------------------------------------------------------------------- down says what it keeps
def test_down_says_what_it_keeps_and_purge_deletes_it(run: Run) -> None:
    local = run.home / "local"
    up = run(*cli("up", "--backends", "1"), clean=False)
    assert up.returncode == 0, up.stderr
    down = run(*cli("down"))
    assert down.returncode == 0
    size = down.stdout.split("(")[1].split(":")[0]
    keeps = (f"its data stays on disk for the next `storage-api up` ({size}: objects in backends/, metadata in "
             "redis/, logs/): `storage-api down --purge` deletes it\n")
    assert re.fullmatch(r"\d+\.\d (kB|MB)", size) and down.stdout == f"deployment in {local} stopped; {keeps}"
    assert (local / "backends" / "b0").is_dir() and (local / "redis").is_dir()
    again = run(*cli("down"))  # nothing running: it still says what is on disk
    assert again.stdout == f"no deployment running in {local}; {keeps}"
    purge = run(*cli("down", "--purge"))  # nothing running: --purge still deletes the data
    assert purge.returncode == 0
    assert purge.stdout == f"no deployment running in {local}; its data ({size}) deleted\n"
    assert not local.exists()
    assert run(*cli("down", "--purge")).stdout == f"no deployment running in {local}\n"


def test_down_purge_deletes_only_what_a_deployment_writes(run: Run, tmp_path: Path) -> None:
    elsewhere = tmp_path / "mine"
    elsewhere.mkdir()
    (elsewhere / "notes.txt").write_text("not the store's")
    (elsewhere / "logs").mkdir()
    (elsewhere / "logs" / "b0.log").write_text("x" * 10_000)
    proc = run(*cli("down", "--purge", "--dir", str(elsewhere)))
    assert proc.returncode == 0 and proc.stdout.startswith(f"no deployment running in {elsewhere}; its data (")
    assert [p.name for p in elsewhere.iterdir()] == ["notes.txt"]


# ----------------------------------------------------------------------- status lists backends in natural order
@contextlib.contextmanager
def _scratch_registry(cluster, run: Run) -> Iterator[Metadata]:
    """A namespace of the shared Redis of its own, which ``run``'s commands read; emptied after."""
    settings = cluster.settings()
    namespace = f"scratch-{uuid.uuid4().hex[:8]}"
    meta = Metadata(Redis(settings.redis_url), namespace)
    run.env.update(STORAGE_API_REDIS_URL=settings.redis_url, STORAGE_API_SECRET="s", STORAGE_API_NAMESPACE=namespace)
    try:
        yield meta
    finally:
        keys = meta.redis.execute("KEYS", f"{namespace}:*")
        if keys:
            meta.redis.execute("DEL", *keys)
        meta.redis.close()


def test_status_lists_backends_in_natural_order(cluster, run: Run) -> None:
    with _scratch_registry(cluster, run) as meta:
        for name in ("b10", "b2", "b1"):
            meta.register_backend({"id": uuid.uuid4().hex, "name": name, "host": "127.0.0.1", "port": 1,
                                   "compss_name": name, "pid": 1}, ttl=60)
        proc = run(*cli("status"))
        assert proc.returncode == 0, proc.stderr
        assert [line.split()[0] for line in proc.stdout.splitlines()[1:4]] == ["b1", "b2", "b10"]


def test_status_counts_a_stopped_backend_as_no_failure(cluster, run: Run) -> None:
    """A backend that deregistered as it stopped is listed as stopped and status still exits 0; one
    whose heartbeat lapsed without deregistering is DEAD, and status exits 1."""
    ids = {name: uuid.uuid4().hex for name in ("b0", "b1", "b2")}
    with _scratch_registry(cluster, run) as meta:

        def register(name: str, ttl: float) -> None:
            meta.register_backend({"id": ids[name], "name": name, "host": "127.0.0.1", "port": 1,
                                   "compss_name": name, "pid": 1, "state": "up"}, ttl=ttl)

        register("b0", 60)
        register("b1", 60)
        meta.mark_down(ids["b1"])  # what a backend does as it stops
        proc = run(*cli("status"))
        assert proc.returncode == 0, proc.stdout
        assert [line.split()[6] for line in proc.stdout.splitlines()[1:3]] == ["yes", "stopped"]
        register("b2", 0.001)  # its heartbeat lapses at once: it went silent without stopping
        time.sleep(0.05)
        proc = run(*cli("status"))
        assert proc.returncode == 1
        assert [line.split()[6] for line in proc.stdout.splitlines()[1:4]] == ["yes", "stopped", "DEAD"]


def test_credential_list_says_when_there_are_none(cluster, run: Run) -> None:
    with _scratch_registry(cluster, run):
        proc = run(*cli("credential", "list"))
        assert proc.returncode == 0, proc.stderr
        assert proc.stdout.strip() == "no valid credentials (`storage-api credential issue NAME` issues one)"
