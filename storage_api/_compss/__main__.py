"""``python -m storage_api._compss init|stop|node ...``: what the bundle's scripts run."""

import sys

from ._jobs import main

sys.exit(main(sys.argv[1:]))
