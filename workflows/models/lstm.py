"""The paper's LSTM forecaster, re-implemented from its description (Barceló et al., Section 4.1).

Preprocessing: chronological 80/20 split (``int(n * 0.8)`` training rows), a MinMax scaler fitted on
the training rows only (test values may fall outside [0, 1]), 6-lag windows built on each split
independently (1,989 rows give 1,585 training and 392 test samples), inputs shaped
``(samples, 6 lags, 2 variables)`` and targets the next step of both variables.
Model: ``LSTM(2 -> 64)`` then ``Linear(64 -> 2)`` on the last step. Training: MSE loss, Adam
(lr 1e-3), batch 64 with the training set shuffled. Metrics per variable on de-normalised values
with the paper's formulas and rounding (MAE and SMAPE rounded to 2 decimals per run).

This module runs where the model lives (a backend, or the baseline's process): it imports torch.
"""

from __future__ import annotations

import io
import math
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from sklearn.metrics import mean_absolute_error, mean_absolute_percentage_error, mean_squared_error, r2_score
from sklearn.preprocessing import MinMaxScaler
from torch import nn
from torch.utils.data import DataLoader, TensorDataset


@dataclass
class Prepared:
    """Windows of one dataset, ready for training; ``scaler`` maps back to percent."""

    x_train: np.ndarray  # (n_train, window, 2) float32, scaled
    y_train: np.ndarray  # (n_train, 2)
    x_test: np.ndarray
    y_test: np.ndarray
    scaler: Any  # sklearn MinMaxScaler fitted on the training rows


def windows(values: np.ndarray, window: int) -> tuple[np.ndarray, np.ndarray]:
    """Lagged inputs and next-step targets: ``x[i] = values[i:i+window]``, ``y[i] = values[i+window]``.

    The same samples, in the same order and layout, as the paper's ``DataFrame.shift`` supervised
    table (``var1(t-6), var2(t-6), ..., var1(t-1), var2(t-1)`` reshaped to ``(N, 6, 2)``).
    """
    n = len(values) - window
    x = np.stack([values[i:i + n] for i in range(window)], axis=1)
    return x.astype(np.float32), values[window:].astype(np.float32)


def prepare(frame: Any, window: int = 6) -> Prepared:
    """Split, scale (fit on train only) and window a ``CPU, MEM`` frame."""
    values = frame[["CPU", "MEM"]].to_numpy(dtype=np.float64)
    size = int(len(values) * 0.8)  # the paper hard-codes 0.8
    train, test = values[:size], values[size:]
    scaler = MinMaxScaler(feature_range=(0, 1)).fit(train)
    x_train, y_train = windows(scaler.transform(train), window)
    x_test, y_test = windows(scaler.transform(test), window)
    return Prepared(x_train, y_train, x_test, y_test, scaler)


class LSTMModel(nn.Module):
    """One LSTM layer, no dropout, a linear head on the last time step."""

    def __init__(self, input_size: int = 2, hidden_size: int = 64, output_size: int = 2) -> None:
        super().__init__()
        self.lstm = nn.LSTM(input_size, hidden_size, batch_first=True)
        self.fc = nn.Linear(hidden_size, output_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out, _ = self.lstm(x)
        return self.fc(out[:, -1, :])


def seed_everything(seed: int) -> None:
    """The paper's "PyTorch seeding mechanism": model init and the loader's shuffle follow it."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def loaders(data: Prepared, batch_size: int = 64) -> tuple[Any, Any]:
    train = TensorDataset(torch.from_numpy(data.x_train), torch.from_numpy(data.y_train))
    test = TensorDataset(torch.from_numpy(data.x_test), torch.from_numpy(data.y_test))
    return DataLoader(train, batch_size=batch_size, shuffle=True), DataLoader(test, batch_size=batch_size, shuffle=False)


def train_epochs(model: nn.Module, optimizer: Any, loader: Any, epochs: int, device: torch.device,
                 on_epoch: Callable[[int, float], None] | None = None) -> tuple[list[float], float]:
    """Train for ``epochs``; return the mean batch loss of each epoch and the wall time (s)."""
    criterion = nn.MSELoss()
    losses: list[float] = []
    start = time.perf_counter()
    model.train()
    for epoch in range(1, epochs + 1):
        total, batches = 0.0, 0
        for xb, yb in loader:
            xb, yb = xb.to(device), yb.to(device)
            optimizer.zero_grad()
            loss = criterion(model(xb), yb)
            loss.backward()
            optimizer.step()
            total += loss.item()
            batches += 1
        losses.append(total / max(batches, 1))
        if on_epoch is not None:
            on_epoch(epoch, losses[-1])
    _sync(device)
    return losses, time.perf_counter() - start


def eval_loss(model: nn.Module, loader: Any, repeats: int, device: torch.device) -> tuple[float, float]:
    """The paper's evaluation: the whole test set, ``repeats`` times; return its loss and wall time."""
    criterion = nn.MSELoss()
    start = time.perf_counter()
    model.eval()
    loss = math.nan
    with torch.no_grad():
        for _ in range(repeats):
            total, batches = 0.0, 0
            for xb, yb in loader:
                xb, yb = xb.to(device), yb.to(device)
                total += criterion(model(xb), yb).item()
                batches += 1
            loss = total / max(batches, 1)
    _sync(device)
    return loss, time.perf_counter() - start


def predict_scaled(model: nn.Module, x: np.ndarray, device: torch.device) -> np.ndarray:
    model.eval()
    with torch.no_grad():
        return model(torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)).to(device)).cpu().numpy()


def smape(y: np.ndarray, y_hat: np.ndarray) -> float:
    """The paper's SMAPE: percent on a 0..200 scale."""
    return float(200 * np.mean(np.abs(y_hat - y) / (np.abs(y_hat) + np.abs(y))))


def metrics(y: np.ndarray, y_hat: np.ndarray) -> dict[str, float]:
    """One variable's metrics, with the paper's per-run rounding of MAE and SMAPE."""
    mse = float(mean_squared_error(y, y_hat))
    return {
        "mse": mse,
        "rmse": math.sqrt(mse),
        "mape": float(mean_absolute_percentage_error(y, y_hat)),
        "mae": round(float(mean_absolute_error(y, y_hat)), 2),
        "smape": round(smape(y, y_hat), 2),
        "r2": float(r2_score(y, y_hat)),
    }


def test_metrics(model: nn.Module, data: Prepared, device: torch.device) -> dict[str, dict[str, float]]:
    """Metrics of the model on the test windows, per variable, in percent units."""
    y_pred = data.scaler.inverse_transform(predict_scaled(model, data.x_test, device).astype(np.float64))
    y_true = data.scaler.inverse_transform(data.y_test.astype(np.float64))
    return {"cpu": metrics(y_true[:, 0], y_pred[:, 0]), "mem": metrics(y_true[:, 1], y_pred[:, 1])}


def model_size_mb(model: nn.Module) -> float:
    """Bytes of the serialized state_dict / 1e6 (the paper's "Model Size (MB)")."""
    buf = io.BytesIO()
    torch.save(model.state_dict(), buf)
    return buf.tell() / 1e6


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def rss_mib() -> float:
    """Resident set size of this process in MiB (what memory_profiler samples)."""
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return math.nan


class RssSampler:
    """Samples this process's RSS every ``interval`` s while the block runs (memory_profiler's way).

    ``mean`` is what the paper reports as the memory of a training ("Memory Usage (MB)"): the mean
    of the samples, the first one taken at entry.
    """

    def __init__(self, interval: float = 0.1) -> None:
        self.interval = interval
        self.samples: list[float] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="rss-sampler", daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.samples.append(rss_mib())

    def __enter__(self) -> RssSampler:
        self.samples.append(rss_mib())
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._thread.join()
        self.samples.append(rss_mib())

    @property
    def mean(self) -> float:
        return sum(self.samples) / len(self.samples)
