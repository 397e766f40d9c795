"""The backend's durable object log: a log-structured store with group commit.

Layout: ``<storage_dir>/log/seg-<n>.log`` files. Each is a sequence of records; the live version of
an object is its record with the highest LSN (log sequence number) in any segment.

Record (little-endian)::

    header (60 bytes): magic b"SAR1" | kind u8 | flags u8 | nbuf u16 | lsn u64 | oid 16 bytes
                       | meta_len u32 | body_len u64 | total_len u64 | crc u32 | hcrc u32
    PUT / DEL then:    nbuf x descriptor (24 bytes: where u8 | pad u8 | delta u16 | segment u32
                       | offset u64 | length u64) | meta (JSON) | body (pickle) | inline buffers
    DATA then:         padding (meta_len bytes) | body_len raw bytes (one large buffer of a PUT)

``hcrc`` covers the header, ``crc`` the rest of a PUT/DEL record. A descriptor places a buffer
*inline* (``where`` 0, offset within the record's inline area) or in a DATA record (``where`` 1, the
record at ``offset`` in ``segment``, its data ``delta`` bytes after the record's start). DATA
records carry no checksum: they are written and fsynced *before* the PUT that references them, so
a valid PUT implies durable data.

Streaming: a buffer arriving with a ``persist`` request is written to its DATA record *while it is
received* (:class:`DataStream`): the record is reserved first, its data area padded to a 4 KiB
boundary, and a writer thread writes each received chunk with ``O_DIRECT`` straight from the
receive buffer, so the network transfer and the disk write overlap and no page cache is used.

Writes append under a lock and return the record's LSN; :meth:`Store.sync` makes everything up to
an LSN durable with one ``fdatasync`` shared by every writer waiting at that moment (group commit).
Segments are preallocated so that ``fdatasync`` does not journal a size change per write; each
step is the segment's size so far (at least 1 MiB, at most ``prealloc``) and at most an eighth of
the free space, so a small backend claims little and a nearly full disk still takes what fits.
A full disk is :class:`~storage_api.errors.StorageFull`; the failed record leaves no trace (the
segment's end goes back to where it was).

Recovery scans every segment and stops a segment at its first invalid record (a torn tail: never
acknowledged). Of several valid records with one LSN (a record and its copy by a compaction) the
one in the later segment wins: copies are always written to a segment newer than their source.

Compaction rewrites the live records of all but the active segment into a new one and drops
superseded versions and tombstones (their LSNs are all older than anything newer). A write in
flight may have its DATA record in a segment being compacted while its PUT is not written yet:
each such DATA record *pins* its segment from its reservation until the PUT that references it is
in the index (or the write is abandoned), and compaction waits for the pins on the segments it
will delete. Live records whose PUT lies in a newer segment but whose DATA lies in a compacted one
are copied whole (DATA and PUT), so nothing reachable ever points into a deleted segment.

A new version of an object may point at the DATA records of the version before it for buffers
that did not change (see ``Store.put``'s ``reuse``): such a record is pinned like a streamed one
while the new PUT is written, and never taken from a segment that a running compaction will delete.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import struct
import threading
import time
import uuid
import weakref
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from collections.abc import Callable
from typing import Any

from ..errors import StorageFull

log = logging.getLogger("storage.store")

MAGIC = b"SAR1"
PUT, DEL, DATA = 1, 2, 3
HEADER = struct.Struct("<4sBBHQ16sIQQII")
HSIGNED = HEADER.size - 4
DESC = struct.Struct("<BxHIQQ")
INLINE, EXTERNAL = 0, 1

COMPACTION_WAIT = 10.0  # seconds a write waits for a compaction to finish moving the buffers it reuses
BIG_BUFFER = 1 << 20  # buffers this large go to DATA records (two-phase write)
PREALLOC = 64 << 20  # the largest preallocation step (the default of the log_prealloc_mb setting)
PREALLOC_MIN = 1 << 20
_FULL = (errno.ENOSPC, errno.EDQUOT)
ALIGN = 4096
_CHUNK = 4 << 20


@dataclass
class _Segment:
    seq: int
    path: Path
    fd: int
    size: int = 0  # end of valid data
    allocated: int = 0


@dataclass
class Location:
    seg: int
    offset: int
    total: int
    lsn: int
    meta: dict[str, Any]
    data: list[tuple[int, int, int]] = field(default_factory=list)  # (seg, offset, total) of DATA records

    @property
    def nbytes(self) -> int:
        return self.total + sum(t for _s, _o, t in self.data)


class CorruptRecord(Exception):
    pass


class Store:
    def __init__(self, directory: str | os.PathLike[str], *, fsync: bool = True,
                 segment_bytes: int = 256 << 20, compact_min: int = 64 << 20, prealloc: int = PREALLOC) -> None:
        self.dir = Path(directory) / "log"
        self.dir.mkdir(parents=True, exist_ok=True)
        self.fsync = fsync
        self.segment_bytes = segment_bytes
        self.prealloc = prealloc
        self.compact_min = compact_min
        self._append_lock = threading.Lock()
        self._sync_lock = threading.Lock()
        self._segments: dict[int, _Segment] = {}
        self._retired: list[_Segment] = []
        self._index: dict[bytes, Location] = {}
        self._lsn = 0
        self._synced = 0
        self._total = 0  # bytes of valid records in all segments
        self._live = 0  # bytes of the latest version of every live object
        self._next_seq = 1
        self._active: _Segment
        self._compacting = False
        self._compact_lock = threading.Lock()
        self._pins: dict[int, int] = {}  # segment -> DATA records in it not yet referenced by an indexed PUT
        self._condemned: set[int] = set()  # segments a running compaction will delete
        self._compactions = 0  # compactions that ended (a write waits for the one running, see _reusable)
        self._unpinned = threading.Condition(self._append_lock)
        self._closed = False
        self._no_room = False  # the last compaction found too little free space (logged once)
        self._recover()
        # Garbage left by writes and a compaction that a kill cut short is reclaimed now, not at
        # the next write (a restarted backend may get none for a long time).
        self._maybe_compact()

    # ------------------------------------------------------------- recovery
    def _recover(self) -> None:
        tombstones: dict[bytes, int] = {}
        for tmp in self.dir.glob("compact-*.tmp"):  # an interrupted compaction
            tmp.unlink()
        for path in sorted(self.dir.glob("seg-*.log")):
            seq = int(path.stem.split("-")[1])
            fd = os.open(path, os.O_RDWR)
            self._segments[seq] = _Segment(seq, path, fd, 0, os.fstat(fd).st_size)
        last = max(self._segments, default=0)
        for seg in self._segments.values():
            self._scan(seg, tombstones, is_last=seg.seq == last)
        for oid, lsn in tombstones.items():
            loc = self._index.get(oid)
            if loc is not None and loc.lsn < lsn:
                del self._index[oid]
        self._live = sum(loc.nbytes for loc in self._index.values())
        self._next_seq = last + 1
        self._active = self._segments[last] if last else self._new_segment()
        self._synced = self._lsn
        log.info("recovered %d objects (%d bytes of log) from %s", len(self._index), self._total, self.dir)

    def _scan(self, seg: _Segment, tombstones: dict[bytes, int], *, is_last: bool) -> None:
        pos = 0
        while pos + HEADER.size <= seg.allocated:
            raw = os.pread(seg.fd, HEADER.size, pos)
            try:
                kind, nbuf, lsn, oid, meta_len, body_len, total, crc = _parse_header(raw)
            except CorruptRecord:
                break
            if pos + total > seg.allocated:
                break
            if kind in (PUT, DEL):
                payload = os.pread(seg.fd, total - HEADER.size, pos + HEADER.size)
                if zlib.crc32(payload) != crc:
                    break
                self._lsn = max(self._lsn, lsn)
                if kind == PUT:
                    meta, data = _parse_put(payload, nbuf, meta_len)
                    current = self._index.get(oid)
                    if current is None or current.lsn <= lsn:  # equal: a compaction's later copy
                        self._index[oid] = Location(seg.seq, pos, total, lsn, meta, data)
                else:
                    tombstones[oid] = max(lsn, tombstones.get(oid, 0))
            else:
                self._lsn = max(self._lsn, lsn)
            pos += total
        if pos < seg.allocated and not is_last and os.pread(seg.fd, 4, pos) != bytes(4):
            log.warning("segment %s: invalid data after offset %d ignored", seg.path.name, pos)
        seg.size = pos
        self._total += pos

    # --------------------------------------------------------------- writing
    def _new_segment(self) -> _Segment:
        seq = self._next_seq
        self._next_seq += 1
        path = self.dir / f"seg-{seq:08d}.log"
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
        except OSError as exc:
            raise _storage_error(exc, self.dir) from exc
        seg = _Segment(seq, path, fd)
        self._segments[seq] = seg
        self._fsync_dir()
        return seg

    def _append(self, kind: int, oid: bytes, parts: list[Any], nbuf: int = 0, meta_len: int = 0,
                body_len: int = 0, index: Callable[[Location], None] | None = None) -> tuple[int, int, int, int]:
        """Append one record; return ``(lsn, segment, offset, total)``. Caller holds no lock.

        A DATA record pins its segment (see :meth:`_unpin`). ``index`` is called with the new
        record's location under the same lock hold, so no compaction sees the record unindexed.
        """
        size = sum(len(p) for p in parts)
        with self._append_lock:
            lsn, seg, offset, head = self._reserve(kind, oid, HEADER.size + size, nbuf, meta_len,
                                                   body_len if kind != DATA else size, parts)
            try:
                _pwritev_all(seg.fd, [head, *parts], offset)
            except OSError as exc:  # the record is the segment's tail: take it back
                seg.size = offset
                self._total -= HEADER.size + size
                raise _storage_error(exc, self.dir) from exc
            if kind == DATA:
                self._pins[seg.seq] = self._pins.get(seg.seq, 0) + 1
            if index is not None:
                index(Location(seg.seq, offset, HEADER.size + size, lsn, {}))
            return lsn, seg.seq, offset, HEADER.size + size

    def _unpin(self, seq: int) -> None:
        """A DATA record in segment ``seq`` is now referenced by an indexed PUT, or abandoned."""
        with self._append_lock:
            left = self._pins.get(seq, 0) - 1
            if left > 0:
                self._pins[seq] = left
            else:
                self._pins.pop(seq, None)
                self._unpinned.notify_all()

    def _reserve(self, kind: int, oid: bytes, total: int, nbuf: int, meta_len: int, body_len: int,
                 parts: list[Any]) -> tuple[int, _Segment, int, bytes]:
        """Claim space for a record (append lock held); return its LSN, place and header."""
        seg = self._active
        if seg.size and seg.size + total > self.segment_bytes:
            self._roll()
            seg = self._active
        offset = seg.size
        self._ensure_allocated(seg, offset + total)  # first: a full disk leaves no trace
        self._lsn += 1
        crc = 0
        if kind != DATA:
            for p in parts:
                crc = zlib.crc32(p, crc)
        head = HEADER.pack(MAGIC, kind, 0, nbuf, self._lsn, oid, meta_len, body_len, total, crc, 0)
        head = head[:HSIGNED] + struct.pack("<I", zlib.crc32(head[:HSIGNED]))
        seg.size = offset + total
        self._total += total
        return self._lsn, seg, offset, head

    def open_stream(self, length: int) -> DataStream | None:
        """Reserve a DATA record for a buffer that is about to be received (see :class:`DataStream`).

        None when the disk has no room for it: the buffer is then received into memory, and the
        request that carries it fails with :class:`StorageFull` when it tries to store it (failing
        here would cut the connection in the middle of a frame).
        """
        try:
            return self._open_stream(length)
        except StorageFull:
            return None

    def _open_stream(self, length: int) -> DataStream:
        key = bytes(16)  # the owner is not known yet; a DATA record's id is informational
        with self._append_lock:
            # the data must start on an ALIGN boundary of the file: pad after the header
            start = self._active.size
            if start and start + HEADER.size + ALIGN + length > self.segment_bytes:
                self._roll()
                start = 0
            pad = -(start + HEADER.size) % ALIGN
            total = HEADER.size + pad + length
            lsn, seg, offset, head = self._reserve(DATA, key, total, 0, pad, length, [])
            _pwritev_all(seg.fd, [head], offset)
            self._pins[seg.seq] = self._pins.get(seg.seq, 0) + 1
        return DataStream(self, seg, offset, lsn, HEADER.size + pad, length)

    def _ensure_allocated(self, seg: _Segment, end: int) -> None:
        if end <= seg.allocated:
            return
        step = min(self.prealloc, max(PREALLOC_MIN, seg.allocated), _free_bytes(self.dir) // 8)
        new = max(end, seg.allocated + step)
        try:
            try:
                os.posix_fallocate(seg.fd, seg.allocated, new - seg.allocated)
            except OSError as exc:
                if exc.errno not in _FULL or new == end:
                    raise
                new = end  # no room for the step: just what this record needs
                os.posix_fallocate(seg.fd, seg.allocated, new - seg.allocated)
        except OSError as exc:
            try:  # give back whatever the failed call allocated
                os.ftruncate(seg.fd, seg.allocated)
            except OSError:
                pass
            raise _storage_error(exc, self.dir) from exc
        seg.allocated = new
        if self.fsync:
            os.fsync(seg.fd)  # the new size is metadata: make it durable once, not per write

    def _roll(self) -> None:
        """Switch appends to a new segment (append lock held); the old one is synced first."""
        old = self._active
        os.ftruncate(old.fd, old.size)  # give back the preallocated tail
        old.allocated = old.size
        if self.fsync:
            os.fdatasync(old.fd)
            self._synced = self._lsn
        self._active = self._new_segment()

    def put(self, oid: str, meta: dict[str, Any], body: bytes, buffers: list[Any],
            streams: list[DataStream | None] | None = None, reuse: dict[int, int] | None = None,
            base: int = 0) -> int:
        """Write a new version of an object; return its LSN (durable after :meth:`sync`).

        ``streams[i]``, when given, is the :class:`DataStream` that already wrote ``buffers[i]``;
        the put takes them over (they are released when it returns, whatever happens).
        ``reuse`` says which buffers are byte for byte the same as external buffers of the version
        with LSN ``base``: ``{buffer index: its index among that version's DATA records}``. The new
        record points at those DATA records instead of writing them again, if ``base`` is still
        the latest version (else, or for a record a running compaction is about to delete, the
        buffer is written as usual).
        """
        key = uuid.UUID(oid).bytes
        views = [memoryview(b).cast("B") for b in buffers]
        descs: list[bytes] = []
        inline: list[memoryview] = []
        data: list[tuple[int, int, int]] = []
        pinned: list[int] = []  # segments of the DATA records written here
        inline_off = 0
        last_data_lsn = 0
        try:
            reused = self._reusable(key, base, reuse, views, pinned) if reuse else {}
            for i, v in enumerate(views):
                stream = streams[i] if streams else None
                if i in reused:
                    seg, off, total = reused[i]
                    descs.append(DESC.pack(EXTERNAL, total - len(v), seg, off, len(v)))
                    data.append(reused[i])
                elif stream is not None:
                    stream.wait()
                    last_data_lsn = max(last_data_lsn, stream.lsn)
                    descs.append(DESC.pack(EXTERNAL, stream.delta, stream.seg.seq, stream.offset, len(v)))
                    data.append((stream.seg.seq, stream.offset, stream.delta + len(v)))
                elif len(v) >= BIG_BUFFER:
                    lsn, seg, off, total = self._append(DATA, key, [v])
                    pinned.append(seg)
                    last_data_lsn = lsn
                    descs.append(DESC.pack(EXTERNAL, HEADER.size, seg, off, len(v)))
                    data.append((seg, off, total))
                else:
                    descs.append(DESC.pack(INLINE, 0, 0, inline_off, len(v)))
                    inline.append(v)
                    inline_off += len(v)
            if streams and any(streams) and self.fsync:
                # Streamed records were reserved before their data was written, so a group commit
                # since then may not cover them: sync their segments now.
                for fd in {st.seg.fd for st in streams if st is not None}:
                    os.fdatasync(fd)
            if last_data_lsn:
                self.sync(last_data_lsn)  # data first, then the record that makes it reachable
                if self.fsync:
                    self._drop_cached(data)
            meta_raw = json.dumps(meta, separators=(",", ":")).encode()
            parts = [*descs, meta_raw, body, *inline]

            def index(loc: Location) -> None:
                old = self._index.get(key)
                if old is None or old.lsn < loc.lsn:
                    new = Location(loc.seg, loc.offset, loc.total, loc.lsn, meta, data)
                    self._index[key] = new
                    self._live += new.nbytes - (old.nbytes if old else 0)

            lsn = self._append(PUT, key, parts, len(views), len(meta_raw), len(body), index)[0]
        finally:
            for seq in pinned:
                self._unpin(seq)
            for stream in streams or ():
                if stream is not None:
                    stream.release()
        self._maybe_compact()
        return lsn

    def _reusable(self, key: bytes, base: int, reuse: dict[int, int], views: list[memoryview],
                  pinned: list[int]) -> dict[int, tuple[int, int, int]]:
        """The DATA records of version ``base`` that ``reuse`` names, where they are now (a
        compaction may have copied them); each pins its segment until the new record is indexed."""
        found: dict[int, tuple[int, int, int]] = {}
        with self._append_lock:
            # A compaction moving them: wait for their copies rather than write them whole (which
            # would make the compaction's copies garbage at once, and start the next compaction).
            # Only for the compaction running now: the next one may find the copies to move again.
            deadline, running = time.monotonic() + COMPACTION_WAIT, self._compactions
            while self._condemned and self._compactions == running and time.monotonic() < deadline:
                loc = self._index.get(key)
                if loc is None or not any(loc.data[slot][0] in self._condemned
                                          for slot in reuse.values() if slot < len(loc.data)):
                    break
                self._unpinned.wait(deadline - time.monotonic())
            loc = self._index.get(key)
            if loc is None or loc.lsn != base:
                return found
            for i, slot in reuse.items():
                if slot >= len(loc.data):
                    continue
                seg, off, total = loc.data[slot]
                if seg in self._condemned or total - len(views[i]) < HEADER.size:
                    continue
                self._pins[seg] = self._pins.get(seg, 0) + 1
                pinned.append(seg)
                found[i] = (seg, off, total)
        return found

    def _drop_cached(self, regions: list[tuple[int, int, int]]) -> None:
        """Evict synced DATA records from the page cache.

        The backend holds its objects in memory; caching their log copy as well would only double
        the memory a large object costs (and, on VMs whose memory is backed lazily, make every new
        page of cache a slow first touch). Recovery and lazy loads read them back from disk.
        """
        with self._append_lock:
            fds = [(self._segments[s].fd, o, t) for s, o, t in regions if s in self._segments]
        for fd, off, total in fds:
            os.posix_fadvise(fd, off, total, os.POSIX_FADV_DONTNEED)

    def delete(self, oid: str) -> int:
        key = uuid.UUID(oid).bytes

        def index(loc: Location) -> None:
            old = self._index.get(key)
            if old is not None and old.lsn < loc.lsn:
                del self._index[key]
                self._live -= old.nbytes

        lsn = self._append(DEL, key, [], index=index)[0]
        self._maybe_compact()
        return lsn

    def is_synced(self, lsn: int) -> bool:
        return not self.fsync or self._synced >= lsn

    def sync(self, lsn: int) -> None:
        """Return once every record up to ``lsn`` is on disk (one fdatasync for many writers)."""
        if not self.fsync or self._synced >= lsn:
            return
        with self._sync_lock:
            if self._synced >= lsn:
                return
            with self._append_lock:
                target, fd = self._lsn, self._active.fd
            os.fdatasync(fd)
            if target > self._synced:
                self._synced = target

    # --------------------------------------------------------------- reading
    def __contains__(self, oid: str) -> bool:
        return uuid.UUID(oid).bytes in self._index

    def objects(self) -> dict[str, dict[str, Any]]:
        """Every live object: id -> the metadata stored with its latest version."""
        with self._append_lock:
            return {str(uuid.UUID(bytes=k)): loc.meta for k, loc in self._index.items()}

    def load(self, oid: str) -> tuple[dict[str, Any], bytes, list[bytearray]]:
        """Read the latest version: ``(meta, body, buffers)``."""
        key = uuid.UUID(oid).bytes
        with self._append_lock:
            loc = self._index.get(key)
            if loc is None:
                raise KeyError(oid)
            seg = self._segments[loc.seg]
            fds = {s: self._segments[s].fd for s, _o, _t in loc.data}
        raw = os.pread(seg.fd, loc.total, loc.offset)
        kind, nbuf, _lsn, _oid, meta_len, body_len, _total, crc = _parse_header(raw[: HEADER.size])
        payload = memoryview(raw)[HEADER.size :]
        if zlib.crc32(payload) != crc:
            raise CorruptRecord(f"object {oid}: checksum mismatch")
        descs = [DESC.unpack_from(payload, i * DESC.size) for i in range(nbuf)]
        at = nbuf * DESC.size + meta_len
        body = bytes(payload[at : at + body_len])
        inline_base = at + body_len
        buffers: list[bytearray] = []
        for where, delta, sseq, off, length in descs:
            buf = bytearray(length)
            if where == INLINE:
                buf[:] = payload[inline_base + off : inline_base + off + length]
            else:
                _preadv_all(fds[sseq], memoryview(buf), off + delta)
            buffers.append(buf)
        return loc.meta, body, buffers

    def stats(self) -> dict[str, int]:
        with self._append_lock:
            return {"objects": len(self._index), "live_bytes": self._live, "log_bytes": self._total,
                    "segments": len(self._segments)}

    # ------------------------------------------------------------ compaction
    def _maybe_compact(self) -> None:
        if self._compacting or self._compact_lock.locked():
            return
        if self._total - self._live > max(self.compact_min, self._live):
            self._compacting = True
            threading.Thread(target=self.compact, name="storage-api-compact", daemon=True).start()

    def compact(self) -> None:
        """Rewrite live records of the non-active segments into a new segment; drop the old ones."""
        with self._compact_lock:
            self._compacting = True
            try:
                self._compact()
            finally:
                self._compacting = False

    def _compact(self) -> None:
        with self._append_lock:
            if self._closed:
                return
            if self._active.size:
                self._roll()
            old = {s: seg for s, seg in self._segments.items() if seg is not self._active}
            if not old:
                return
            # Writes that put DATA in these segments before the roll are not reachable yet: wait
            # until their PUTs are indexed (new writes go to the new active segment meanwhile).
            while not self._closed and any(s in self._pins for s in old):
                self._unpinned.wait()
            if self._closed:
                return
            # From here on no new record may point into these segments (see :meth:`_reusable`).
            self._condemned = set(old)
        try:
            self._compact_segments(old)
        finally:
            with self._append_lock:
                self._condemned = set()
                self._compactions += 1
                self._unpinned.notify_all()  # writes waiting to reuse what it moved (see _reusable)

    def _compact_segments(self, old: dict[int, _Segment]) -> None:
        with self._append_lock:
            moving = [(k, loc) for k, loc in self._index.items()
                      if loc.seg in old or any(s in old for s, _o, _t in loc.data)]
            need = sum(loc.nbytes for _k, loc in moving)
            if need > _free_bytes(self.dir):  # it would fill the disk and fail: wait for room
                if not self._no_room:
                    log.warning("no room to compact the log (%d bytes to copy): will retry", need)
                self._no_room = True
                return
            self._no_room = False
            seq = self._next_seq
            self._next_seq += 1
        tmp = self.dir / f"compact-{seq:08d}.tmp"
        out = _Segment(seq, tmp, os.open(tmp, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600))
        try:
            # Copy outside the lock; readers keep using the old segments meanwhile.
            copies = [(key, loc, self._copy_record(loc, out)) for key, loc in moving]
            os.fsync(out.fd)
        except BaseException:
            os.close(out.fd)
            tmp.unlink()
            raise
        final = self.dir / f"seg-{seq:08d}.log"
        os.rename(tmp, final)
        out.path, out.allocated = final, out.size
        self._fsync_dir()
        with self._append_lock:
            for key, before, after in copies:
                if self._index.get(key) is before:
                    self._index[key] = after
            self._segments[seq] = out
            self._total += out.size
            for s, seg in old.items():
                del self._segments[s]
                self._total -= seg.size
                os.unlink(seg.path)
            # Close what the previous compaction retired (nobody can still be reading it).
            for seg in self._retired:
                os.close(seg.fd)
            self._retired = list(old.values())
        self._fsync_dir()
        log.info("compacted %d segments into %s: %d live records", len(old), final.name, len(copies))

    def _fsync_dir(self) -> None:
        if not self.fsync:
            return
        dfd = os.open(self.dir, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)

    def _copy_record(self, loc: Location, out: _Segment) -> Location:
        src = self._segments[loc.seg]
        data_locs: list[tuple[int, int, int]] = []
        remap: dict[tuple[int, int], int] = {}
        for sseq, off, total in loc.data:
            if (sseq, off) in remap:  # one DATA record named twice in the record
                data_locs.append((out.seq, remap[(sseq, off)], total))
                continue
            new_off = out.size
            _copy_range(self._segments[sseq].fd, off, total, out.fd, new_off)
            out.size += total
            remap[(sseq, off)] = new_off
            data_locs.append((out.seq, new_off, total))
        raw = bytearray(os.pread(src.fd, loc.total, loc.offset))
        if remap:  # point descriptors at the copies, then re-checksum
            _k, nbuf, *_ = _parse_header(bytes(raw[: HEADER.size]))
            for i in range(nbuf):
                at = HEADER.size + i * DESC.size
                where, delta, sseq, off, length = DESC.unpack_from(raw, at)
                if where == EXTERNAL:
                    DESC.pack_into(raw, at, EXTERNAL, delta, out.seq, remap[(sseq, off)], length)
            crc = zlib.crc32(memoryview(raw)[HEADER.size :])
            struct.pack_into("<I", raw, HSIGNED - 4, crc)
            struct.pack_into("<I", raw, HSIGNED, zlib.crc32(memoryview(raw)[:HSIGNED]))
        new_off = out.size
        _pwritev_all(out.fd, [raw], new_off)
        out.size += loc.total
        return Location(out.seq, new_off, loc.total, loc.lsn, loc.meta, data_locs)

    def close(self) -> None:
        with self._append_lock:
            self._closed = True
            self._unpinned.notify_all()  # a compaction waiting for writes in flight gives up
        with self._compact_lock:  # one still copying finishes first
            pass
        with self._append_lock:
            for seg in list(self._segments.values()) + self._retired:
                try:
                    if self.fsync:
                        os.fdatasync(seg.fd)
                    os.close(seg.fd)
                except OSError:
                    pass
            self._segments.clear()
            self._retired.clear()


def _free_bytes(path: Path) -> int:
    st = os.statvfs(path)
    return st.f_bavail * st.f_frsize


def _storage_error(exc: OSError, where: Path) -> OSError:
    """A full disk or quota as :class:`StorageFull`; other errors unchanged."""
    if exc.errno in _FULL:
        return StorageFull(f"no space left for the log in {where}: {exc.strerror}")
    return exc


def _parse_header(raw: bytes) -> tuple[int, int, int, bytes, int, int, int, int]:
    if len(raw) < HEADER.size:
        raise CorruptRecord("short header")
    magic, kind, _flags, nbuf, lsn, oid, meta_len, body_len, total, crc, hcrc = HEADER.unpack(raw)
    if magic != MAGIC or zlib.crc32(raw[:HSIGNED]) != hcrc or kind not in (PUT, DEL, DATA):
        raise CorruptRecord("bad header")
    if total < HEADER.size:
        raise CorruptRecord("bad length")
    return kind, nbuf, lsn, oid, meta_len, body_len, total, crc


def _parse_put(payload: bytes, nbuf: int, meta_len: int) -> tuple[dict[str, Any], list[tuple[int, int, int]]]:
    data = []
    for i in range(nbuf):
        where, delta, sseq, off, length = DESC.unpack_from(payload, i * DESC.size)
        if where == EXTERNAL:
            data.append((sseq, off, delta + length))
    at = nbuf * DESC.size
    meta = json.loads(payload[at : at + meta_len])
    return meta, data


def _pwritev_all(fd: int, parts: list[Any], offset: int) -> None:
    views = [memoryview(p).cast("B") for p in parts if len(p)]
    while views:
        n = os.pwritev(fd, views[:512], offset)
        offset += n
        while n:
            if n >= len(views[0]):
                n -= len(views.pop(0))
            else:
                views[0] = views[0][n:]
                n = 0


def _preadv_all(fd: int, dest: memoryview, offset: int) -> None:
    got = 0
    while got < len(dest):
        n = os.preadv(fd, [dest[got:]], offset + got)
        if n == 0:
            raise CorruptRecord("log truncated")
        got += n


def _copy_range(src: int, offset: int, length: int, dst: int, dst_offset: int) -> None:
    done = 0
    while done < length:
        n = os.copy_file_range(src, dst, length - done, offset + done, dst_offset + done)
        if n == 0:
            raise CorruptRecord("log truncated during compaction")
        done += n


class DataStream:
    """Writes one incoming buffer into its reserved DATA record while the buffer is received.

    The receiver calls :meth:`advance` as bytes land in ``buffer`` (page-aligned memory) and
    :meth:`done` at the end; a writer thread writes every complete 4 KiB-aligned chunk with
    ``O_DIRECT`` (falling back to ordinary writes where the file system refuses it).
    :meth:`wait` returns when everything is written (not yet synced: ``Store.put`` syncs).

    The record pins its segment against compaction until :meth:`release` (``Store.put`` releases
    the streams it was given); a stream nobody releases (its request failed before the put, or
    never arrived whole) releases itself when it is garbage.
    """

    def __init__(self, store: Store, seg: _Segment, offset: int, lsn: int, delta: int, length: int) -> None:
        self.store = store
        self.release = weakref.finalize(self, store._unpin, seg.seq)  # callable once
        self.seg = seg
        self.offset = offset
        self.lsn = lsn
        self.delta = delta
        self.length = length
        self.buffer: Any = None
        self._avail = 0
        self._notified = 0
        self._finished = False
        self._failed: BaseException | None = None
        self._cond = threading.Condition()
        self._thread: threading.Thread | None = None

    def start(self, buffer: Any) -> None:
        self.buffer = memoryview(buffer).cast("B")
        self._thread = threading.Thread(target=self._write, name="storage-api-stream", daemon=True)
        self._thread.start()

    def advance(self, received: int) -> None:
        self._avail = received
        if received - self._notified >= _CHUNK:  # wake the writer once per chunk, not per recv
            self._notified = received
            with self._cond:
                self._cond.notify()

    def done(self, ok: bool = True) -> None:
        with self._cond:
            self._finished = True
            if not ok:
                self._failed = self._failed or RuntimeError("transfer aborted")
            self._cond.notify()

    def wait(self) -> None:
        if self._thread is not None:
            self._thread.join()
        if isinstance(self._failed, OSError):
            raise _storage_error(self._failed, self.store.dir)
        if self._failed is not None:
            raise OSError(f"streaming a buffer to the log failed: {self._failed}")

    def _write(self) -> None:
        base = self.offset + self.delta
        try:
            fd = os.open(self.seg.path, os.O_WRONLY | getattr(os, "O_DIRECT", 0))
        except OSError:
            fd = os.open(self.seg.path, os.O_WRONLY)
        try:
            written = 0
            while written < self.length:
                with self._cond:
                    while not self._finished and self._avail - written < _CHUNK:
                        self._cond.wait()
                    if self._failed is not None:
                        return
                    avail, finished = self._avail, self._finished
                upto = avail if finished else avail - avail % ALIGN
                if finished and avail < self.length:
                    return  # aborted: the record stays unreferenced garbage
                aligned = upto - upto % ALIGN
                if aligned > written:
                    self._pwrite(fd, written, aligned, base)
                    written = aligned
                if finished and written < upto:  # the unaligned tail, through the page cache
                    _pwritev_all(self.seg.fd, [self.buffer[written:upto]], base + written)
                    written = upto
        except BaseException as exc:
            self._failed = exc
        finally:
            os.close(fd)

    def _pwrite(self, fd: int, start: int, end: int, base: int) -> None:
        try:
            _pwritev_all(fd, [self.buffer[start:end]], base + start)
        except OSError:  # O_DIRECT refused this buffer: write through the page cache instead
            _pwritev_all(self.seg.fd, [self.buffer[start:end]], base + start)
