"""Former path of :mod:`workflows.models.trainer` (stored class paths and pickles name it): the same module."""

import sys

from workflows.models import trainer

sys.modules[__name__] = trainer
