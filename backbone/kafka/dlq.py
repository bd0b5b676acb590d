"""The dead-letter contract: one set of headers and one vocabulary of reason codes for every stage.

A dead letter is the original message (key, value and headers, byte for byte) on `dlq.<stage>`,
plus these headers, so an operator can see why it was refused and replay it once the cause is fixed:

| header                   | value                                                            |
| ------------------------ | ---------------------------------------------------------------- |
| `error.stage`            | `processor` or `sink`                                            |
| `error.reason`           | one snake_case code of `REASONS`                                 |
| `error.source_topic`     | the topic the message was read from                              |
| `error.source_partition` | its partition (when known)                                       |
| `error.source_offset`    | its offset (when known)                                          |
| `error.detail`           | optional: a code that is never personal data (schema id, ClickHouse error code) |
| `error.sealed`           | the processor's entries: the id of the key that encrypts the value (below) |

Reasons and details never carry record content.

Crypto-shredding (the processor's DLQ, where raw personal bytes land): each entry's value is
encrypted under a key of its subject and period, destroyed by an erasure or once the DLQ retention
has passed (`backbone.kafka.dlq_keys`, whose names are re-exported here). `replay` decrypts with the
keys still there and skips (counts) the destroyed ones.
"""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass
from typing import TYPE_CHECKING

from backbone.kafka.dlq_keys import (  # noqa: F401 - the DLQ's public names, in one place
    KEYS_TOPIC,
    UNKEYED,
    DlqKeys,
    DlqSealer,
    Shredded,
    expire,
    keys_topic_config,
    shred,
    subject_handle,
)
from backbone.kafka.topics import dlq_topic

if TYPE_CHECKING:
    from confluent_kafka import Message

    from backbone.settings import Settings

log = logging.getLogger(__name__)

STAGE = "error.stage"
REASON = "error.reason"
SOURCE_TOPIC = "error.source_topic"
SOURCE_PARTITION = "error.source_partition"
SOURCE_OFFSET = "error.source_offset"
DETAIL = "error.detail"
SEALED = "error.sealed"
CONTRACT_HEADERS = (STAGE, REASON, SOURCE_TOPIC, SOURCE_PARTITION, SOURCE_OFFSET, DETAIL, SEALED)

PROCESSOR = "processor"
SINK = "sink"
STAGES = (PROCESSOR, SINK)

# Every reason code, with what it means. Codes are stable: operators alert and replay on them.
REASONS: dict[str, str] = {
    "empty_value": "the message has no value",
    "bad_magic_byte": "the value is not in the Confluent wire format (first byte is not 0)",
    "truncated_message": "the value ends before the wire-format header or the Avro record does",
    "unknown_schema_id": "the schema registry does not know the writer schema id",
    "corrupt_message": "the Avro body does not decode under its writer schema",
    "undecodable": "the value could not be decoded for another reason",
    "unknown_event_type": "the event type is not in the catalog, or not the topic's",
    "missing_governance": "the event has no governance record (lawful basis)",
    "invalid_governance": "the governance record has no purposes",
    "unknown_purpose": "a purpose is not in the purpose vocabulary",
    "transform_failed": "deciding or transforming the event failed unexpectedly (nothing was released)",
    "schema_unreadable": "the writer schema could not be read or mapped to ClickHouse types",
    "type_mismatch": "a field's type differs from the existing column's type",
    "clickhouse_rejected": "ClickHouse refused the row (error code in error.detail)",
}

Headers = list[tuple[str, bytes]]


def headers(stage: str, reason: str, source_topic: str, *, partition: int | None = None, offset: int | None = None,
            detail: str | None = None, original: Headers | None = None) -> Headers:
    """The message's own headers followed by the contract's headers; `reason` must be a known code."""
    if stage not in STAGES:
        raise ValueError(f"unknown dead-letter stage {stage!r}; one of {', '.join(STAGES)}")
    if reason not in REASONS:
        raise ValueError(f"unknown dead-letter reason {reason!r}; add it to backbone.kafka.dlq.REASONS")
    added: Headers = [(STAGE, stage.encode()), (REASON, reason.encode()), (SOURCE_TOPIC, source_topic.encode())]
    if partition is not None:
        added.append((SOURCE_PARTITION, str(partition).encode()))
    if offset is not None:
        added.append((SOURCE_OFFSET, str(offset).encode()))
    if detail:
        added.append((DETAIL, detail.encode()))
    return [*(original or []), *added]


@dataclass(slots=True, frozen=True)
class DeadLetter:
    """One dead letter read back: why and where from, with the original key, value and headers."""

    stage: str
    reason: str
    source_topic: str
    partition: int | None
    offset: int | None
    detail: str | None
    key: bytes | None
    value: bytes | None
    original_headers: Headers
    sealed: str | None = None  # the id of the key that encrypts `value` (processor entries)

    @classmethod
    def from_message(cls, message: Message) -> DeadLetter:
        contract: dict[str, str] = {}
        original: Headers = []
        for name, value in message.headers() or []:
            if name in CONTRACT_HEADERS:
                contract[name] = (value or b"").decode(errors="replace")
            else:
                original.append((name, value))
        stage = contract.get(STAGE) or message.topic().removeprefix(dlq_topic(""))

        def number(name: str) -> int | None:
            text = contract.get(name, "")
            return int(text) if text.lstrip("-").isdigit() else None

        return cls(stage, contract.get(REASON, "?"), contract.get(SOURCE_TOPIC, "?"), number(SOURCE_PARTITION),
                   number(SOURCE_OFFSET), contract.get(DETAIL), message.key(), message.value(), original, contract.get(SEALED))


def read(settings: Settings, stage: str, timeout: float = 10.0) -> list[DeadLetter]:
    """Every dead letter of one stage now (reads `dlq.<stage>` to its end, bounded by `timeout`)."""
    from backbone.kafka.compacted import read_to_end

    return [DeadLetter.from_message(message) for message in read_to_end(settings, dlq_topic(stage), timeout)]


def count(settings: Settings, timeout: float = 10.0) -> Counter[tuple[str, str]]:
    """Dead letters by (stage, reason) over every stage's DLQ topic."""
    counts: Counter[tuple[str, str]] = Counter()
    for stage in STAGES:
        for letter in read(settings, stage, timeout):
            counts[(stage, letter.reason)] += 1
    return counts


@dataclass(slots=True, frozen=True)
class Entry:
    """A dead letter with where it sits on its DLQ topic and when it was written (epoch millis)."""

    letter: DeadLetter
    topic: str
    partition: int
    offset: int
    timestamp_ms: int

    @property
    def position(self) -> str:
        return f"{self.topic}[{self.partition}]@{self.offset}"


def entries(settings: Settings, stage: str, timeout: float = 10.0) -> list[Entry]:
    """Every dead letter of one stage now, with its DLQ position and time."""
    from backbone.kafka.compacted import read_to_end

    found = []
    for message in read_to_end(settings, dlq_topic(stage), timeout):
        _, timestamp = message.timestamp()
        found.append(Entry(DeadLetter.from_message(message), message.topic(), message.partition(), message.offset(), timestamp))
    return found


def select(found: list[Entry], reason: str | None = None, since_ms: int | None = None, until_ms: int | None = None,
           source_topic: str | None = None) -> list[Entry]:
    """The entries matching every filter given (reason code, source topic, written in [since, until))."""
    return [
        entry for entry in found
        if (reason is None or entry.letter.reason == reason)
        and (source_topic is None or entry.letter.source_topic == source_topic)
        and (since_ms is None or entry.timestamp_ms >= since_ms)
        and (until_ms is None or entry.timestamp_ms < until_ms)
    ]


def replay(settings: Settings, chosen: list[Entry]) -> int:
    """Write each chosen dead letter back to its source topic: the original key, value and headers,
    byte for byte (events keep their ids, so consumers that saw them before deduplicate); sealed
    values are decrypted first, and entries whose key was destroyed are
    skipped (its subject was erased, or its retention passed). Waits until the cluster acknowledged every one; returns how many were replayed."""
    from confluent_kafka import KafkaError, Producer

    from backbone.errors import KafkaUnavailableError

    keys = DlqKeys.load(settings) if any(entry.letter.sealed for entry in chosen) else None
    producer = Producer(settings.producer_config())
    failures: list[str] = []

    def delivered(error: KafkaError | None, message: object) -> None:
        if error is not None:
            failures.append(error.str())

    replayed = 0
    for entry in chosen:
        letter = entry.letter
        if letter.source_topic in ("", "?") or letter.source_topic.startswith(dlq_topic("")):
            raise ValueError(f"{entry.position} names no source topic to replay to")
        value = letter.value
        if keys is not None and letter.sealed:
            try:
                value = keys.open(letter)
            except Shredded:
                log.warning("%s is not replayed: its key was destroyed (subject erased or retention passed)", entry.position)
                continue
        producer.produce(letter.source_topic, value, letter.key, headers=list(letter.original_headers) or None,
                         on_delivery=delivered)
        producer.poll(0)
        replayed += 1
    if producer.flush(settings.kafka_timeout_s * 3) or failures:
        raise KafkaUnavailableError(f"replayed dead letters not acknowledged by Kafka at {settings.kafka_bootstrap}"
                                    f"{' (' + failures[0] + ')' if failures else ''}; replay again: consumers deduplicate")
    return replayed


def topic_config(settings: Settings) -> dict[str, str]:
    """Configuration of a DLQ topic: its retention bounds how long original bytes are kept."""
    return {"retention.ms": str(int(settings.dlq_retention_days * 86_400_000))}
