from ._passthrough import decorator as on_failure

__all__ = ["on_failure"]
