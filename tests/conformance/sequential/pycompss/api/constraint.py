from ._passthrough import decorator as constraint

__all__ = ["constraint"]
