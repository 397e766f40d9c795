"""Third-party suites run through the launcher: COMPSs' storage test apps and dislib's unit tests.

The suites live outside the repository (``tests/conformance/``: where, and how to run all of
them); the results expected of them are committed there: for dislib, the per-test outcomes of the
sequential control (with the launcher's recorded deviations, if any); for the COMPSs apps, each
check's outcome. These tests fail on any difference. They skip only when the suites folder is
absent, unless ``SA_TEST_REQUIRE_CONFORMANCE=1`` (CI), where that is a failure.
"""

from __future__ import annotations

import json
import os
import sys
import textwrap
from pathlib import Path

import pytest

from tests.conformance import _compss, _dislib, _process, _suites

# The dislib modules CI runs (the whole suite takes an hour on 2 cores: `python -m tests.conformance
# dislib`): those that exercise the task semantics dislib relies on (implicit returns, nested
# collections, collection elements updated in place, object arrays as collections, local functions
# in task arguments), chosen to fit the time budget.
CI_DISLIB_MODULES = ["tests.test_data_utils", "tests.test_decision_tree_distributed", "tests.test_terasort",
                     "tests.test_gridsearch", "tests.test_svd"]


def _require(suite) -> Path:
    try:
        return suite()
    except _suites.SuitesMissing as exc:
        if os.environ.get("SA_TEST_REQUIRE_CONFORMANCE") == "1":
            pytest.fail(str(exc))
        pytest.skip(str(exc))


@pytest.mark.slow
@pytest.mark.conformance
@pytest.mark.parametrize("app", list(_compss.APPS))
def test_compss_storage_app(app: str) -> None:
    _require(_suites.compss_apps)
    checks = _compss.run(_compss.APPS[app], timeout=240)
    want = _compss.load_expected()[app]
    got = {check: outcome for check, (outcome, _detail) in checks.items()}
    wrong = [f"{check}: expected {want.get(check, 'absent')}, got {got.get(check, 'absent')} "
             f"{checks.get(check, ('', ''))[1]}" for check in sorted(set(want) | set(got))
             if want.get(check) != got.get(check)]
    assert not wrong, f"{app} differs from its expected results:\n" + "\n".join(wrong)


@pytest.mark.slow
@pytest.mark.conformance
@pytest.mark.parametrize("module", CI_DISLIB_MODULES)
def test_dislib_module_through_launcher(module: str) -> None:
    _require(_suites.dislib)
    entry = _dislib.load_expected()["modules"][module]
    got = _dislib.run(module, "launcher", timeout=240)
    diffs = _dislib.differences(entry, got, launcher_known=True)
    assert not diffs, f"{module} under storage-api run differs from the expected results:\n" + "\n".join(
        f"  {test}: expected {w['outcome']} ({w['message'][:100]}), got {g['outcome']} ({g['message'][:100]})"
        for test, w, g in diffs) + "\n" + got.output_tail[-1500:]


# They run again with the tasks on Dask workers on three emulated hosts (the app here, the
# scheduler on this machine's side of the bridge, one worker process per node, links at 1 Gbit/s).
CI_DISLIB_ON_HOSTS = CI_DISLIB_MODULES


@pytest.fixture(scope="module")
def three_hosts(tmp_path_factory: pytest.TempPathFactory):
    """The address of a Dask scheduler whose workers run on three emulated hosts."""
    from tests import netkit

    problem = netkit.unavailable()
    if problem:
        if os.environ.get("SA_TEST_REQUIRE_CONFORMANCE") == "1":
            pytest.fail(problem)
        pytest.skip(problem)
    kit = netkit.make(3, "1gbit")
    try:
        dask = netkit.DaskCluster(kit.nodes, kit.bridge, 1, tmp_path_factory.mktemp("dask"))
        try:
            yield dask.address
        finally:
            dask.stop()
    finally:
        kit.close()


@pytest.mark.slow
@pytest.mark.conformance
@pytest.mark.parametrize("module", CI_DISLIB_ON_HOSTS)
def test_dislib_module_on_dask_workers_on_three_hosts(module: str, three_hosts: str) -> None:
    _require(_suites.dislib)
    entry = _dislib.load_expected()["modules"][module]
    got = _dislib.run(module, "launcher", timeout=300, scheduler=three_hosts)
    diffs = _dislib.differences(entry, got, launcher_known=True)
    assert not diffs, f"{module} on three hosts differs from the expected results:\n" + "\n".join(
        f"  {test}: expected {w['outcome']} ({w['message'][:100]}), got {g['outcome']} ({g['message'][:100]})"
        for test, w, g in diffs) + "\n" + got.output_tail[-1500:]


def test_dislib_expectations_cover_the_ci_modules_and_name_causes() -> None:
    expected = _dislib.load_expected()
    assert set(CI_DISLIB_MODULES) <= set(expected["modules"])
    for module, entry in expected["modules"].items():
        assert entry["tests"] > 0, module
        for test, failing in entry["not_passing"].items():
            assert failing["outcome"] == "skip" or failing["cause"] != "unclassified", (module, test)


# --- the harness itself, on a small module of its own (no third-party suite needed) ------------

SAMPLE = '''
import unittest
from pycompss.api.task import task
from pycompss.api.api import compss_wait_on

@task(returns=1)
def double(x):
    return 2 * x

class Sample(unittest.TestCase):
    def test_pass(self):
        self.assertEqual(compss_wait_on(double(3)), 6)
    def test_fail(self):
        self.assertEqual(compss_wait_on(double(3)), 7, "six is not seven")
    def test_error(self):
        raise KeyError("no such key")
    @unittest.skip("not here")
    def test_skip(self):
        pass
'''


def _sample_run(tmp_path: Path, mode: str) -> _dislib.ModuleRun:
    (tmp_path / "sample_module.py").write_text(textwrap.dedent(SAMPLE))
    out = tmp_path / f"{mode}.json"
    if mode == "sequential":
        cmd, paths = [sys.executable, str(_dislib.APP), str(out), "sample_module"], [tmp_path, _dislib.SEQUENTIAL]
    else:
        cmd = _suites.storage_api("run", "--workers", "1", f"--pythonpath={tmp_path}", str(_dislib.APP), str(out),
                                  "sample_module")
        paths = []
    done = _process.run(cmd, cwd=tmp_path, env=_suites.env(paths, home=tmp_path), timeout=120)
    return _dislib.ModuleRun("sample_module", mode, json.loads(out.read_text())["tests"],
                             returncode=done.returncode, output_tail=done.stderr[-2000:])


@pytest.mark.parametrize("mode", _dislib.MODES)
def test_harness_records_each_outcome_with_the_exception_line(tmp_path: Path, mode: str) -> None:
    run = _sample_run(tmp_path, mode)
    by_name = {test.rsplit(".", 1)[1]: (r["outcome"], r["message"]) for test, r in run.tests.items()}
    assert by_name == {
        "test_pass": ("pass", ""),
        "test_fail": ("fail", "AssertionError: 6 != 7 : six is not seven"),
        "test_error": ("error", "KeyError: 'no such key'"),
        "test_skip": ("skip", "not here"),
    }, run.output_tail
    assert run.returncode == 1


def test_harness_reports_a_changed_outcome_a_missing_test_and_a_hang(tmp_path: Path) -> None:
    control = _sample_run(tmp_path, "sequential")
    entry = _dislib.expectation(control)
    assert entry["tests"] == 4 and set(entry["not_passing"]) == {
        "sample_module.Sample.test_fail", "sample_module.Sample.test_error", "sample_module.Sample.test_skip"}
    assert _dislib.differences(entry, control) == []
    changed = _dislib.ModuleRun("sample_module", "launcher", dict(control.tests))
    changed.tests["sample_module.Sample.test_pass"] = {"outcome": "error", "message": "TypeError: x"}
    del changed.tests["sample_module.Sample.test_skip"]
    found = {test: got["outcome"] for test, _want, got in _dislib.differences(entry, changed)}
    assert found == {"sample_module.Sample.test_pass": "error", "sample_module.Sample.test_skip": "missing",
                     "sample_module (test count)": "3"}
    changed.hung = "sample_module.Sample.test_pass"
    found = {test: got["outcome"] for test, _want, got in _dislib.differences(entry, changed)}
    assert found["sample_module.Sample.test_pass"] == "hang"
