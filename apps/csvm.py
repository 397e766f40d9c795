"""Weak-scaling Cascade SVM (the paper's second experiment, Section 6, Figures 11-12).

A plain PyCOMPSs app: it runs unchanged under ``runcompss`` with the storage bundle, and without
COMPSs through ``storage-api run apps/csvm.py ...`` (storage-api's development executor).

Data as in the reference code (bsc-dom/split-miniapps ``csvm.py``): each block holds
``make_blobs`` points with 20 features around 15 fixed centers (``uniform(-1, 1) * 10`` drawn
with seed 777), block ``i`` with ``random_state = 42 + i``; labels are the 15 blob ids. Model:
``CascadeSVM(cascade_arity=A, max_iter=5, check_convergence=False, random_state=42)``.

Sizes: blocks = processors x cores per processor x blocks per core, each of ``--points-per-block``
points. Points per processor is derived and printed. The paper says "150 thousand points per
processor", but its own block arithmetic (8 blocks of 128 points per core, 24 cores per socket)
gives 24,576, which is what the reference scripts ran: we keep the block arithmetic and print the
figure it implies.

``--storage``: blocks are ``workflows.models.blocks.PersistentBlock`` objects created over the backends in
turns and filled there (a generation task that runs on the block's backend). ``--placement``:
``contiguous`` (default) gives each backend runs of consecutive blocks, so the cascade's first
merges combine blocks of one backend; ``round-robin`` (the reference code's ``cycle``) interleaves
them, and every merge then needs a block's support vectors from the other backend. ``--no-storage``:
blocks are numpy arrays made by tasks. Prints and writes (``--json``, ``--csv``) the
initialization time, the execution time (fit plus barrier), the bytes moved between processes
(when the executor can count them; ``null`` under COMPSs) and the score on the training data.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import sys
import time

try:
    from pycompss.api.api import compss_barrier, compss_wait_on
    from pycompss.api.parameter import INOUT
    from pycompss.api.task import task
except ImportError:  # plain `python apps/csvm.py`: main() says how to run the app instead
    compss_barrier = compss_wait_on = INOUT = None

    def task(**_options):
        return lambda func: func

from storage_api import cmdline
from storage_api.errors import UsageError

# dislib and numpy are imported by main(), after the arguments are checked (the executor's local
# workers import this file too: main() has them import dislib in the background).

SEED = 42
FEATURES = 20
CENTERS = 15


@task(returns=2)
def generate_points(n_points, seed):
    """A numpy block and its labels (no storage)."""
    from workflows.models.blocks import make_points

    return make_points(n_points, seed, CENTERS, FEATURES)


@task(block=INOUT, returns=1)
def generate_block(block, n_points, seed):
    """Fill a persistent block where it lives; return its labels."""
    return block.fill_blobs(n_points, seed, CENTERS, FEATURES)


def _bytes_moved():
    try:  # the development executor counts them; real COMPSs does not tell us
        from workflows.executor import bytes_moved
    except ImportError:
        return None
    return bytes_moved()


def _tasks_by_node():
    try:
        from workflows.executor import tasks_by_node
    except ImportError:
        return None
    return tasks_by_node()


def _diff(after, before):
    if after is None or before is None:
        return None
    return {k: after[k] - before[k] for k in after}


def parse_args(argv=None):
    p = argparse.ArgumentParser(prog="csvm", description=__doc__.split("\n\n")[0])
    p.add_argument("--points-per-block", type=cmdline.positive_int, default=128,
                   help="128 (small blocks) or 1024 (big blocks)")
    p.add_argument("--blocks-per-core", type=cmdline.positive_int, default=8)
    p.add_argument("--cores-per-processor", type=cmdline.positive_int, default=24)
    p.add_argument("--processors", type=cmdline.positive_int, default=2)
    p.add_argument("--arity", type=_arity, default=48, help="cascade arity, at least 2 (reference: 48)")
    p.add_argument("--iterations", type=cmdline.positive_int, default=5)
    p.add_argument("--storage", action=argparse.BooleanOptionalAction, default=False,
                   help="blocks as persistent objects on the backends (default: --no-storage)")
    p.add_argument("--placement", choices=("contiguous", "round-robin"), default="contiguous",
                   help="how blocks are spread over the backends, in turns (see workflows.models.blocks.spread)")
    p.add_argument("--keep", action="store_true",
                   help="--storage: keep the blocks in the store after the run (default: delete them)")
    p.add_argument("--json", help="write the figures to this JSON file")
    p.add_argument("--csv", help="append the figures as a row to this CSV file")
    p.add_argument("--model", help="save support vectors, their labels and the score to this .npz")
    cmdline.add_debug_option(p)
    return p.parse_args(argv)


def _arity(text):
    value = cmdline.positive_int(text)
    if value < 2:
        raise argparse.ArgumentTypeError(f"must be at least 2, not {value}")
    return value


def _live_backends():
    """The live backends, sorted by name; a mistake, said in one line, if there are none."""
    import storage_api

    # a ConfigError when no deployment is configured: before anything heavy starts
    backends = sorted((b for b in storage_api.backends() if b.alive), key=lambda b: b.name)
    if not backends:
        raise UsageError("--storage: no live backend in the deployment (`storage-api status` shows them)")
    return backends


def main(argv=None):
    args = parse_args(argv)
    if compss_barrier is None:
        raise UsageError("PyCOMPSs is not importable: run the app with `storage-api run apps/csvm.py [ARGS]` "
                         "(storage-api's executor), or under COMPSs with runcompss")
    backends = _live_backends() if args.storage else []
    from workflows.executor import warm_up
    from workflows.quiet import quiet_import

    hide = ("torch",)  # only dislib's tensors use torch; its ds-arrays do not
    # the executor's workers and, with --storage, the backends, while the data is made
    warm_up("dislib.classification", "workflows.models.blocks", hide=hide, backends=args.storage)
    with quiet_import(hide=hide):
        from dislib.classification import CascadeSVM
        from dislib.data.array import Array

    n_blocks = args.processors * args.cores_per_processor * args.blocks_per_core
    ppb = args.points_per_block
    per_processor = ppb * args.cores_per_processor * args.blocks_per_core
    print(f"csvm: {n_blocks} blocks x {ppb} points x {FEATURES} features = {n_blocks * ppb} points; "
          f"{per_processor} points per processor; storage={'yes' if args.storage else 'no'}")

    blocks = []
    try:
        figures = run(args, backends, blocks, CascadeSVM, Array)
    finally:
        if blocks and not args.keep:
            _delete(blocks)
    moved = figures["bytes_exec"]["total"] if figures["bytes_exec"] else None
    print(f"initialization time: {figures['initialization_time']:.3f} s")
    print(f"execution time: {figures['execution_time']:.3f} s")
    print(f"bytes moved during execution: {f'{moved / 1e6:.1f} MB ({moved:,} bytes)' if moved is not None else 'n/a'}")
    print(f"score (training data): {figures['score']:.6f}")
    if blocks and args.keep:
        print(f"kept {len(blocks)} blocks in the store (workflows.models.blocks.PersistentBlock)")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(figures, fh, indent=2)
    if args.csv:
        row = {k: (json.dumps(v) if isinstance(v, dict) else v) for k, v in figures.items()}
        new = not os.path.exists(args.csv)
        with open(args.csv, "a", newline="") as fh:
            w = csv.DictWriter(fh, fieldnames=list(row))
            if new:
                w.writeheader()
            w.writerow(row)
    return 0


def run(args, backends, blocks, CascadeSVM, Array):
    """Generate the blocks (persistent ones are appended to ``blocks`` as they are made), fit, score."""
    import numpy as np

    n_blocks = args.processors * args.cores_per_processor * args.blocks_per_core
    ppb = args.points_per_block
    bytes0 = _bytes_moved()
    start = time.time()
    x_blocks, y_blocks = [], []
    if args.storage:
        from workflows.models.blocks import PersistentBlock, spread

        for i, backend in enumerate(spread(n_blocks, backends, args.placement)):
            block = PersistentBlock()
            with cmdline.uninterrupted():  # so that Ctrl-C never leaves a block main() does not know of
                block.make_persistent(backend=backend)
                blocks.append(block)
            y_blocks.append(generate_block(block, ppb, SEED + i))
            x_blocks.append(block)
    else:
        for i in range(n_blocks):
            xb, yb = generate_points(ppb, SEED + i)
            x_blocks.append(xb)
            y_blocks.append(yb)
    compss_barrier()
    init_time = time.time() - start
    bytes1 = _bytes_moved()

    x = Array(blocks=[[b] for b in x_blocks], top_left_shape=(ppb, FEATURES), reg_shape=(ppb, FEATURES),
              shape=(ppb * n_blocks, FEATURES), sparse=False)
    y = Array(blocks=[[b] for b in y_blocks], top_left_shape=(ppb, 1), reg_shape=(ppb, 1),
              shape=(ppb * n_blocks, 1), sparse=False)

    start = time.time()
    csvm = CascadeSVM(cascade_arity=args.arity, max_iter=args.iterations, check_convergence=False,
                      random_state=SEED)
    csvm.fit(x, y)
    compss_barrier()
    exec_time = time.time() - start
    bytes2 = _bytes_moved()

    score = float(csvm.score(x, y, collect=True))
    if args.model:
        svs, labels = compss_wait_on(csvm._svs), compss_wait_on(csvm._sv_labels)
        np.savez(args.model, svs=np.block([svs]) if isinstance(svs, list) else svs, labels=labels, score=score)
    return {
        "storage": args.storage, "processors": args.processors, "cores_per_processor": args.cores_per_processor,
        "blocks_per_core": args.blocks_per_core, "points_per_block": ppb, "blocks": n_blocks,
        "points": n_blocks * ppb, "points_per_processor": ppb * args.cores_per_processor * args.blocks_per_core,
        "arity": args.arity, "iterations": args.iterations, "placement": args.placement if args.storage else None,
        "initialization_time": init_time, "execution_time": exec_time,
        "bytes_init": _diff(bytes1, bytes0), "bytes_exec": _diff(bytes2, bytes1), "score": score,
        "tasks_by_node": _tasks_by_node(),
    }


def _delete(blocks):
    """Delete the run's blocks from the store; say so in one line if some could not be."""
    failed = []
    for block in blocks:
        try:
            block.delete_persistent(keep_state=False)
        except Exception as exc:  # noqa: BLE001 - e.g. its backend died: report, do not hide the run's outcome
            failed.append(f"{block.getID()}: {exc}")
    if failed:
        print(f"csvm: {len(failed)} of {len(blocks)} blocks could not be deleted (first: {failed[0]})",
              file=sys.stderr)


if __name__ == "__main__":
    cmdline.run("csvm", main)
