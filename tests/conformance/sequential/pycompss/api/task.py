from ._passthrough import decorator as task

__all__ = ["task"]
