"""``@constraint``: recorded, not enforced (one machine; the executor's pool sizes the cores)."""

from workflows.executor._decorators import constraint

__all__ = ["constraint"]
