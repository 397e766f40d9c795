"""Directory put on sys.path by the launcher: it holds the stand-in ``pycompss`` package."""
