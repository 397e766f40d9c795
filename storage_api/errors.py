"""The exception tree of storage_api.

Every error the store raises derives from :class:`StoreError`. Transport faults derive from
:class:`CommunicationError`: they are transient and the only ones worth retrying. Where callers
expect a builtin type, the error also derives from it (``ObjectNotFound`` is a ``KeyError``,
``InvalidArguments`` a ``TypeError``), so ordinary ``except`` clauses keep working.

An exception raised inside an active method reaches the caller as the *same* type; the remote
traceback is attached as ``exc.remote_traceback`` and shown as a note. When the exception's class
cannot be rebuilt on the caller's side, :class:`RemoteError` carries its type name, message and
traceback instead. All errors pickle cleanly (they travel between processes).
"""

from __future__ import annotations

__all__ = [
    "StoreError",
    "CommunicationError",
    "ProtocolError",
    "BackendUnavailable",
    "MetadataRebuilding",
    "AuthenticationError",
    "ObjectNotFound",
    "AliasExists",
    "ObjectExists",
    "ClassNotFound",
    "MethodNotFound",
    "InvalidArguments",
    "ConfigError",
    "UsageError",
    "RemoteError",
    "ObjectDeleted",
    "ObjectMoved",
    "StorageFull",
    "PayloadTooLarge",
    "UnserializableState",
    "CallCancelled",
]


class StoreError(Exception):
    """Root of every error raised by the store."""

    retryable = False


class CommunicationError(StoreError, ConnectionError):
    """A transport fault (connection refused, reset, timed out). Transient: safe to retry."""

    retryable = True


class ProtocolError(CommunicationError):
    """A peer sent bytes that are not a valid frame; the connection is closed."""


class BackendUnavailable(CommunicationError):
    """The backend holding the object is dead or unreachable."""


class MetadataRebuilding(CommunicationError):
    """Redis lost (part of) its data and the backends are registering their objects again; an
    object that exists may not be found until they are done (within seconds). Retryable."""


class AuthenticationError(StoreError, PermissionError):
    """The peer did not prove knowledge of the deployment secret (or we could not)."""


class ObjectNotFound(StoreError, KeyError):
    """No object with that id or alias exists in the store."""

    def __str__(self) -> str:  # KeyError quotes its argument; we want a sentence
        return Exception.__str__(self)


class ObjectDeleted(ObjectNotFound):
    """The handle refers to an object that was deleted."""


class ObjectMoved(ObjectNotFound):
    """The backend asked does not hold the object (any more): it moved or another backend is its
    primary. Clients follow it to where Redis says it is; callers see this only when it keeps
    moving for longer than the retry deadline."""


class AliasExists(StoreError, ValueError):
    """The alias is already taken by another object."""


class ObjectExists(StoreError, ValueError):
    """``make_persistent`` named an id that a live object already has."""


class ClassNotFound(StoreError, ImportError):
    """The class named by a module path cannot be imported where it is needed."""


class MethodNotFound(StoreError, AttributeError):
    """The class has no active method with that name."""


class InvalidArguments(StoreError, TypeError):
    """The arguments do not match the method's signature."""


class StorageFull(StoreError, OSError):
    """The backend's disk (or quota) is full: the write was not made and left no trace.

    Reads keep working; writes work again once space is freed."""


class PayloadTooLarge(StoreError, ValueError):
    """A request or reply exceeds a wire limit (named in the message); nothing was sent."""


class UnserializableState(StoreError, TypeError):
    """An object's state holds a value that cannot be pickled; ``attribute`` names it.

    Raised by ``make_persistent`` and by a mutating call whose new state cannot be stored (the
    object then keeps its state from before the call)."""

    def __init__(self, message: str, attribute: str = "") -> None:
        super().__init__(message, attribute)
        self.attribute = attribute

    def __str__(self) -> str:
        return str(self.args[0])


class CallCancelled(StoreError):
    """Raised inside an active method by ``report_progress`` when the method's caller is gone (its
    process ended, or its call was interrupted, by Ctrl-C say): the method stops at its next
    report instead of running to the end for nobody. Not retryable."""


class ConfigError(StoreError, ValueError):
    """The configuration is invalid or incomplete."""


class UsageError(StoreError, ValueError):
    """A command was given a bad argument or input (a missing file, an unknown backend): the
    message says what was wrong and what to do."""


class RemoteError(StoreError):
    """An exception raised remotely whose type cannot be rebuilt here.

    ``type_name`` is its qualified type name and ``remote_traceback`` the formatted traceback.
    """

    def __init__(self, type_name: str, message: str, remote_traceback: str = "") -> None:
        super().__init__(type_name, message, remote_traceback)
        self.type_name = type_name
        self.message = message
        self.remote_traceback = remote_traceback

    def __str__(self) -> str:
        return f"{self.type_name}: {self.message}"
