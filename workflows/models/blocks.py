"""Persistent numpy blocks for dislib ds-arrays, generated on the backends.

A :class:`PersistentBlock` holds one 2-D block. dislib only needs what its ``Array`` code calls on a
block: ``np.block``/``np.asarray`` (``__array__``), ``shape`` (``_train`` splits support vectors by
``xi.shape[1]``), slicing (``_filter_block``), ``dtype``/``ndim``/``nbytes``/``len``. The shape
attributes are stored fields, so reading them through a handle moves a few bytes, not the block.

Blocks are filled where they live: :meth:`fill_blobs` is an active method, so a client (or a task
running in the backend) makes an empty block persistent on a chosen backend and asks it to
generate its points; nothing but the parameters and the labels travels.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from storage_api import StorageObject  # the class COMPSs knows as storage.api.StorageObject
from storage_api import activemethod


def blob_centers(n_centers: int = 15, n_features: int = 20) -> np.ndarray:
    """The fixed centers of the paper's reference code: ``uniform(-1, 1) * 10`` with seed 777."""
    rng = np.random.RandomState(777)
    return rng.uniform(-1, 1, (n_centers, n_features)) * 10


def make_points(n_samples: int, seed: int, n_centers: int = 15, n_features: int = 20) -> tuple[np.ndarray, np.ndarray]:
    """``make_blobs`` points around :func:`blob_centers` (labels as an ``(n, 1)`` column)."""
    from sklearn.datasets import make_blobs

    x, y = make_blobs(n_samples=n_samples, n_features=n_features, centers=blob_centers(n_centers, n_features),
                      shuffle=True, random_state=seed)
    return x, y.reshape(-1, 1)


def spread(n_blocks: int, backends: list[Any], placement: str = "contiguous") -> list[Any]:
    """The backend of each of ``n_blocks`` blocks.

    ``"round-robin"``: block ``i`` on backend ``i % B`` (the reference code's ``cycle``).
    ``"contiguous"``: backends take turns by runs of consecutive blocks (block ``i`` on backend
    ``i * B // n_blocks``), so blocks that algorithms combine pairwise (dislib's cascade merges
    neighbouring row blocks) share a backend; each backend still gets ``n_blocks / B`` blocks.
    """
    if placement == "round-robin":
        return [backends[i % len(backends)] for i in range(n_blocks)]
    if placement == "contiguous":
        return [backends[i * len(backends) // n_blocks] for i in range(n_blocks)]
    raise ValueError(f"unknown placement {placement!r}: 'contiguous' or 'round-robin'")


class PersistentBlock(StorageObject):
    """One numpy block of a ds-array, kept on a backend."""

    data: Any
    shape: tuple
    dtype: Any
    ndim: int
    nbytes: int

    def __init__(self, data: Any = None) -> None:
        self._set(np.empty((0, 0)) if data is None else np.asarray(data))

    def _set(self, data: np.ndarray) -> None:
        self.data = data
        self.shape = tuple(data.shape)
        self.dtype = data.dtype
        self.ndim = data.ndim
        self.nbytes = int(data.nbytes)

    @activemethod
    def fill_blobs(self, n_samples: int, seed: int, n_centers: int = 15, n_features: int = 20) -> np.ndarray:
        """Generate this block's points here; return their labels (``(n, 1)``)."""
        x, y = make_points(n_samples, seed, n_centers, n_features)
        self._set(x)
        return y

    @activemethod(readonly=True)
    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        return self.data if dtype is None else self.data.astype(dtype, copy=False)

    @activemethod(readonly=True)
    def __getitem__(self, key: Any) -> Any:
        return self.data[key]

    @activemethod(readonly=True)
    def __len__(self) -> int:
        return len(self.data)

    @activemethod(readonly=True)
    def where(self) -> int:
        """The pid of the process holding the live block (tests check task placement with it)."""
        import os

        return os.getpid()
