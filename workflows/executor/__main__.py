"""``python -m workflows.executor [--workers N] APP.py [args...]``."""

import sys

from workflows.executor import main

sys.exit(main())
