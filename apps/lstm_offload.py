"""The thin client: trains the LSTM on a backend through a stub, with a live progress bar.

    python apps/lstm_offload.py [--csv PATH] [--seed 0] [--epochs 100] [--passes 2] [--json]

It imports only ``storage_api``, the standard library and tqdm: no torch, numpy or pandas (the
client environment is ``pip install storage-api``, no extras). It connects to the configured
deployment (``STORAGE_API_CONFIG``, ``STORAGE_API_*`` variables, or the one ``storage-api up``
started); with none configured it starts an embedded one (Redis and one backend on 127.0.0.1)
for its duration. The CSV, if any, is read here and shipped as text; the object is built, trained
and evaluated on the backend, which reports each epoch's loss to the progress bar.

Reported, as in the paper's Tables 2-4:

* client: RSS of this process at the end (``/proc/self/status``, MiB) and wall time from
  connecting to the result (``client_total``: connect + make_persistent + train);
* server (measured on the backend): train time (the timed pass), eval time, memory (mean RSS of
  the backend process during the sampled pass), and ``server_time``, the whole ``train`` call;
* overhead: ``client_total - (train + eval)`` (the paper's "dC-Client" time; with ``--passes 2``
  it includes the untimed first pass) and the offloading cost proper, ``call_overhead`` = the
  client's wall time of the ``train`` call minus ``server_time``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import time
from typing import Any

CLASS = "workflows.models.trainer.LSTMTrainer"

if not __package__:  # run as a file from a checkout where storage_api is not installed
    import importlib.util
    import os

    if importlib.util.find_spec("storage_api") is None:
        sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # apps/ itself (also under runpy)
    from _lstm_cli import add_training_args, print_metrics
else:
    from apps._lstm_cli import add_training_args, print_metrics


def rss_mib(field: str = "VmRSS") -> float:
    """This process's resident (or, with ``VmHWM``, peak resident) memory in MiB."""
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    return float("nan")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_training_args(p, csv_help="a timestamp,CPU,MEM file, read here and shipped (default: generated on the backend)",
                      seed_help="training seed")
    p.add_argument("--backend", help="the backend (name) to train on (default: any live one)")
    p.add_argument("--alias", help="keep the trained object under this alias (default: delete it at the end)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--json", action="store_true", help="print one JSON line with every figure")
    return p.parse_args(argv)


@contextlib.contextmanager
def deployment() -> Any:
    """Connect to the configured deployment, else start an embedded one.

    Yields ``(kind, start_time, started)``: "configured" or "embedded", the seconds starting an
    embedded one took, and the ``perf_counter`` instant the client's own clock starts (before
    connecting, as the paper's client script).
    """
    import storage_api
    from storage_api.errors import ConfigError

    started = time.perf_counter()
    try:
        storage_api.connect()
    except ConfigError:
        pass
    else:
        yield "configured", 0.0, started
        return
    with storage_api.local_cluster(backends=1):
        up = time.perf_counter()
        yield "embedded", up - started, up


def offload(args: argparse.Namespace, started: float) -> dict[str, Any]:
    import storage_api
    from tqdm import tqdm

    csv_text = None
    if args.csv:
        with open(args.csv, encoding="utf-8") as fh:
            csv_text = fh.read()
    Trainer = storage_api.stub(CLASS)
    trainer = Trainer(csv_text, data_seed=args.data_seed, epochs=args.epochs, passes=args.passes)
    trainer.make_persistent(alias=args.alias, backend=args.backend)
    events: list[dict] = []
    bar = tqdm(total=args.epochs * args.passes, desc="training on the backend", unit="epoch",
               disable=args.no_progress, file=sys.stderr, dynamic_ncols=True)

    def on_epoch(event: dict) -> None:
        events.append(event)
        bar.set_postfix(loss=f"{event['loss']:.5f}", pass_=f"{event['pass']}/{event['passes']}", refresh=False)
        bar.update(1)

    call_start = time.perf_counter()
    with storage_api.on_progress(on_epoch):
        result = trainer.train(args.seed)
    call_time = time.perf_counter() - call_start
    client_total = time.perf_counter() - started
    bar.close()
    if args.alias is None:
        trainer.delete_persistent()
    result.pop("train_loss")
    server = result["train_time"] + result["eval_time"]
    return {
        **result,
        "client_total": client_total,
        "call_time": call_time,
        "setup_time": call_start - started,  # connect, stub, make_persistent (object built on the backend)
        "overhead": client_total - server,
        "call_overhead": call_time - result["server_time"],
        "progress_events": len(events),
        "last_event": events[-1] if events else None,
        "object_id": trainer.getID(),
    }


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    with deployment() as (kind, boot_time, started):
        try:
            out = offload(args, started)
        except ValueError as exc:  # a bad CSV (a datasets.DatasetError) or bad option, found by the backend
            print(f"lstm_offload: {type(exc).__name__}: {exc}", file=sys.stderr)
            return 2
    out.update(mode="offload", deployment=kind, deployment_start=boot_time,
               client_rss_mb=rss_mib("VmRSS"), client_peak_rss_mb=rss_mib("VmHWM"),
               heavy_modules=[m for m in ("torch", "numpy", "pandas", "sklearn") if m in sys.modules])
    if args.json:
        print(json.dumps(out))
        return 0
    m = out["metrics"]
    print(f"offloaded to the {kind} deployment ({out['device']} backend, {args.epochs} epochs x "
          f"{args.passes} pass(es), seed {args.seed})")
    print(f"  client: RSS {out['client_rss_mb']:.1f} MiB (peak {out['client_peak_rss_mb']:.1f}), "
          f"wall {out['client_total']:.3f} s (train call {out['call_time']:.3f} s)")
    print(f"  server: memory {out['memory_mb']:.1f} MiB, train {out['train_time']:.3f} s, "
          f"eval {out['eval_time']:.3f} s, whole call {out['server_time']:.3f} s")
    print(f"  overhead: client total - (train + eval) = {out['overhead']:.3f} s; "
          f"train call - server time = {out['call_overhead'] * 1000:.1f} ms")
    print_metrics(m)
    return 0


if __name__ == "__main__":
    sys.exit(main())
