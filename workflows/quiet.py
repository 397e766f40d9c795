"""Importing third-party libraries without the notices users cannot act on.

dislib prints two notices on import that say nothing about a user's run: ``WARNING: This dislib
installation does not have a version number ... No module named 'pkg_resources'`` (it asks
setuptools for its own version; setuptools 81 and later have no ``pkg_resources``) and, without
torch, ``WARNING: Tensors have not been loaded``. Its import also pulls in torch, which only its
tensor module uses. :func:`quiet_import` keeps such import-time output from reaching the user
(it is shown if the import fails) and can keep optional dependencies out of the process.
The executor's local workers import the functions of the app's tasks the same way, keeping out
what the app kept out (:func:`kept_out`).
"""

from __future__ import annotations

import contextlib
import importlib.abc
import io
import sys
import warnings
from collections.abc import Iterator


_kept_out: set[str] = set()


def kept_out() -> tuple[str, ...]:
    """The packages :func:`quiet_import` kept out of this process (and that are still not imported)."""
    return tuple(sorted(name for name in _kept_out if name not in sys.modules))


class _Hide(importlib.abc.MetaPathFinder):
    """Makes ``import name`` fail for the given top-level packages (not yet imported)."""

    def __init__(self, names: tuple[str, ...]) -> None:
        self.names = names

    def find_spec(self, fullname: str, path: object = None, target: object = None) -> None:
        if fullname.partition(".")[0] in self.names:
            raise ImportError(f"{fullname} is kept out of this process", name=fullname)
        return None


@contextlib.contextmanager
def quiet_import(*, hide: tuple[str, ...] = ()) -> Iterator[None]:
    """Run the imports of a ``with`` block with their prints and warnings held back.

    ``hide`` names optional dependencies the imported libraries must do without (they fall back
    as when the package is not installed), e.g. ``hide=("torch",)`` for dislib's tensor module,
    which the ds-array code does not need. Packages already imported are not affected.
    """
    held = io.StringIO()
    finder = _Hide(hide) if hide else None
    if finder is not None:
        sys.meta_path.insert(0, finder)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(held), contextlib.redirect_stderr(held):
            warnings.simplefilter("ignore")
            yield
    except BaseException:
        sys.stderr.write(held.getvalue())  # they may explain the failure
        raise
    finally:
        if finder is not None:
            sys.meta_path.remove(finder)
            _kept_out.update(name for name in hide if name not in sys.modules)
