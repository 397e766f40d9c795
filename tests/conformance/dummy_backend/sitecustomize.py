"""The names COMPSs' test apps take from COMPSs' dummy storage backend, over storage-api.

COMPSs' ``0_dummy_python`` and ``0_annotation_*`` apps were written for its dummy backend: their
models subclass ``storage.Object.SCO``, call ``updatePersistent()`` after a change, and write the
object to the dummy backend's files with PyCOMPSs' serializer. None of that is the COMPSs storage
interface, so storage-api does not offer it; the conformance harness puts this folder on those
apps' PYTHONPATH (app, launcher and backends alike), where Python loads this module at start-up.

It adds, only where the real modules do not exist (its finder comes after every other one):
``storage.Object.SCO`` (storage-api's StorageObject; ``updatePersistent`` does nothing, as changes
are already on the backend), ``pycompss.util.serialization.serializer.serialize_to_file`` (does
nothing: the object is already stored) and ``pycompss.tests.outlog.create_logger``.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import logging
import sys
import types


def _storage_object(module: types.ModuleType) -> None:
    from storage_api import StorageObject

    class SCO(StorageObject):
        def updatePersistent(self) -> None:
            """The dummy backend rewrites its file here; storage-api stored the change already."""

    SCO.__module__, SCO.__qualname__ = module.__name__, "SCO"
    module.SCO = SCO


def _serializer(module: types.ModuleType) -> None:
    module.serialize_to_file = lambda obj, path, logger=None: None


def _outlog(module: types.ModuleType) -> None:
    module.create_logger = lambda *args, **kwargs: logging.getLogger("pycompss.tests")


_MODULES = {
    "storage.Object": _storage_object,
    "pycompss.util": None,
    "pycompss.util.serialization": None,
    "pycompss.util.serialization.serializer": _serializer,
    "pycompss.tests": None,
    "pycompss.tests.outlog": _outlog,
}


class _Finder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    def find_spec(self, fullname, path=None, target=None):
        if fullname not in _MODULES:
            return None
        is_package = _MODULES[fullname] is None
        return importlib.machinery.ModuleSpec(fullname, self, is_package=is_package)

    def create_module(self, spec):
        return None

    def exec_module(self, module):
        fill = _MODULES[module.__name__]
        if fill is not None:
            fill(module)


sys.meta_path.append(_Finder())
