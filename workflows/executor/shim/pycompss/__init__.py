"""A stand-in for PyCOMPSs' ``pycompss`` package, from storage-api's development executor.

Not PyCOMPSs: only the ``pycompss.api`` symbols dislib 1.0 uses (see
``workflows/executor/__init__.py``). ``workflows.executor`` puts this directory on ``sys.path``
only when the real ``pycompss`` cannot be imported. Outside a run of the executor (plain
``python app.py``, inside a worker or a backend) tasks run sequentially, as PyCOMPSs does out of scope.
"""
