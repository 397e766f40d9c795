"""``python -m workflows.executor [--workers N] APP.py [args...]``."""

from storage_api import cmdline
from workflows.executor import main

cmdline.run("python -m workflows.executor", main)
