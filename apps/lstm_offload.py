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
* the offloading overhead, ``call_overhead``: the client's wall time of the ``train`` call beyond
  the backend's work for it (``server_time``): request, progress reports, reply;
* in ``--json`` also ``overhead``, the paper's "dC-Client" time ``client_total - (train + eval)``,
  which with ``--passes 2`` is mostly the untimed first pass (``first_pass_time``).

Arguments and the CSV are checked before a deployment is started; the object is deleted at the
end (also after an error or Ctrl-C) unless ``--keep`` or ``--alias``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import time
from typing import Any

PROG = "lstm_offload"
CLASS = "workflows.models.trainer.LSTMTrainer"

if not __package__:  # run as a file from a checkout where storage_api is not installed
    import importlib.util
    import os

    if importlib.util.find_spec("storage_api") is None:
        sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # apps/ itself (also under runpy)
    from _lstm_cli import add_training_args, checked_csv, print_metrics, run
else:
    from apps._lstm_cli import add_training_args, checked_csv, print_metrics, run

from storage_api import cmdline
from storage_api.errors import UsageError


def rss_mib(field: str = "VmRSS") -> float:
    """This process's resident (or, with ``VmHWM``, peak resident) memory in MiB."""
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    return float("nan")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog=PROG, description=__doc__.splitlines()[0])
    add_training_args(p, csv_help="a timestamp,CPU,MEM file, read here and shipped (default: generated on the backend)",
                      seed_help="training seed")
    p.add_argument("--backend", help="the backend (name) to train on (default: any live one)")
    p.add_argument("--alias", help="keep the trained object under this alias (default: delete it at the end)")
    p.add_argument("--keep", action="store_true", help="keep the trained object in the store (its id is printed)")
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


def offload(args: argparse.Namespace, csv_text: str | None, started: float) -> dict[str, Any]:
    import storage_api
    from tqdm import tqdm

    if args.backend is not None:
        _check_backend(args.backend, storage_api.backends())
    Trainer = storage_api.stub(CLASS)
    trainer = Trainer(csv_text, data_seed=args.data_seed, epochs=args.epochs, passes=args.passes)
    events: list[dict] = []
    bar = tqdm(total=args.epochs * args.passes, desc="training on the backend", unit="epoch",
               disable=args.no_progress, file=sys.stderr, dynamic_ncols=True)

    def on_epoch(event: dict) -> None:
        events.append(event)
        bar.set_postfix({"pass": f"{event['pass']} of {event['passes']}", "loss": f"{event['loss']:.5f}"},
                        refresh=False)
        bar.update(1)

    finished = False
    try:
        with cmdline.uninterrupted():  # a Ctrl-C waits for the reply: the object is then known, and deleted
            object_id = trainer.make_persistent(alias=args.alias, backend=args.backend)
        call_start = time.perf_counter()
        with storage_api.on_progress(on_epoch):
            result = trainer.train(args.seed)
        call_time = time.perf_counter() - call_start
        client_total = time.perf_counter() - started
        finished = True
    finally:
        bar.close()
        if trainer.getID() is not None and args.alias is None and not args.keep:
            _delete(trainer, wait=finished)
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
        "object_id": object_id,  # also once deleted (getID() is then None)
    }


def _check_backend(name: str, backends: list[Any]) -> None:
    live = sorted(b.name for b in backends if b.alive)
    if name not in live:
        raise UsageError(f"--backend {name}: no live backend of that name (live: {', '.join(live) or 'none'}; "
                         "`storage-api status` lists them)")


def _delete(trainer: Any, *, wait: bool) -> None:
    """Delete the trainer. After an error or Ctrl-C it may still be training: the interrupted
    call's connection is closed, so the backend stops the training at its next epoch
    (``CallCancelled``) and the delete, which waits for it, follows. Up to a minute is waited
    for that; a second Ctrl-C stops waiting."""
    if wait:
        trainer.delete_persistent(keep_state=False)
        return
    import threading

    from storage_api.errors import StoreError

    failed: list[BaseException] = []

    def delete() -> None:
        try:
            trainer.delete_persistent(keep_state=False)
        except StoreError as exc:  # e.g. the embedded deployment stopped: nothing is left
            failed.append(exc)

    oid = trainer.getID()
    print(f"lstm_offload: deleting the trainer {oid} (its training stops at its next epoch)",
          file=sys.stderr, flush=True)
    thread = threading.Thread(target=delete, daemon=True)
    thread.start()
    thread.join(60.0)
    if thread.is_alive() or failed:
        why = "still waiting after 60 s" if thread.is_alive() else str(failed[0])
        print(f"lstm_offload: the trainer {oid} may be left in the store ({why}); "
              "`storage-api status --objects` lists what is", file=sys.stderr, flush=True)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    csv_text = checked_csv(args.csv)
    with deployment() as (kind, boot_time, started):
        out = offload(args, csv_text, started)
    out.update(mode="offload", deployment=kind, deployment_start=boot_time,
               client_rss_mb=rss_mib("VmRSS"), client_peak_rss_mb=rss_mib("VmHWM"),
               heavy_modules=[m for m in ("torch", "numpy", "pandas", "sklearn") if m in sys.modules])
    if args.json:
        print(json.dumps(out))
        return 0
    m = out["metrics"]
    passes = "2 passes" if args.passes == 2 else "1 pass"
    print(f"offloaded to the {kind} deployment ({out['device']} backend, {args.epochs} epochs x {passes}, "
          f"seed {args.seed})")
    print(f"  client:  wall {out['client_total']:.3f} s = start {out['setup_time']:.3f} s (connect, object "
          f"built on the backend) + train call {out['call_time']:.3f} s; RSS {out['client_rss_mb']:.1f} MiB "
          f"(peak {out['client_peak_rss_mb']:.1f})")
    other = out["server_time"] - out["first_pass_time"] - out["train_time"] - out["eval_time"]
    first = (f"first pass {out['first_pass_time']:.3f} s (untimed, as the paper's) + timed pass "
             if args.passes == 2 else "training ")
    print(f"  backend: train call {out['server_time']:.3f} s = {first}{out['train_time']:.3f} s + eval "
          f"{out['eval_time']:.3f} s + data and metrics {other:.3f} s; memory {out['memory_mb']:.1f} MiB "
          f"(mean RSS while training{' the first pass' if args.passes == 2 else ''})")
    print(f"  offloading overhead: {out['call_overhead'] * 1000:.1f} ms (the client's time for the train call "
          f"beyond the backend's work for it)")
    if args.alias or args.keep:
        print(f"  kept the trained object: id {out['object_id']}" + (f", alias {args.alias}" if args.alias else ""))
    print_metrics(m)
    return 0


if __name__ == "__main__":
    run(PROG, main)
