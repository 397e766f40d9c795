"""``@task``: under the executor a call returns future(s); elsewhere it runs the function."""

from workflows.executor._decorators import task

__all__ = ["task"]
