"""Which large buffers of an object's state were written since the log last stored them.

A mutating call may change a large array in place (``self.data[0] = 1`` keeps the array's identity)
or not at all; finding out by reading or hashing it costs as much as writing it again. The kernel
knows: userfaultfd write protection in asynchronous mode (Linux 6.7, ``UFFD_FEATURE_WP_ASYNC``)
marks a written page without stopping the writer, and the ``PAGEMAP_SCAN`` ioctl of
``/proc/self/pagemap`` reports the marked pages of a range and protects them again in one call.

So before a buffer is stored, :func:`watch` registers the pages that hold it (rounded outwards to
whole pages: a write to a neighbour on a shared page only costs a needless rewrite) and protects
them; at the next save :func:`unchanged` asks whether any of them was written since. Every doubt
answers "written" (no userfaultfd, a failed ioctl, a range no longer registered): the caller then
stores the buffer again, as it would without this module. Protection is never removed: a buffer that
is not watched any more costs its writers at most one resolved fault per page.

Layouts follow the kernel's uapi headers ``linux/userfaultfd.h`` (``uffdio_api``,
``uffdio_register``, ``uffdio_writeprotect``) and ``linux/fs.h`` (``pm_scan_arg``, ``page_region``).
"""

from __future__ import annotations

import ctypes
import logging
import mmap
import os
import threading
import weakref
from collections.abc import Callable
from typing import Any

log = logging.getLogger("storage.backend")

PAGE = mmap.PAGESIZE
_SYSCALL = {"x86_64": 323, "aarch64": 282}  # __NR_userfaultfd

# linux/userfaultfd.h
_UFFD_API = 0xAA
_UFFD_USER_MODE_ONLY = 1
_UFFD_FEATURE_WP_UNPOPULATED = 1 << 13
_UFFD_FEATURE_WP_ASYNC = 1 << 15
_UFFDIO_REGISTER_MODE_WP = 1 << 1
_UFFDIO_WRITEPROTECT_MODE_WP = 1 << 0
# linux/fs.h
_PAGE_IS_WRITTEN = 1 << 1
_PM_SCAN_WP_MATCHING = 1 << 0
_PM_SCAN_CHECK_WPASYNC = 1 << 1


def _iowr(kind: int, nr: int, size: int) -> int:
    return (3 << 30) | (size << 16) | (kind << 8) | nr


class _UffdioApi(ctypes.Structure):
    _fields_ = [("api", ctypes.c_uint64), ("features", ctypes.c_uint64), ("ioctls", ctypes.c_uint64)]


class _UffdioRegister(ctypes.Structure):
    _fields_ = [("start", ctypes.c_uint64), ("len", ctypes.c_uint64), ("mode", ctypes.c_uint64),
                ("ioctls", ctypes.c_uint64)]


class _UffdioWriteprotect(ctypes.Structure):
    _fields_ = [("start", ctypes.c_uint64), ("len", ctypes.c_uint64), ("mode", ctypes.c_uint64)]


class _PageRegion(ctypes.Structure):
    _fields_ = [("start", ctypes.c_uint64), ("end", ctypes.c_uint64), ("categories", ctypes.c_uint64)]


class _PmScanArg(ctypes.Structure):
    _fields_ = [(name, ctypes.c_uint64) for name in (
        "size", "flags", "start", "end", "walk_end", "vec", "vec_len", "max_pages", "category_inverted",
        "category_mask", "category_anyof_mask", "return_mask")]


_UFFDIO_API = _iowr(_UFFD_API, 0x3F, ctypes.sizeof(_UffdioApi))
_UFFDIO_REGISTER = _iowr(_UFFD_API, 0x00, ctypes.sizeof(_UffdioRegister))
_UFFDIO_WRITEPROTECT = _iowr(_UFFD_API, 0x06, ctypes.sizeof(_UffdioWriteprotect))
_PAGEMAP_SCAN = _iowr(ord("f"), 16, ctypes.sizeof(_PmScanArg))


class _Watcher:
    """The process's userfaultfd and pagemap descriptors."""

    def __init__(self) -> None:
        libc = ctypes.CDLL(None, use_errno=True)
        self._ioctl = libc.ioctl
        self._ioctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_void_p]
        syscall = libc.syscall
        syscall.restype = ctypes.c_long
        nr = _SYSCALL[os.uname().machine]
        for flags in (os.O_CLOEXEC | os.O_NONBLOCK, os.O_CLOEXEC | os.O_NONBLOCK | _UFFD_USER_MODE_ONLY):
            fd = syscall(ctypes.c_long(nr), ctypes.c_long(flags))
            if fd >= 0:
                break
        else:
            raise OSError(ctypes.get_errno(), "userfaultfd")
        self.uffd = fd
        self.call(fd, _UFFDIO_API, _UffdioApi(_UFFD_API, _UFFD_FEATURE_WP_ASYNC | _UFFD_FEATURE_WP_UNPOPULATED, 0))
        self.pagemap = os.open("/proc/self/pagemap", os.O_RDONLY | os.O_CLOEXEC)
        self._vec = (_PageRegion * 64)()

    def call(self, fd: int, request: int, arg: ctypes.Structure) -> None:
        if self._ioctl(fd, request, ctypes.byref(arg)) < 0:
            err = ctypes.get_errno()
            raise OSError(err, os.strerror(err))

    def register(self, start: int, end: int) -> None:
        self.call(self.uffd, _UFFDIO_REGISTER, _UffdioRegister(start, end - start, _UFFDIO_REGISTER_MODE_WP, 0))

    def take_written(self, start: int, end: int) -> list[tuple[int, int]]:
        """The written runs of pages in a range, protected again in the same step (a write after
        the kernel looked at a page marks it anew)."""
        found: list[tuple[int, int]] = []
        arg = _PmScanArg(ctypes.sizeof(_PmScanArg), _PM_SCAN_WP_MATCHING | _PM_SCAN_CHECK_WPASYNC, start, end, 0,
                         ctypes.addressof(self._vec), len(self._vec), 0, 0, _PAGE_IS_WRITTEN, 0, _PAGE_IS_WRITTEN)
        while True:
            n = self._ioctl(self.pagemap, _PAGEMAP_SCAN, ctypes.byref(arg))
            if n < 0:
                err = ctypes.get_errno()
                raise OSError(err, os.strerror(err))
            found += [(self._vec[i].start, self._vec[i].end) for i in range(n)]
            if arg.walk_end >= end:
                return found
            arg.start = arg.walk_end  # the vector filled up: go on where the kernel stopped


class Span:
    """A watched page range; ``gen`` grows whenever a write to it may have been seen."""

    __slots__ = ("start", "end", "gen", "__weakref__")

    def __init__(self, start: int, end: int) -> None:
        self.start, self.end, self.gen = start, end, 0


# The written marks of a page are consumed by whoever looks first, while several objects (or two
# buffers sharing a page) may be watching it: every look goes through _take, which moves on the
# generation of each watched span that overlaps a written run.
_lock = threading.Lock()
_spans: weakref.WeakValueDictionary[tuple[int, int], Span] = weakref.WeakValueDictionary()
_watcher: _Watcher | None = None
_tried = False


def _get() -> _Watcher | None:
    global _watcher, _tried
    if not _tried:
        try:
            _watcher = _Watcher()
        except Exception as exc:  # not Linux, an old kernel, a seccomp filter...
            log.info("large buffers are stored again on every write (no write tracking: %s)", exc)
        _tried = True
    return _watcher


def _take(watcher: _Watcher, start: int, end: int) -> None:
    try:
        runs = watcher.take_written(start, end)
    except OSError:
        runs = [(start, end)]  # some marks may be consumed: count the whole range as written
        raise
    finally:
        for span in list(_spans.values()) if runs else ():
            if any(span.start < e and s < span.end for s, e in runs):
                span.gen += 1


def _private(start: int, end: int) -> bool:
    """Whether a range is private anonymous memory, which only this process's writes through its
    page tables can change (another process may write shared memory, and a file's mapping
    changes with the file)."""
    covered = start
    with open("/proc/self/maps", "rb") as maps:
        for line in maps:
            fields = line.split(maxsplit=5)
            low, _, high = fields[0].partition(b"-")
            lo, hi = int(low, 16), int(high, 16)
            if hi <= covered or lo >= end:
                continue
            name = fields[5].strip() if len(fields) > 5 else b""
            if lo > covered or fields[1][3:4] != b"p" or fields[4] != b"0" or not (name == b"" or name[:1] == b"["):
                return False
            covered = hi
            if covered >= end:
                return True
    return False


def available() -> bool:
    """Whether this process can watch buffers for writes (else every buffer counts as written)."""
    with _lock:
        return _get() is not None


def address(view: memoryview) -> int | None:
    """Where a writable contiguous buffer starts, or None."""
    if view.readonly or not view.nbytes or not view.c_contiguous:
        return None
    return ctypes.addressof(ctypes.c_char.from_buffer(view))


def watch(pages: tuple[int, int]) -> tuple[Span, int] | None:
    """Start watching a page range for writes: its span and generation now, or None if it cannot
    be watched."""
    with _lock:
        watcher = _get()
        if watcher is None:
            return None
        span = _spans.get(pages)
        if span is None:
            span = _spans[pages] = Span(*pages)
        try:
            if not _private(*pages):
                return None
            watcher.register(*pages)  # again on a registered range: nothing changes
            _take(watcher, *pages)
        except OSError:
            return None
        return span, span.gen


def unchanged(span: Span, gen: int) -> tuple[bool, int]:
    """Whether no write to a watched span can have happened since its generation was ``gen``,
    and its generation now (it is watched on either way); False whenever that is not certain."""
    with _lock:
        watcher = _get()
        if watcher is None:
            return False, span.gen
        try:
            _take(watcher, span.start, span.end)
        except OSError:
            return False, span.gen
        return span.gen == gen, span.gen


class Kept:
    """A large buffer of an object's state as the log holds it: who exported it, where it lies,
    the span watching it and which external buffer of the stored record it is (``slot``)."""

    __slots__ = ("exporter", "addr", "nbytes", "span", "gen", "slot")

    def __init__(self, exporter: Callable[[], Any], addr: int, nbytes: int, span: Span | None, gen: int,
                 slot: int) -> None:
        self.exporter, self.addr, self.nbytes, self.span, self.gen, self.slot = exporter, addr, nbytes, span, gen, slot


def _ref(obj: Any) -> Callable[[], Any]:
    """A reference that keeps the exporter's identity: weak where it can be (a strong one would
    keep a replaced array alive, and numpy refuses to resize an array referenced elsewhere)."""
    try:
        return weakref.ref(obj)
    except TypeError:
        return lambda: obj


def plan(kept: list[Kept], buffers: list[Any], threshold: int) -> tuple[dict[int, int], list[Kept]]:
    """Which of ``buffers`` (an object's state about to be stored) are unchanged since ``kept``
    was stored: ``{buffer index: slot in the stored record}``, and what to keep for the next time.

    A buffer counts as unchanged only if it is the same exporter object (alive all along: a new
    array at a recycled address is another object), at the same address and size, and no page of
    it was written since. Every buffer watched here is protected before the caller copies it.
    """
    before = {(k.addr, k.nbytes): k for k in kept}
    reuse: dict[int, int] = {}
    after: list[Kept] = []
    slot = -1
    for i, buf in enumerate(buffers):
        view = memoryview(buf)
        if view.nbytes < threshold:
            continue
        slot += 1
        exporter = view.obj
        if type(exporter) is bytes:  # immutable: its identity is its content...
            if view.nbytes != len(exporter):  # ... if the buffer is all of it
                continue
            addr = id(exporter)
            old = before.get((addr, view.nbytes))
            if old is not None and old.exporter() is exporter:
                reuse[i] = old.slot
            after.append(Kept(_ref(exporter), addr, view.nbytes, None, 0, slot))
            continue
        addr = address(view)
        if addr is None:
            continue
        old = before.get((addr, view.nbytes))
        if old is not None and old.span is not None and old.exporter() is exporter:
            same, gen = unchanged(old.span, old.gen)
            if same:
                reuse[i] = old.slot
                after.append(Kept(old.exporter, addr, view.nbytes, old.span, gen, slot))
                continue
        # new, or written (perhaps no longer registered): watch it anew before it is copied
        watched = watch((addr - addr % PAGE, -(-(addr + view.nbytes) // PAGE) * PAGE))
        if watched is not None:
            after.append(Kept(_ref(exporter), addr, view.nbytes, watched[0], watched[1], slot))
    return reuse, after
