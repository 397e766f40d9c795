"""The executor's own reasons for a task to fail (its code's exceptions travel as they are).

Each names the task. They are raised in the process that ran the task (a Dask worker, a backend)
or in the app's, and reach ``compss_wait_on`` like any task error; they pickle as their message.
"""

from __future__ import annotations

from storage_api.errors import StoreError


class TaskError(RuntimeError):
    """A task failed for a reason of the executor's: the message names the task and the reason."""


class UnwaitedTaskFailed(TaskError):
    """A task failed and the app never waited on it: the run ends with status 1 and the task's
    error as the cause (its traceback), whatever its type. A store error there (say
    ``ClassNotFound`` from a backend) is not a mistake on the command line, which ends with 2."""


class TaskCancelled(TaskError):
    """A task was not run because a task it depends on failed under ``CANCEL_SUCCESSORS``."""


class ReturnsMismatch(TaskError, TypeError):
    """A task's value does not match its declared ``returns`` (``returns=2`` and a scalar came back,
    or a pair for ``returns=3``)."""


class TaskTimeout(TaskError, TimeoutError):
    """A task ran longer than its ``@task(time_out=...)`` seconds (PyCOMPSs' ``TimeOutError``)."""


class TaskWorkerDied(TaskError):
    """The worker processes running the task kept ending abruptly (``os._exit``, a crash, killed)."""


class ArgumentNotSendable(StoreError, TypeError):
    """An argument of a task cannot be serialized to the process that would run it (neither pickle
    nor cloudpickle can): the message names the argument and the task."""
