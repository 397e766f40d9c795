"""The COMPSs adapter: storage conf/props files, the Java jar and bundle, the enqueue scripts' logic.

The public face is elsewhere: the ``storage`` package (``storage.api``, what PyCOMPSs imports),
``storage-api compss-bundle DEST`` and the bundle's ``scripts/storage_init.sh``/``storage_stop.sh``,
which run ``python -m storage_api._compss init|stop|node ...``.
"""
