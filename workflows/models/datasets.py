"""CPU/MEM utilisation series for the LSTM app: a seeded generator and a checked CSV reader.

The paper's application trains on ``node_3_utilisation_sample_dataset.csv`` (columns
``timestamp,CPU,MEM``, utilisation in percent, 1,989 rows at 5-minute steps). :func:`generate`
produces a series with the same shape and the statistics that drive the paper's metrics: CPU is
short-memory noise around a level of ~31.5 % that shifts to ~34.6 % (and gets noisier) in the last
fifth; MEM ramps from ~65 % to ~88 % with sawtooth noise, then saturates just above the training
maximum.

This module imports only the standard library at the top (numpy and pandas are imported by the
functions that need them), so a thin client can import it to validate a CSV or to catch its
errors by type.
"""

from __future__ import annotations

import csv
import io
import math
import os
from typing import Any

COLUMNS = ("CPU", "MEM")
ROWS = 1989
START = "2024-09-02 13:55:00"
STEP_MINUTES = 5
TRAIN_FRACTION = 0.8


class DatasetError(ValueError):
    """A CSV that cannot feed the LSTM."""


class MissingColumns(DatasetError):
    """The header lacks ``timestamp``, ``CPU`` or ``MEM``."""


class NonNumericValue(DatasetError):
    """A CPU or MEM cell is empty or not a number."""


class TooFewRows(DatasetError):
    """Too few rows for the chronological split and the lag window."""


def min_rows(window: int = 6) -> int:
    """Fewest rows whose train and test splits each yield at least one window of ``window`` lags."""
    n = window + 1
    while int(n * TRAIN_FRACTION) <= window or n - int(n * TRAIN_FRACTION) <= window:
        n += 1
    return n


def check_csv(text: str, window: int = 6, *, source: str = "CSV") -> int:
    """Validate CSV ``text`` with the standard library only; return its number of data rows.

    Raises :class:`MissingColumns`, :class:`NonNumericValue` or :class:`TooFewRows` with the line
    and column at fault.
    """
    reader = csv.reader(io.StringIO(text))
    header = next(reader, None)
    if header is None:
        raise MissingColumns(f"{source} is empty: expected a header with timestamp,CPU,MEM")
    header = [h.strip() for h in header]
    missing = [c for c in ("timestamp", *COLUMNS) if c not in header]
    if missing:
        raise MissingColumns(f"{source} lacks column(s) {', '.join(missing)} (header: {','.join(header)})")
    index = {c: header.index(c) for c in COLUMNS}
    rows = 0
    for line, record in enumerate(reader, start=2):
        if not record or all(not cell.strip() for cell in record):
            continue
        for column, i in index.items():
            cell = record[i].strip() if i < len(record) else ""
            try:
                value = float(cell)
            except ValueError:
                value = math.nan
            if not math.isfinite(value):
                raise NonNumericValue(f"{source} line {line}, column {column}: {cell!r} is not a number")
        rows += 1
    need = min_rows(window)
    if rows < need:
        raise TooFewRows(f"{source} has {rows} data rows; a {window}-step window with an 80/20 split needs at least {need}")
    return rows


class NotText(DatasetError):
    """The file is not UTF-8 text."""


def read_text(path: str | os.PathLike[str]) -> str:
    """The text of a CSV file (what a client ships to the backend); :class:`NotText` if it is not text."""
    try:
        with open(path, encoding="utf-8") as fh:
            return fh.read()
    except UnicodeDecodeError as exc:
        raise NotText(f"{os.fspath(path)} is not a UTF-8 text file (byte {exc.start}); "
                      "expected a CSV with timestamp,CPU,MEM columns") from None


def parse_csv(text: str, window: int = 6, *, source: str = "CSV") -> Any:
    """A checked CSV as a pandas DataFrame indexed by timestamp, columns ``CPU, MEM`` (in order)."""
    import pandas as pd

    check_csv(text, window, source=source)
    frame = pd.read_csv(io.StringIO(text)).set_index("timestamp")  # as the paper's code reads it
    return frame[list(COLUMNS)].astype("float64")


def generate(seed: int = 0, rows: int = ROWS) -> Any:
    """A synthetic series modelled on the paper's dataset (same columns, cadence and start)."""
    import numpy as np
    import pandas as pd

    rng = np.random.default_rng(seed)
    split = int(rows * TRAIN_FRACTION)
    shift = max(split - rows // 66, 1)  # the CPU regime change starts ~1.5 days before the end

    def ar1(phi: float, sigma: float) -> Any:
        eps = rng.normal(0.0, sigma * math.sqrt(1 - phi * phi), rows)
        out = np.empty(rows)
        out[0] = rng.normal(0.0, sigma)
        for t in range(1, rows):
            out[t] = phi * out[t - 1] + eps[t]
        return out

    t = np.arange(rows)
    level = np.where(t < shift, 31.0 + 1.0 * t / max(shift, 1), 34.6)
    spread = np.where(t < shift, 1.6, 2.6)
    cpu = level + spread * ar1(0.45, 1.0)
    dips = rng.random(rows) < 0.02
    cpu[dips] -= rng.uniform(4.0, 7.0, dips.sum())
    late = np.flatnonzero(t >= shift)
    if late.size:
        peaks = rng.choice(late, size=min(4, late.size), replace=False)
        cpu[peaks] += rng.uniform(6.0, 12.0, peaks.size)
    cpu = np.clip(cpu, 20.0, 48.0)

    ramp_end = int(rows * 0.82)
    ramp = 65.0 + 22.0 * np.minimum(t, ramp_end) / max(ramp_end, 1)
    mem = ramp + ar1(0.6, 1.5)
    drops = rng.random(rows) < 0.006
    for i in np.flatnonzero(drops & (t < ramp_end)):
        mem[i:i + 6] -= rng.uniform(6.0, 8.0) * np.exp(-np.arange(min(6, rows - i)) / 2.0)
    mem = np.minimum(mem, 87.9)
    plateau = 88.1 + ar1(0.5, 0.7)
    mem = np.where(t < ramp_end, mem, np.clip(plateau, 84.8, 89.6))

    index = pd.date_range(START, periods=rows, freq=f"{STEP_MINUTES}min").strftime("%Y-%m-%d %H:%M:%S")
    return pd.DataFrame({"CPU": cpu, "MEM": mem}, index=pd.Index(index, name="timestamp"))


def to_csv(frame: Any) -> str:
    """CSV text (``timestamp,CPU,MEM``) of a frame from :func:`generate` or :func:`parse_csv`."""
    return frame.to_csv(float_format="%.15g")
