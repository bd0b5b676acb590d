"""Many audit records in one Kafka record: what makes the trail cost bytes, not a record per event.

A batch's value is its audit records' Confluent wire-format bytes (magic byte, schema id, Avro body)
one after the other, each exactly the bytes a record had alone. So:
- a record written before batching (one per Kafka record) is a batch of one and reads the same;
- the audit sink lands a batch as it always landed records: ClickHouse's `AvroConfluent` format reads
  a stream of wire-format messages, so one batch gives the same rows, one per audit record, as its
  records sent one by one would;
- every record keeps its own leaf (SHA-256 of its body before the position fields), its position
  (writer, checkpoint, leaf) and its receipt: batching changes how records travel, not what is sealed.

Pure code: splitting needs only each record's writer schema (`schema_of(id)`), no Kafka.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from io import BytesIO
from typing import Any

from fastavro import parse_schema, schemaless_reader

from backbone.audit.log import AuditLogError
from backbone.events.serde import HEADER_SIZE, MAGIC

# Audit records per Kafka record at most. 64 makes the per-event produce cost 1/64 of a call, and
# keeps what a sink holds bounded: a sink batch of `sink_batch_rows` Kafka records is at most 64x
# that many audit rows (a record is ~250-400 bytes on the demo mix, so a batch ~16-26 KiB).
RECORDS_PER_MESSAGE = 64
# and bytes per Kafka record at most, far below librdkafka's and brokers' 1 MB default message size
MAX_MESSAGE_BYTES = 256 * 1024


def pack(records: Sequence[bytes], per_message: int = RECORDS_PER_MESSAGE, max_bytes: int = MAX_MESSAGE_BYTES) -> Iterator[bytes]:
    """The Kafka values that carry `records` (wire-format audit records) in order: each at most
    `per_message` records and `max_bytes` bytes (a single larger record travels alone)."""
    chunk: list[bytes] = []
    size = 0
    for record in records:
        if chunk and (len(chunk) >= per_message or size + len(record) > max_bytes):
            yield b"".join(chunk)
            chunk, size = [], 0
        chunk.append(record)
        size += len(record)
    if chunk:
        yield b"".join(chunk)


class Unpacker:
    """Splits a Kafka value of `audit.decisions` into its records: [(wire-format bytes, record)].
    `schema_of(schema_id)` gives a writer schema (the registry's); each is parsed once."""

    def __init__(self, schema_of: Callable[[int], dict[str, Any]]) -> None:
        self._schema_of = schema_of
        self._parsed: dict[int, Any] = {}

    def __call__(self, value: bytes) -> list[tuple[bytes, dict[str, Any]]]:
        if not value:
            raise AuditLogError("an empty audit message")
        found = []
        buffer = BytesIO(value)
        position = 0
        while position < len(value):
            if len(value) - position < HEADER_SIZE or value[position] != MAGIC:
                raise AuditLogError(f"audit message: no wire-format record at byte {position} of {len(value)}")
            schema_id = int.from_bytes(value[position + 1:position + HEADER_SIZE], "big")
            parsed = self._parsed.get(schema_id)
            if parsed is None:
                parsed = self._parsed[schema_id] = parse_schema(self._schema_of(schema_id))
            buffer.seek(position + HEADER_SIZE)
            try:
                record = schemaless_reader(buffer, parsed, None)
            except Exception as exc:  # noqa: BLE001 - fastavro raises many types; the bytes are not quoted
                raise AuditLogError(f"audit message: the record at byte {position} does not decode with schema id "
                                    f"{schema_id} ({type(exc).__name__})") from None
            end = buffer.tell()
            found.append((value[position:end], record))
            position = end
        return found

    def records(self, value: bytes) -> list[dict[str, Any]]:
        """The decoded records only."""
        return [record for _, record in self(value)]
