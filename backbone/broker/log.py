"""A partition's log: record batches kept opaque in append-only segment files, one directory per
partition (`<topic>-<n>/<base offset>.log`). Appending rewrites the batch's base offset (bytes 0-8,
outside its CRC) and writes it at the end of the active segment; reading returns whole batches from
the one holding the asked offset. In memory only the segments' starts and a sparse index (one entry
per `INDEX_EVERY` bytes) of each; the bytes stay on disk (the page cache holds what is hot).

Retention deletes whole segments that are not the active one: by time as Kafka counts it (the
segment's largest record timestamp older than `retention.ms`; the backbone's shared topics rely on
it: their records carry the released `occurred_at`) and by bytes (the oldest while the partition
holds more than `retention.bytes`); `delete_before` (DeleteRecords) moves the log
start offset and deletes the segments wholly below it. A torn batch at the end of the last segment
(a crash mid-write) is cut off when the partition is opened.
"""

from __future__ import annotations

import bisect
import os
import struct
import time
from array import array
from dataclasses import dataclass, field
from pathlib import Path

HEADER = struct.Struct(">qi")  # base offset, batch length (bytes after these 12)
LOG_OVERHEAD = 12
LAST_OFFSET_DELTA = 23  # position of lastOffsetDelta (int32) in a v2 batch
MAX_TIMESTAMP = 35
PRODUCER = struct.Struct(">qhi")  # producer id, epoch, base sequence at byte 43
PRODUCER_AT = 43
MIN_BATCH = 61  # a v2 batch header
INDEX_EVERY = 64 * 1024
SCAN_CHUNK = 1024 * 1024


class CorruptBatch(ValueError):
    """Bytes that are not a record batch of magic 2."""


def batch_info(batch: bytes | memoryview) -> tuple[int, int]:
    """(records in it, its max timestamp) of a v2 record batch; CorruptBatch otherwise."""
    if len(batch) < MIN_BATCH or batch[16] != 2:
        raise CorruptBatch("not a v2 record batch")
    (length,) = struct.unpack_from(">i", batch, 8)
    if length + LOG_OVERHEAD != len(batch):
        raise CorruptBatch("batch length does not match")
    (delta,) = struct.unpack_from(">i", batch, LAST_OFFSET_DELTA)
    (max_ts,) = struct.unpack_from(">q", batch, MAX_TIMESTAMP)
    return delta + 1, max_ts


def split_batches(records: bytes) -> list[memoryview]:
    """The record batches one after another in a produce request's `records`."""
    view, batches, position = memoryview(records), [], 0
    while position + LOG_OVERHEAD <= len(view):
        _, length = HEADER.unpack_from(view, position)
        end = position + LOG_OVERHEAD + length
        if length <= 0 or end > len(view):
            raise CorruptBatch("a batch runs past the end of the records")
        batches.append(view[position:end])
        position = end
    return batches


@dataclass
class Segment:
    base: int
    path: Path
    size: int = 0
    next_offset: int = 0
    last_append: float = 0.0
    max_timestamp: int = -1  # ms, the largest record timestamp of its batches
    created: float = field(default_factory=time.time)  # rolled after segment.ms from here (or from the broker's start)
    index_offsets: array = field(default_factory=lambda: array("q"))  # sparse: offset of the batch at...
    index_positions: array = field(default_factory=lambda: array("q"))  # ...this file position (16 bytes an entry)
    indexed_to: int = -INDEX_EVERY

    def note(self, offset: int, position: int) -> None:
        if position - self.indexed_to >= INDEX_EVERY:
            self.index_offsets.append(offset)
            self.index_positions.append(position)
            self.indexed_to = position


class PartitionLog:
    """One partition on disk. Not thread-safe: the broker's event loop is its only user."""

    def __init__(self, directory: Path, segment_bytes: int = 64 * 1024 * 1024, segment_ms: int = 3_600_000) -> None:
        self.directory = directory
        self.segment_bytes = segment_bytes
        self.segment_ms = segment_ms
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        self.segments: list[Segment] = []
        self._fd: int | None = None  # the active segment's, for appends and its reads
        self.compacted_active, self.compacted_time = -1, 0.0  # the active segment and time of the last compaction
        self._cursor = (-1, -1, 0)  # (next offset, segment base, file position) after the last read: a consumer's next fetch
        self._start_file = directory / "log-start"
        self.log_start = int(self._start_file.read_text()) if self._start_file.exists() else 0
        for path in sorted(directory.glob("*.log")):
            self.segments.append(self.recover_segment(Segment(int(path.stem), path)))
        if not self.segments:
            self._roll(self.log_start)
        else:
            self._fd = os.open(self.segments[-1].path, os.O_RDWR | os.O_APPEND)
        self.log_start = max(self.log_start, self.segments[0].base)

    @property
    def end(self) -> int:
        return self.segments[-1].next_offset

    @property
    def size(self) -> int:
        return sum(s.size for s in self.segments)

    @staticmethod
    def recover_segment(segment: Segment) -> Segment:
        """Rebuild the segment's sparse index and end by reading its batch headers; cut a torn tail."""
        segment.next_offset = segment.base
        total = segment.path.stat().st_size
        segment.last_append = segment.path.stat().st_mtime
        with open(segment.path, "rb") as file:
            position = 0
            while position + LOG_OVERHEAD <= total:
                file.seek(position)
                base, length = HEADER.unpack(file.read(LOG_OVERHEAD))
                if length < MIN_BATCH - LOG_OVERHEAD or position + LOG_OVERHEAD + length > total:
                    break
                file.seek(position + LAST_OFFSET_DELTA)
                delta, _, max_ts = struct.unpack(">iqq", file.read(20))
                segment.max_timestamp = max(segment.max_timestamp, max_ts)
                segment.note(base, position)
                segment.next_offset = base + delta + 1
                position += LOG_OVERHEAD + length
        if position != total:
            os.truncate(segment.path, position)
        segment.size = position
        return segment

    def _roll(self, base: int) -> None:
        if self._fd is not None:
            os.close(self._fd)
        path = self.directory / f"{base:020d}.log"
        self._fd = os.open(path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o600)
        self.segments.append(Segment(base, path, next_offset=base, last_append=time.time()))

    def append(self, batch: memoryview | bytes) -> tuple[int, int]:
        """Write one v2 batch at the end; (its base offset, its record count)."""
        count, max_ts = batch_info(batch)
        active = self.segments[-1]
        now = time.time()
        if active.size and (active.size + len(batch) > self.segment_bytes or now - active.created > self.segment_ms / 1000):
            self._roll(active.next_offset)
            active = self.segments[-1]
        base = active.next_offset
        data = bytearray(batch)
        struct.pack_into(">q", data, 0, base)
        assert self._fd is not None
        os.write(self._fd, data)
        active.note(base, active.size)
        active.size += len(data)
        active.next_offset = base + count
        active.last_append = now
        active.max_timestamp = max(active.max_timestamp, max_ts)
        return base, count

    def read(self, offset: int, max_bytes: int) -> bytes:
        """Whole batches from the one holding `offset`, up to `max_bytes` (at least one batch)."""
        if offset >= self.end or offset < self.log_start:
            return b""
        at = bisect.bisect_right([s.base for s in self.segments], offset) - 1
        parts: list[bytes] = []
        budget = max_bytes
        for segment in self.segments[max(at, 0):]:
            if segment.next_offset <= offset or segment.size == 0:
                continue
            part = self._read_segment(segment, offset, budget, first=not parts)
            if part:
                parts.append(part)
                budget -= len(part)
            if budget <= 0:
                break
            offset = segment.next_offset
        return parts[0] if len(parts) == 1 else b"".join(parts)

    def _read_segment(self, segment: Segment, offset: int, budget: int, first: bool) -> bytes:
        if self._cursor[:2] == (offset, segment.base):
            position = self._cursor[2]  # where the last read ended: no headers to walk
        else:
            i = bisect.bisect_right(segment.index_offsets, offset) - 1
            position = segment.index_positions[i] if i >= 0 else 0
        active = segment is self.segments[-1]
        fd = self._fd if active else os.open(segment.path, os.O_RDONLY)
        assert fd is not None
        try:
            # find the batch holding offset: read headers from the index entry on
            while position < segment.size:
                head = os.pread(fd, LAST_OFFSET_DELTA + 4, position)
                base, length = HEADER.unpack_from(head, 0)
                (delta,) = struct.unpack_from(">i", head, LAST_OFFSET_DELTA)
                if base + delta >= offset:
                    break
                position += LOG_OVERHEAD + length
            if position >= segment.size:
                return b""
            want = min(segment.size - position, max(budget, 0))
            chunk = os.pread(fd, want, position) if want > 0 else b""
            # cut to whole batches, keeping at least the first when this is the first read
            cut, after = 0, offset
            while cut + LOG_OVERHEAD <= len(chunk):
                base, length = HEADER.unpack_from(chunk, cut)
                if cut + LOG_OVERHEAD + length > len(chunk):
                    break
                (delta,) = struct.unpack_from(">i", chunk, cut + LAST_OFFSET_DELTA)
                cut, after = cut + LOG_OVERHEAD + length, base + delta + 1
            if cut == 0 and first:
                head = os.pread(fd, LAST_OFFSET_DELTA + 4, position)
                base, length = HEADER.unpack_from(head, 0)
                (delta,) = struct.unpack_from(">i", head, LAST_OFFSET_DELTA)
                chunk = os.pread(fd, LOG_OVERHEAD + length, position)
                cut, after = len(chunk), base + delta + 1
            if cut:
                self._cursor = (after, segment.base, position + cut)
            return chunk if cut == len(chunk) else chunk[:cut]
        finally:
            if not active:
                os.close(fd)

    def forget_cursor(self) -> None:
        self._cursor = (-1, -1, 0)

    def offset_for_time(self, timestamp_ms: int) -> int:
        """The first offset of the first batch whose max timestamp is >= `timestamp_ms` (ListOffsets by time)."""
        for segment in self.segments:
            fd = os.open(segment.path, os.O_RDONLY)
            try:
                position = 0
                while position < segment.size:
                    head = os.pread(fd, MAX_TIMESTAMP + 8, position)
                    base, length = HEADER.unpack_from(head, 0)
                    (max_ts,) = struct.unpack_from(">q", head, MAX_TIMESTAMP)
                    if max_ts >= timestamp_ms and base >= self.log_start:
                        return base
                    position += LOG_OVERHEAD + length
            finally:
                os.close(fd)
        return -1

    def enforce_retention(self, retention_ms: int, retention_bytes: int, now: float | None = None) -> int:
        """Delete whole old segments past `retention_ms` (-1: none) or beyond `retention_bytes` (-1: none);
        how many were deleted. The active segment is never deleted."""
        now = time.time() if now is None else now
        deleted = 0
        while len(self.segments) > 1:
            oldest = self.segments[0]
            newest_ms = oldest.max_timestamp if oldest.max_timestamp >= 0 else oldest.last_append * 1000
            too_old = retention_ms >= 0 and now * 1000 - newest_ms > retention_ms
            too_big = retention_bytes >= 0 and self.size - oldest.size >= retention_bytes
            below = oldest.next_offset <= self.log_start
            if not (too_old or too_big or below):
                break
            self._drop_oldest()
            deleted += 1
        return deleted

    def _drop_oldest(self) -> None:
        oldest = self.segments.pop(0)
        oldest.path.unlink(missing_ok=True)
        if self.segments[0].base > self.log_start:
            self._set_start(self.segments[0].base)

    def _set_start(self, offset: int) -> None:
        self.log_start = offset
        tmp = self._start_file.with_suffix(".tmp")
        tmp.write_text(str(offset))
        tmp.replace(self._start_file)

    def delete_before(self, offset: int) -> int:
        """DeleteRecords: records below `offset` (-1: the end) are gone; the new log start offset."""
        offset = self.end if offset < 0 else min(offset, self.end)
        if offset > self.log_start:
            self._set_start(offset)
            while len(self.segments) > 1 and self.segments[0].next_offset <= offset:
                self._drop_oldest()
        return self.log_start

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def remove(self) -> None:
        """Delete the partition's files (its topic was deleted)."""
        self.close()
        for path in self.directory.iterdir():
            path.unlink(missing_ok=True)
        self.directory.rmdir()


def uvarint(data: bytes | memoryview, position: int) -> tuple[int, int]:
    """An unsigned varint at `position` (the wire's compact lengths; a record's fields zigzag it):
    (value, next position)."""
    value = shift = 0
    while True:
        byte = data[position]
        position += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, position
        shift += 7
