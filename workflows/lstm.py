"""Former path of :mod:`workflows.models.lstm` (stored class paths and pickles name it): the same module."""

import sys

from workflows.models import lstm

sys.modules[__name__] = lstm
