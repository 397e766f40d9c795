"""Third-party imports in apps: their import-time notices held back, optional dependencies kept out,
and the executor's local workers importing a task's library the same way as the app did."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from tests.conftest import ROOT

NOISY = '''
print("NOTICE: noisy_lib cannot find its version")  # what dislib prints without pkg_resources
try:
    import fancy_optional  # what dislib does with torch
    HAS_OPTIONAL = True
except ImportError:
    HAS_OPTIONAL = False
from pycompss.api.task import task


@task(returns=1)
def probe():
    import os, sys
    return [os.getpid(), HAS_OPTIONAL, "fancy_optional" in sys.modules]
'''

APP = '''
if __name__ == "__main__":
    import json, os
    from pycompss.api.api import compss_wait_on
    from workflows.quiet import quiet_import

    with quiet_import(hide=("fancy_optional",)):
        import noisy_lib
    print("RESULT " + json.dumps([os.getpid(), noisy_lib.HAS_OPTIONAL, compss_wait_on(noisy_lib.probe())]))
'''


def test_app_and_its_workers_import_quietly_and_without_what_the_app_kept_out(tmp_path: Path) -> None:
    (tmp_path / "noisy_lib.py").write_text(NOISY)
    (tmp_path / "fancy_optional.py").write_text('print("IMPORTED fancy_optional")\n')
    (tmp_path / "app.py").write_text(APP)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run([sys.executable, "-m", "workflows.executor", "--workers", "1", str(tmp_path / "app.py")],
                          capture_output=True, text=True, cwd=ROOT, env=env, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "NOTICE" not in proc.stdout + proc.stderr and "IMPORTED" not in proc.stdout + proc.stderr
    app_pid, app_has, (worker_pid, worker_has, worker_imported) = json.loads(proc.stdout.split("RESULT ", 1)[1])
    assert worker_pid != app_pid  # the task ran in a local worker, which imported noisy_lib itself
    assert not app_has and not worker_has and not worker_imported


def test_a_failing_import_shows_what_it_printed(tmp_path: Path) -> None:
    (tmp_path / "broken_lib.py").write_text('print("broken_lib: needs libfoo")\nraise ImportError("no libfoo")\n')
    code = ("from workflows.quiet import quiet_import\n"
            "with quiet_import():\n"
            "    import broken_lib\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), str(tmp_path)])}
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, env=env, timeout=60)
    assert proc.returncode == 1
    assert proc.stderr.startswith("broken_lib: needs libfoo\n") and "ImportError: no libfoo" in proc.stderr
