"""``pycompss.api`` of the development executor's shim (see ``pycompss/__init__.py``)."""
