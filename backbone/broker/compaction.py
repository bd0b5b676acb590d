"""Compaction of a compacted topic's partition (cleanup.policy=compact), as Kafka's cleaner does it:
in every segment but the active one, a record whose key has a later record in the partition goes,
and a tombstone (a null value) goes once its batch is older than `delete.retention.ms` (time for
readers to see it). What is kept keeps its offset: each batch is rewritten with its kept records,
its base offset, last offset delta, producer fields and timestamps unchanged, uncompressed, its CRC
recomputed; a batch left empty goes. Erasure relies on it: `consent.changes` and `alerts.fraud` are
tombstoned by `backbone erase`, and the raw ids in them must leave.

Batches compressed with a codec the broker cannot read (snappy, zstd) and control batches are kept
as they are (their records are then counted as latest too: nothing later is dropped by mistake).
"""

from __future__ import annotations

import gzip
import os
import struct
import time
from collections.abc import Iterator
from pathlib import Path

import crc32c
import lz4.frame

from backbone.broker.log import HEADER, LOG_OVERHEAD, MIN_BATCH, PartitionLog, Segment, uvarint

ATTRIBUTES_AT = 21
CRC_AT = 17
COUNT_AT = 57
NONE, GZIP, LZ4 = 0, 1, 3
CONTROL = 0x20


def _varint(data: bytes | memoryview, position: int) -> tuple[int, int]:
    """A zigzag varint (signed) at `position`: (value, next position)."""
    value, position = uvarint(data, position)
    return (value >> 1) ^ -(value & 1), position


def records_of(batch: bytes) -> list[tuple[int, bytes | None, bool, bytes]] | None:
    """(offset, key, is tombstone, raw record bytes) of each record of a v2 batch; None when the broker
    cannot read them (another codec, a control batch)."""
    (attributes,) = struct.unpack_from(">h", batch, ATTRIBUTES_AT)
    codec = attributes & 0x07
    if attributes & CONTROL or codec not in {NONE, GZIP, LZ4}:
        return None
    try:
        return _records(batch, codec)
    except (IndexError, ValueError, EOFError, OSError, RuntimeError):  # not records as v2 writes them: kept as they are
        return None


def _records(batch: bytes, codec: int) -> list[tuple[int, bytes | None, bool, bytes]]:
    base = struct.unpack_from(">q", batch, 0)[0]
    body = batch[MIN_BATCH:]
    if codec == GZIP:
        body = gzip.decompress(body)
    elif codec == LZ4:
        body = lz4.frame.decompress(body)
    out, position = [], 0
    while position < len(body):
        record_start = position
        length, start = _varint(body, position)
        end = start + length
        position = start + 1  # attributes
        _, position = _varint(body, position)  # timestamp delta
        offset_delta, position = _varint(body, position)
        key_length, position = _varint(body, position)
        key = bytes(body[position:position + key_length]) if key_length >= 0 else None
        position += max(key_length, 0)
        value_length, position = _varint(body, position)
        out.append((base + offset_delta, key, value_length < 0, bytes(body[record_start:end])))
        position = end
    if len(out) != struct.unpack_from(">i", batch, COUNT_AT)[0]:
        raise ValueError("record count does not match")
    return out


def rebuild(batch: bytes, kept: list[bytes]) -> bytes:
    """`batch` with only the `kept` raw records, uncompressed, its CRC recomputed."""
    header = bytearray(batch[:MIN_BATCH])
    (attributes,) = struct.unpack_from(">h", header, ATTRIBUTES_AT)
    struct.pack_into(">h", header, ATTRIBUTES_AT, attributes & ~0x07)
    struct.pack_into(">i", header, COUNT_AT, len(kept))
    out = header + b"".join(kept)
    struct.pack_into(">i", out, 8, len(out) - LOG_OVERHEAD)
    struct.pack_into(">I", out, CRC_AT, crc32c.crc32c(bytes(out[ATTRIBUTES_AT:])))
    return bytes(out)


def batches_of(path: Path, size: int) -> Iterator[bytes]:
    data = path.read_bytes()[:size]
    position = 0
    while position + LOG_OVERHEAD <= len(data):
        _, length = HEADER.unpack_from(data, position)
        yield data[position:position + LOG_OVERHEAD + length]
        position += LOG_OVERHEAD + length


def compact(log: PartitionLog, delete_retention_ms: int, now: float | None = None) -> int:
    """Compact every segment of `log` but the active one; how many records were removed."""
    if len(log.segments) < 2:
        return 0
    now_ms = (time.time() if now is None else now) * 1000
    latest: dict[bytes | None, int] = {}
    unreadable: set[int] = set()
    for segment in log.segments:
        for batch in batches_of(segment.path, segment.size):
            records = records_of(batch)
            if records is None:
                unreadable.add(struct.unpack_from(">q", batch, 0)[0])
                continue
            for offset, key, _, _ in records:
                if key is not None:
                    latest[key] = offset
    removed = 0
    for index, segment in enumerate(log.segments[:-1]):
        out, changed = bytearray(), False
        for batch in batches_of(segment.path, segment.size):
            base = struct.unpack_from(">q", batch, 0)[0]
            records = None if base in unreadable else records_of(batch)
            if records is None:
                out += batch
                continue
            (max_ts,) = struct.unpack_from(">q", batch, 35)
            expired = now_ms - max_ts > delete_retention_ms
            kept = [raw for offset, key, tombstone, raw in records
                    if (key is None or latest.get(key) == offset) and not (tombstone and expired)]
            removed += len(records) - len(kept)
            if len(kept) == len(records):
                out += batch
            elif kept:
                out += rebuild(batch, kept)
                changed = True
            else:
                changed = True
        if changed:
            log.segments[index] = _replace(segment, bytes(out))
            log.forget_cursor()  # positions in the rewritten segment moved
    return removed


def _replace(segment: Segment, data: bytes) -> Segment:
    """Write the compacted segment beside the old one and rename it over it; the new one's index."""
    tmp = segment.path.with_suffix(".cleaned")
    with open(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "wb") as file:
        file.write(data)
    tmp.replace(segment.path)
    fresh = Segment(segment.base, segment.path)
    PartitionLog.recover_segment(fresh)
    fresh.last_append = segment.last_append
    return fresh
