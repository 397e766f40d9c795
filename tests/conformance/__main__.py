"""python -m tests.conformance {dislib,compss} ...: run the third-party suites through the launcher.

    python -m tests.conformance dislib                 # every dislib test module, control vs launcher
    python -m tests.conformance dislib tests.test_svd  # some modules
    python -m tests.conformance compss                 # COMPSs' storage test apps on a fresh deployment
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from . import _compss, _dislib, _suites


def _show(test: str, want: dict, got: dict) -> str:
    def one(e: dict) -> str:
        return e["outcome"] + (f" ({e['message'][:120]})" if e.get("message") else "")
    return f"    {test}: expected {one(want)}, got {one(got)}"


def dislib(opts: argparse.Namespace) -> int:
    mods = opts.modules or _dislib.modules()
    expected = _dislib.load_expected() if _dislib.EXPECTED.exists() else {"modules": {}}
    rows, different = [], 0
    for module in mods:
        control = _dislib.run(module, "sequential", timeout=opts.timeout) if opts.mode != "launcher" else None
        launched = _dislib.run(module, "launcher", timeout=opts.timeout) if opts.mode != "sequential" else None
        if control is not None:
            if control.hung:
                print(f"{module}: the sequential control did not finish ({control.hung})", file=sys.stderr)
            entry = _dislib.expectation(control, launched)
        else:
            entry = expected["modules"].get(module)
            if entry is None:
                print(f"{module}: no expected results recorded; run it with --mode both", file=sys.stderr)
                different += 1
                continue
        if opts.record and not (control and control.hung):  # a control cut short is no expectation
            expected["modules"][module] = entry
        diffs = _dislib.differences(entry, launched) if launched is not None else []
        different += len(diffs)
        shown = launched or control
        rows.append((module, entry["tests"], _dislib.same(entry, shown), len(diffs),
                     control.seconds if control else None, launched.seconds if launched else None))
        print(f"{module}: {entry['tests']} tests, {len(diffs)} different from the sequential control", flush=True)
        for d in diffs:
            print(_show(*d), flush=True)
    print(f"\n{'module':40} {'tests':>5} {'same':>5} {'diff':>5} {'seq s':>7} {'run s':>7}")
    for module, tests, same, diff, s_seq, s_run in rows:
        print(f"{module:40} {tests:5} {same:5} {diff:5} {s_seq if s_seq is not None else '-':>7} "
              f"{s_run if s_run is not None else '-':>7}")
    if opts.record:
        expected["environment"] = _dislib.environment()
        _dislib.EXPECTED.write_text(json.dumps(expected, indent=1, sort_keys=True) + "\n")
        print(f"recorded {_dislib.EXPECTED}")
    return 1 if different else 0


def compss(opts: argparse.Namespace) -> int:
    names = opts.apps or list(_compss.APPS)
    expected = _compss.load_expected() if _compss.EXPECTED.exists() else {}
    bad = 0
    for name in names:
        checks = _compss.run(_compss.APPS[name], timeout=opts.timeout)
        want = expected.get(name, {})
        for check, (got, detail) in checks.items():
            mark = "" if want.get(check, "pass") == got else "   <- expected " + want.get(check, "pass")
            bad += bool(mark)
            print(f"{name}: {check}: {got}{' (' + detail + ')' if detail else ''}{mark}", flush=True)
        for check in sorted(set(want) - set(checks)):
            bad += 1
            print(f"{name}: {check}: missing   <- expected {want[check]}", flush=True)
        if opts.record:
            expected[name] = {check: got for check, (got, _detail) in checks.items()}
    if opts.record:
        _compss.EXPECTED.write_text(json.dumps(expected, indent=1, sort_keys=True) + "\n")
        print(f"recorded {_compss.EXPECTED}")
    return 1 if bad else 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m tests.conformance", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="suite", required=True)
    d = sub.add_parser("dislib", help="dislib 1.0.0's unit tests: sequential control vs storage-api run")
    d.add_argument("modules", nargs="*", help="test modules (default: all), e.g. tests.test_svd")
    d.add_argument("--mode", choices=("both", "launcher", "sequential"), default="both",
                   help="launcher: compare with the recorded control instead of running it")
    d.add_argument("--timeout", type=float, default=900, help="seconds per module and mode (default 900)")
    d.add_argument("--record", action="store_true", help=f"write the results to {_dislib.EXPECTED.name}")
    d.set_defaults(func=dislib)
    c = sub.add_parser("compss", help="COMPSs' storage test apps on a fresh storage-api deployment")
    c.add_argument("apps", nargs="*", choices=[[], *_compss.APPS], help="apps (default: all)")
    c.add_argument("--timeout", type=float, default=600, help="seconds per app (default 600)")
    c.add_argument("--record", action="store_true", help=f"write the results to {_compss.EXPECTED.name}")
    c.set_defaults(func=compss)
    opts = p.parse_args(argv)
    try:
        return opts.func(opts)
    except _suites.SuitesMissing as exc:
        print(f"conformance: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
