"""The LSTM baseline: the same trainer class, used locally (no store), as the paper's ``model_train.py``.

    python -m apps.lstm_baseline [--csv PATH] [--seed 0] [--epochs 100] [--passes 2] [--json]

Reports what Table 1 reports: memory (mean RSS of this process during the sampled training pass,
MiB), train time (the timed pass), eval time, and total = train + eval; plus this script's wall
time and the test metrics. ``--json`` prints one JSON line instead (used by ``apps.lstm_report``).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

PROG = "lstm_baseline"

if not __package__:  # run as a file: make the repository's packages importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    sys.path.insert(0, str(Path(__file__).resolve().parent))  # apps/ itself (also under runpy)
    from _lstm_cli import add_training_args, checked_csv, print_metrics, run
else:
    from apps._lstm_cli import add_training_args, checked_csv, print_metrics, run


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog=PROG, description=__doc__.splitlines()[0])
    add_training_args(p, csv_help="a timestamp,CPU,MEM file (default: the seeded generator)",
                      seed_help="training seed (torch, numpy, random)")
    p.add_argument("--json", action="store_true", help="print one JSON line")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    start = time.perf_counter()
    args = parse_args(argv)
    csv_text = checked_csv(args.csv)  # before torch is imported
    from workflows.models.trainer import LSTMTrainer

    trainer = LSTMTrainer(csv_text, data_seed=args.data_seed, epochs=args.epochs, passes=args.passes)
    result = trainer.train(args.seed)
    result["wall_time"] = time.perf_counter() - start
    result["total_time"] = result["train_time"] + result["eval_time"]
    result.pop("train_loss")
    if args.json:
        print(json.dumps({"mode": "baseline", **result}))
        return 0
    m = result["metrics"]
    print(f"baseline ({result['device']}, {args.epochs} epochs x {args.passes} pass(es), seed {args.seed})")
    print(f"  memory (mean RSS while training) {result['memory_mb']:.2f} MiB")
    print(f"  train {result['train_time']:.3f} s   eval {result['eval_time']:.3f} s   "
          f"total (train+eval) {result['total_time']:.3f} s   wall {result['wall_time']:.3f} s")
    print_metrics(m)
    return 0


if __name__ == "__main__":
    run(PROG, main)
