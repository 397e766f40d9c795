"""LSTM offloading: overhead and client memory against the baseline (one run), thin-client disk size.

Run from the repository root::

    python -m bench.lstm_offload [--epochs 100] [--passes 1] [--csv PATH] [--seed 0] [--loaded]

One embedded deployment (Redis + one backend on this machine). The backend loads the trainer
class and trains once for one epoch before the measured run (the paper's server was up and warm);
then the baseline (``python -m apps.lstm_baseline``, a fresh process) and the thin client
(``apps/lstm_offload.py``, run by the thin-client environment's interpreter: no torch, numpy or
pandas installed) run the same training with the same seed. Printed side by side:

* offload overhead, client total - (server train + eval), and its parts:
  connect + make_persistent, the backend's work outside the timed train and eval (data windows,
  model set-up, metrics), and the offloading cost of the ``train`` call itself (client wall time
  minus the backend's time for the whole call: request, progress events, reply);
* client memory (RSS at the end) against the baseline's (mean RSS while training, as Table 1);
* the thin-client environment's site-packages size.

``--loaded`` then runs the offloaded training once more under a fixed CPU load (``bench/_load.py``:
two busy processes per core, started and stopped by the benchmark) and prints the client's time
loaded over idle (the quick start's ``--epochs 10`` is the run to try).

``--passes 1`` is the default here because with 2 passes the paper's definition of overhead
also contains the untimed first training pass. Results go to ``bench/results/lstm_offload.json``.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

from apps import lstm_envs
from bench import _load
from bench._targets import Target, add_check_option, exit_status, report
from apps.lstm_report import run_json, warm_up

ROOT = Path(__file__).resolve().parent.parent
TARGETS = [  # what the thin client promises (README, LSTM offloading), with headroom
    Target("overhead_ms", "<=", 100.0, "ms"),
    Target("client_rss_mb", "<=", 40.0, "MB"),
    Target("thin_env_mb", "<=", 30.0, "MB"),
]
LOADED_TARGETS = [Target("loaded_over_idle", "<=", 1.5, "x")]  # the same training, loaded / idle


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--epochs", type=int, default=100)
    p.add_argument("--passes", type=int, choices=(1, 2), default=1)
    p.add_argument("--csv", help="a timestamp,CPU,MEM file (default: the seeded generator)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--loaded", action="store_true",
                   help=f"also run the offloaded training under a CPU load ({_load.PER_CORE} busy processes per core)")
    add_check_option(p)
    args = p.parse_args(argv)
    import storage_api

    env_size = lstm_envs.measure(only=("thin client",))["thin client"]
    thin_python = str(Path(env_size["venv"]) / "bin" / "python")
    common = ["--seed", str(args.seed), "--epochs", str(args.epochs), "--passes", str(args.passes), "--json"]
    if args.csv:
        common += ["--csv", str(Path(args.csv).resolve())]
    with tempfile.TemporaryDirectory(prefix="lstm-bench-") as tmp, storage_api.local_cluster(backends=1, directory=tmp):
        env = {"STORAGE_API_CONFIG": str(Path(tmp) / "client.toml")}
        warm_up(thin_python, env)
        base = run_json([sys.executable, "-m", "apps.lstm_baseline", *common])
        off = run_json([thin_python, "apps/lstm_offload.py", "--no-progress", *common], env)
        loaded = None
        if args.loaded:
            with _load.cpu_load() as busy:
                loaded = run_json([thin_python, "apps/lstm_offload.py", "--no-progress", *common], env)

    server_extra = off["server_time"] - off["train_time"] - off["eval_time"]
    res = {
        "epochs": args.epochs, "passes": args.passes, "seed": args.seed, "csv": args.csv,
        "overhead_ms": 1000 * off["overhead"],
        "setup_ms": 1000 * off["setup_time"],
        "server_extra_ms": 1000 * server_extra,
        "call_overhead_ms": 1000 * off["call_overhead"],
        "client_rss_mb": off["client_rss_mb"], "client_peak_rss_mb": off["client_peak_rss_mb"],
        "baseline_memory_mb": base["memory_mb"], "server_memory_mb": off["memory_mb"],
        "baseline_train_eval_s": base["train_time"] + base["eval_time"], "baseline_wall_s": base["wall_time"],
        "offload_client_total_s": off["client_total"], "server_train_eval_s": off["train_time"] + off["eval_time"],
        "thin_env_mb": env_size["bytes"] / 1e6, "thin_env_packages": env_size["packages"],
        "same_metrics": base["metrics"] == off["metrics"], "heavy_modules_on_client": off["heavy_modules"],
    }
    rows = [
        ("memory (MB)", f"{base['memory_mb']:.1f} (mean RSS training)", f"client {off['client_rss_mb']:.1f} (RSS at end); "
         f"server {off['memory_mb']:.1f}"),
        ("train + eval (s)", f"{res['baseline_train_eval_s']:.3f}", f"{res['server_train_eval_s']:.3f} on the backend"),
        ("total (s)", f"{base['wall_time']:.3f} (script wall)", f"{off['client_total']:.3f} (client wall)"),
        ("overhead (ms)", "-", f"{res['overhead_ms']:.1f} = setup {res['setup_ms']:.1f} + backend outside "
         f"train/eval {res['server_extra_ms']:.1f} + call {res['call_overhead_ms']:.1f}"),
        ("site-packages (MB)", "-", f"thin client {res['thin_env_mb']:.1f} ({', '.join(env_size['packages'])})"),
    ]
    print(f"LSTM, {args.epochs} epochs x {args.passes} pass(es), seed {args.seed}, {off['device']} backend")
    print(f"{'':20s} {'baseline':32s} offload")
    for name, b, o in rows:
        print(f"{name:20s} {b:32s} {o}")
    lines, met = report(TARGETS, res)
    print("\n".join(lines))
    if loaded is not None:
        res.update(loaded_client_total_s=loaded["client_total"], loaded_server_train_eval_s=loaded["train_time"]
                   + loaded["eval_time"], loaded_over_idle=loaded["client_total"] / off["client_total"],
                   loaded_same_metrics=loaded["metrics"] == off["metrics"])
        print(f"offloaded, idle: client {off['client_total']:.3f} s (server train + eval "
              f"{res['server_train_eval_s']:.3f} s); {_load.describe(busy)}: client {loaded['client_total']:.3f} s "
              f"(server train + eval {res['loaded_server_train_eval_s']:.3f} s), {res['loaded_over_idle']:.2f}x idle; "
              f"same metrics: {res['loaded_same_metrics']}")
        lines, loaded_met = report(LOADED_TARGETS, res, heading=_load.describe(busy))
        print("\n".join(lines))
        met = met and loaded_met
    print(f"same metrics locally and offloaded: {res['same_metrics']}; heavy modules on the client: "
          f"{res['heavy_modules_on_client'] or 'none'}")
    out = ROOT / "bench" / "results"
    out.mkdir(parents=True, exist_ok=True)
    (out / "lstm_offload.json").write_text(json.dumps(res, indent=2) + "\n")
    return exit_status(met, args.check)


if __name__ == "__main__":
    sys.exit(main())
