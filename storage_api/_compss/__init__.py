"""The COMPSs adapter: ``_conf`` (storage conf and props files), ``_bundle`` (the Java jar and the
bundle), ``_jobs`` (what ``storage_init.sh``/``storage_stop.sh`` do for a COMPSs job).

The public face is elsewhere: the ``storage`` package (``storage.api``, what PyCOMPSs imports),
``storage-api compss-bundle DEST`` and the bundle's ``scripts/storage_init.sh``/``storage_stop.sh``,
which run ``python -m storage_api._compss init|stop|node ...``.
"""
