"""Each benchmark's targets, printed after its figures; with ``--check`` a missed one fails the run.

A target bounds one figure of the run (``<=`` or ``>=`` a limit). Benchmarks print every target as
met or NOT met; ``--check`` makes the process exit with status 1 when one is not met (or was not
measured), so that a script or CI job can act on it.
"""

from __future__ import annotations

import argparse
import os
from dataclasses import dataclass


@dataclass(frozen=True)
class Target:
    key: str  # the figure it bounds
    op: str  # "<=" or ">="
    limit: float
    unit: str = ""

    def met(self, value: float | None) -> bool:
        if value is None:
            return False
        return value <= self.limit if self.op == "<=" else value >= self.limit


def add_check_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--check", action="store_true", help="exit with status 1 if a target is missed")


def report(targets: list[Target], values: dict[str, float | None], heading: str = "") -> tuple[list[str], bool]:
    """Lines saying whether each target is met, and whether all are; they say how busy the
    machine was, since the targets are for one that runs nothing else (unless ``heading`` says
    what else ran: a benchmark's own load)."""
    load, cores = os.getloadavg()[0], os.cpu_count() or 1
    busy = f"; the machine was busy (load average {load:.1f} on {cores} cores): timings suffer" if load > cores else ""
    lines = [f"targets ({heading or 'for an otherwise idle machine' + busy}):"]
    for t in targets:
        value = values.get(t.key)
        shown = "-" if value is None else f"{value:,.1f}"
        verdict = "met" if t.met(value) else "NOT met" if value is not None else "not measured (counts as missed)"
        lines.append(f"  {t.key:24} {t.op} {t.limit:>9,g} {t.unit:5} {shown:>12}  {verdict}")
    return lines, all(t.met(values.get(t.key)) for t in targets)


def exit_status(all_met: bool, check: bool) -> int:
    """1 when ``--check`` was given and a target was missed, else 0."""
    if check and not all_met:
        print("bench: a target was missed (--check)")
        return 1
    return 0
