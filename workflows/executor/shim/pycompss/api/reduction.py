"""``@reduction(chunk_size=...)``: one call on the whole collection, as PyCOMPSs runs it sequentially."""

from workflows.executor._decorators import reduction

__all__ = ["reduction"]
