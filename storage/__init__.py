"""COMPSs' Persistent Storage interface for storage_api (PyCOMPSs imports ``storage.api``).

The package name is fixed by COMPSs: only one ``storage`` package can be on a worker's
``PYTHONPATH``. Importing it does nothing; see :mod:`storage.api`.
"""
