"""The LSTM trainer as an active class: data, hyper-parameters and model live where the object lives.

Made persistent (from a full client, or from a thin client through
``storage_api.stub("workflows.models.trainer.LSTMTrainer")``), the object is built on a backend and
``train``/``evaluate``/``predict`` run there, on CUDA when the backend has it. Used transient, the
same class is the baseline: everything runs in the caller's process.

Persistent state is small and device-neutral: hyper-parameters, the series (``(n, 2)`` float64,
percent) and the trained weights as numpy arrays, so a restarted backend serves a trained model
again. The live torch module and the prepared windows are volatile (``_v_`` attributes), rebuilt
on demand.

``train`` follows the paper's code: with ``passes=2`` (the default, as the original) it trains once
while sampling the process's RSS every 0.1 s, then trains again on the same model and optimizer
and times only that second pass; ``passes=1`` trains once, sampled and timed. Evaluation sweeps the
test set ``epochs`` times (the original's quirk) and is timed separately. Progress of every epoch
goes to the caller with :func:`storage_api.report_progress`.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import pandas as pd
import torch

from storage_api import ActiveObject, activemethod, report_progress

from . import datasets, lstm  # torch, sklearn: loaded with the class, on the backend


class LSTMTrainer(ActiveObject):
    """CPU/MEM forecaster of the paper: an LSTM trained next to its data."""

    hparams: dict
    series: Any
    source: str
    model_state: dict | None

    def __init__(self, csv_text: str | None = None, data_seed: int = 0, epochs: int = 100, passes: int = 2,
                 hidden_size: int = 64, batch_size: int = 64, window: int = 6, lr: float = 1e-3,
                 device: str | None = None) -> None:
        if passes not in (1, 2):
            raise ValueError(f"passes must be 1 or 2, not {passes!r}")
        if epochs < 1:
            raise ValueError(f"epochs must be at least 1, not {epochs!r}")
        if csv_text is None:
            frame, self.source = datasets.generate(data_seed), f"generated (seed {data_seed})"
        else:
            frame, self.source = datasets.parse_csv(csv_text, window), "csv"
        self.series = frame.to_numpy(dtype="float64")
        self.hparams = {"epochs": epochs, "passes": passes, "hidden_size": hidden_size, "batch_size": batch_size,
                        "window": window, "lr": lr, "device": device}
        self.model_state = None

    # ------------------------------------------------------------------ machinery (runs locally)
    def _device(self) -> Any:
        if getattr(self, "_v_device", None) is None:
            name = self.hparams["device"] or ("cuda" if torch.cuda.is_available() else "cpu")
            self._v_device = torch.device(name)
        return self._v_device

    def _data(self) -> Any:
        if getattr(self, "_v_data", None) is None:
            frame = pd.DataFrame(self.series, columns=list(datasets.COLUMNS))
            self._v_data = lstm.prepare(frame, self.hparams["window"])
        return self._v_data

    def _model(self) -> Any:
        if getattr(self, "_v_model", None) is None:
            if self.model_state is None:
                raise RuntimeError("the model is not trained yet: call train() first")
            model = lstm.LSTMModel(2, self.hparams["hidden_size"], 2)
            model.load_state_dict({k: torch.from_numpy(v) for k, v in self.model_state.items()})
            self._v_model = model.to(self._device())
        return self._v_model

    # ------------------------------------------------------------------------ active methods
    @activemethod
    def train(self, seed: int = 0) -> dict:
        """Train a fresh model with ``seed``; return metrics, losses, timings (s) and memory (MiB).

        Keys: ``metrics`` ({cpu, mem} -> mse, rmse, mape, mae, smape, r2), ``train_loss`` (per epoch
        of the timed pass), ``eval_loss``, ``train_time``, ``first_pass_time`` (the untimed first pass
        of ``passes=2``; 0 with one pass), ``eval_time``, ``memory_mb`` (mean RSS of
        the serving process during the sampled pass), ``server_time`` (the whole call),
        ``model_size_mb``, ``device``, ``epochs``, ``passes``, ``seed``.
        """
        start = time.perf_counter()
        hp, device = self.hparams, self._device()
        epochs, passes = hp["epochs"], hp["passes"]
        lstm.seed_everything(seed)
        data = self._data()
        model = lstm.LSTMModel(2, hp["hidden_size"], 2).to(device)
        optimizer = torch.optim.Adam(model.parameters(), lr=hp["lr"])
        train_loader, test_loader = lstm.loaders(data, hp["batch_size"])

        def progress(pass_no: int) -> Any:
            return lambda epoch, loss: report_progress(
                {"pass": pass_no, "passes": passes, "epoch": epoch, "epochs": epochs, "loss": loss})

        with lstm.RssSampler(0.1) as rss:  # the memory-profiled pass
            losses, seconds = lstm.train_epochs(model, optimizer, train_loader, epochs, device, progress(1))
        first_pass = seconds if passes == 2 else 0.0
        if passes == 2:  # the original trains again, same model and optimizer, and times only this pass
            losses, seconds = lstm.train_epochs(model, optimizer, train_loader, epochs, device, progress(2))
        loss, eval_time = lstm.eval_loss(model, test_loader, epochs, device)
        self._v_model = model
        self.model_state = {k: v.detach().cpu().numpy() for k, v in model.state_dict().items()}
        return {
            "metrics": lstm.test_metrics(model, data, device),
            "train_loss": losses,
            "eval_loss": loss,
            "train_time": seconds,
            "first_pass_time": first_pass,
            "eval_time": eval_time,
            "memory_mb": rss.mean,
            "server_time": time.perf_counter() - start,
            "model_size_mb": lstm.model_size_mb(model),
            "device": str(device),
            "epochs": epochs,
            "passes": passes,
            "seed": seed,
        }

    @activemethod(readonly=True)
    def evaluate(self) -> dict:
        """Metrics of the trained model on the test split, with the evaluation loss and its time."""
        data, model, device = self._data(), self._model(), self._device()
        _, test_loader = lstm.loaders(data, self.hparams["batch_size"])
        loss, seconds = lstm.eval_loss(model, test_loader, 1, device)
        return {"metrics": lstm.test_metrics(model, data, device), "eval_loss": loss, "eval_time": seconds}

    @activemethod(readonly=True)
    def predict(self, cpu_lags: list[float], mem_lags: list[float]) -> tuple[list[float], float]:
        """Next CPU and MEM (percent) after ``window`` past values of each; and the inference time (s)."""
        window = self.hparams["window"]
        if len(cpu_lags) != window or len(mem_lags) != window:
            raise ValueError(f"predict needs {window} CPU and {window} MEM values")
        start = time.perf_counter()
        data, model = self._data(), self._model()
        lags = data.scaler.transform(np.column_stack([cpu_lags, mem_lags]).astype(np.float64))
        scaled = lstm.predict_scaled(model, lags.reshape(1, window, 2), self._device())
        cpu, mem = data.scaler.inverse_transform(scaled.astype(np.float64))[0]
        return [float(cpu), float(mem)], time.perf_counter() - start
