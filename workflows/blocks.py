"""Former path of :mod:`workflows.models.blocks` (stored class paths and pickles name it): the same module."""

import sys

from workflows.models import blocks

sys.modules[__name__] = blocks
