"""COMPSs' storage object module (``from storage.storage_object import StorageObject``).

COMPSs' storage backends define the base class of persistent objects here; in this store it is
:class:`storage_api.ActiveObject` itself, so models written for COMPSs and for storage_api share
one class. ``storage_object`` is the lowercase name COMPSs' Redis backend also gives it.
"""

from storage_api import StorageObject

storage_object = StorageObject

__all__ = ["StorageObject", "storage_object"]
