"""How storage-api's commands end: one line per mistake, and an exit status that says its kind.

The ``storage-api`` command, the executor's launcher (``storage-api run``) and the apps all run
their ``main`` through :func:`run`:

* a mistake (any :class:`~storage_api.errors.StoreError`, e.g. a :class:`~storage_api.errors.UsageError`
  for a missing file or an unknown backend, or one of the ``mistakes`` types a command names) prints
  ``PROG: message`` on stderr, one line saying what was wrong and what to do, and exits with 2;
* Ctrl-C prints ``PROG: interrupted`` and exits with 130 (128 + SIGINT, what shells expect);
* anything else is a bug: its traceback, exit status 1.

A reader that goes away (``storage-api status | head -1``) is no reason to fail, nor to stop half
way: what is printed after it closed the pipe is dropped, and the command does all it would have
done and ends with its own status.

``--debug`` (:func:`add_debug_option`) or ``STORAGE_API_DEBUG=1`` shows the traceback of every
error instead; the variable reaches the processes a command starts, so ``storage-api --debug run
APP.py`` debugs the app too. The argument checkers (:func:`positive_int`, :func:`input_file`) are
for ``argparse``, which reports a bad argument with its usage line and exit status 2.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import sys
import threading
from collections.abc import Callable, Iterator, Sequence
from typing import Any, NoReturn

from .errors import StoreError, UsageError

__all__ = ["run", "exit_status", "describe", "add_debug_option", "set_debug", "debugging", "uninterrupted", "positive_int", "input_file",
           "EXIT_MISTAKE", "EXIT_INTERRUPTED"]

EXIT_MISTAKE = 2
EXIT_INTERRUPTED = 130
DEBUG_ENV = "STORAGE_API_DEBUG"


def debugging() -> bool:
    """Whether errors should show their traceback (``--debug`` or ``STORAGE_API_DEBUG=1``)."""
    return os.environ.get(DEBUG_ENV, "").strip().lower() not in ("", "0", "false", "no", "off")


def set_debug() -> None:
    """Show tracebacks from now on, here and in the processes this one starts."""
    os.environ[DEBUG_ENV] = "1"  # an environment variable, so that child processes debug too


class _Debug(argparse.Action):
    def __call__(self, parser: Any, namespace: Any, values: Any, option_string: Any = None) -> None:
        set_debug()
        setattr(namespace, self.dest, True)


def add_debug_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--debug", action=_Debug, nargs=0, default=False,
                        help=f"show the traceback of any error (or set {DEBUG_ENV}=1)")


def exit_status(prog: str, main: Callable[[], int | None], *,
                mistakes: tuple[type[BaseException], ...] = ()) -> int:
    """Run ``main()``; return its exit status after reporting an error as the module docstring says."""
    if sys.stdout is None or sys.stderr is None:  # no standard streams at all (pythonw): nothing to guard
        return _ending(prog, main, mistakes)
    # stderr too: `up 2>&1 | head -1` must not stop `up` half-way (and tear down what it started)
    previous = sys.stdout, sys.stderr
    sys.stdout, sys.stderr = _ReaderProof(sys.stdout), _ReaderProof(sys.stderr)
    try:
        return _ending(prog, main, mistakes)
    finally:
        for stream in (sys.stdout, sys.stderr):
            stream.flush()  # here, where a closed pipe is dropped, not in the interpreter's exit
        sys.stdout, sys.stderr = previous


class _ReaderProof:
    """A standard output whose reader may have gone: writes to a closed pipe are dropped."""

    def __init__(self, stream: Any) -> None:
        self._stream = stream

    def write(self, text: str) -> int:
        try:
            return self._stream.write(text)
        except BrokenPipeError:
            self._drop()
            return len(text)

    def flush(self) -> None:
        try:
            self._stream.flush()
        except BrokenPipeError:
            self._drop()

    def _drop(self) -> None:
        # The descriptor itself goes to /dev/null: what is still buffered, and the interpreter's
        # own flush at exit, then write nowhere instead of failing again.
        devnull = os.open(os.devnull, os.O_WRONLY)
        try:
            os.dup2(devnull, self._stream.fileno())
        finally:
            os.close(devnull)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._stream, name)


def _ending(prog: str, main: Callable[[], int | None], mistakes: tuple[type[BaseException], ...]) -> int:
    try:
        return int(main() or 0)
    except SystemExit as exc:  # argparse, or an app's own sys.exit
        if exc.code is None or isinstance(exc.code, int):
            return exc.code or 0
        print(exc.code, file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        if debugging():
            raise
        print(f"{prog}: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except (StoreError, *mistakes) as exc:
        if debugging():
            raise
        print(f"{prog}: {describe(exc)}", file=sys.stderr)
        return EXIT_MISTAKE


def describe(exc: BaseException) -> str:
    """The one line that reports a mistake: the message, after its type unless it is a UsageError."""
    message = " ".join(str(exc).split()) or "(no message)"  # one line, whatever the message holds
    return message if isinstance(exc, UsageError) else f"{type(exc).__name__}: {message}"


def run(prog: str, main: Callable[[Sequence[str] | None], int | None], argv: Sequence[str] | None = None, *,
        mistakes: tuple[type[BaseException], ...] = ()) -> NoReturn:
    """``sys.exit`` with the status of ``main(argv)``, errors reported as the module docstring says."""
    sys.exit(exit_status(prog, lambda: main(argv), mistakes=mistakes))


@contextlib.contextmanager
def uninterrupted() -> Iterator[None]:
    """A block that Ctrl-C does not cut short: a Ctrl-C during it is raised when it ends.

    For a step whose effect must be known to be cleaned up (``make_persistent``: interrupted while
    waiting for the reply, the object may exist with an id the caller never got). In the main
    thread only (elsewhere Ctrl-C does not arrive anyway).
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    pressed: list[int] = []
    previous = signal.signal(signal.SIGINT, lambda signum, frame: pressed.append(signum))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
    if pressed:
        raise KeyboardInterrupt


def _int_at_least(text: str, least: int) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < least:
        raise argparse.ArgumentTypeError(f"must be at least {least}, not {value}")
    return value


def positive_int(text: str) -> int:
    """An ``argparse`` type: an integer of at least 1."""
    return _int_at_least(text, 1)


def non_negative_int(text: str) -> int:
    """An ``argparse`` type: an integer of at least 0."""
    return _int_at_least(text, 0)


def input_file(text: str) -> str:
    """An ``argparse`` type: the path of an existing, readable regular file."""
    if not os.path.exists(text):
        raise argparse.ArgumentTypeError(f"no such file: {text}")
    if not os.path.isfile(text):
        raise argparse.ArgumentTypeError(f"{text} is not a file")
    if not os.access(text, os.R_OK):
        raise argparse.ArgumentTypeError(f"{text} is not readable (permission denied)")
    return text
