"""``@on_failure(management=..., returns=...)``: what a failed task's futures hold."""

from workflows.executor._decorators import on_failure

__all__ = ["on_failure"]
