"""Former path of :mod:`workflows.models.datasets` (stored class paths and pickles name it): the same module."""

import sys

from workflows.models import datasets

sys.modules[__name__] = datasets
