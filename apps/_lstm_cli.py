"""What the LSTM apps share on their command line: the training options and the metrics printout.

Standard library only: the thin client (``lstm_offload.py``) imports it too.
"""

from __future__ import annotations

import argparse

from storage_api import cmdline
from workflows.models import datasets


def add_training_args(p: argparse.ArgumentParser, *, csv_help: str, seed_help: str) -> None:
    p.add_argument("--csv", type=cmdline.input_file, help=csv_help)
    p.add_argument("--data-seed", type=int, default=0, help="seed of the generated series (without --csv)")
    p.add_argument("--seed", type=int, default=0, help=seed_help)
    p.add_argument("--epochs", type=cmdline.positive_int, default=100, help="training epochs per pass (default 100)")
    p.add_argument("--passes", type=int, choices=(1, 2), default=2,
                   help="2 (default): train twice like the paper's code; 1: a single pass")
    cmdline.add_debug_option(p)


def checked_csv(path: str | None) -> str | None:
    """The text of ``--csv``, checked here (standard library only) before anything heavy starts."""
    if path is None:
        return None
    text = datasets.read_text(path)
    datasets.check_csv(text, source=path)
    return text


def run(prog: str, main: object) -> None:
    """End the app as every storage-api command ends; a bad CSV is a mistake too."""
    cmdline.run(prog, main, mistakes=(datasets.DatasetError,))  # type: ignore[arg-type]


def print_metrics(m: dict) -> None:
    """One line per variable: the paper's MSE, MAE, SMAPE and RMSE."""
    for var in ("cpu", "mem"):
        print(f"  {var.upper():3s} MSE {m[var]['mse']:.3f}  MAE {m[var]['mae']:.2f}  "
              f"SMAPE {m[var]['smape']:.2f}  RMSE {m[var]['rmse']:.3f}")
