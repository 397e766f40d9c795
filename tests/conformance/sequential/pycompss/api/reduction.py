from ._passthrough import decorator as reduction

__all__ = ["reduction"]
