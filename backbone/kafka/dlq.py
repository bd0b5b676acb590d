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
encrypted (AES-256-GCM) under a random key of the entry's subject, found by the raw topic key
(the producers' keyed hash of the subject id; `subject_handle`). The keys live on the compacted
`dlq.keys` topic, wrapped under the master key, one record per key (`<handle>.<key id>`).
`backbone erase` writes tombstones for the subject's keys (`shred`), and every worker forgets them
(`DlqSealer.forget`); once compaction has run, nothing can decrypt those entries any more. `replay`
decrypts with the keys still there and skips (counts) the shredded ones.
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import os
import threading
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from backbone.errors import BackboneError
from backbone.kafka.topics import DLQ_KEYS_TOPIC, dlq_topic

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
    values are decrypted first, and entries whose key was shredded (an erased subject's) are
    skipped. Waits until the cluster acknowledged every one; returns how many were replayed."""
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
                log.warning("%s is not replayed: its key was destroyed (its subject was erased)", entry.position)
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


# --- crypto-shredding -----------------------------------------------------------------------------
KEYS_TOPIC = DLQ_KEYS_TOPIC
UNKEYED = "unkeyed"  # the handle of messages without a key: no subject to erase them by
_NONCE = 12


class Shredded(BackboneError):
    """A dead letter's key is gone (its subject was erased): its value cannot be decrypted."""


def subject_handle(raw_key: bytes | None) -> str:
    """The DLQ key handle of a raw message's subject, from its raw topic key (the producers' keyed
    hash of the subject id): a hash of that, so the handle never equals a topic key."""
    if not raw_key:
        return UNKEYED
    return hashlib.sha256(b"backbone dlq subject\x00" + raw_key).hexdigest()[:32]


def keys_topic_config() -> dict[str, str]:
    """`dlq.keys` is compacted, and cleaned eagerly, so a destroyed key leaves the log soon: segments
    roll hourly, any dirty share triggers cleaning, tombstones stay one day for readers to see."""
    return {"cleanup.policy": "compact", "segment.ms": "3600000", "min.cleanable.dirty.ratio": "0.01",
            "delete.retention.ms": "86400000"}


def _associated(seal_id: str) -> bytes:
    return b"backbone dlq key\x00" + seal_id.encode()


def _master(settings: Settings, master_key: bytes | None) -> AESGCM:
    from backbone.keys.keyring import master_key_from_settings

    return AESGCM(master_key if master_key is not None else master_key_from_settings(settings))


class DlqSealer:
    """Encrypts the processor's dead letters per subject (`seal`), publishing each new key to
    `dlq.keys` (acknowledged before the entry it encrypts is written) and forgetting the keys of
    erased subjects (`forget`): later entries about them are sealed under keys never stored."""

    def __init__(self, settings: Settings, master_key: bytes | None = None) -> None:
        self.settings = settings
        self._wrap = _master(settings, master_key)
        self._keys: dict[str, tuple[str, AESGCM]] = {}  # handle -> (seal id, cipher)
        self._forgotten: set[str] = set()
        self._lock = threading.Lock()
        self._producer = None

    def seal(self, raw_key: bytes | None, value: bytes) -> tuple[bytes, str]:
        """(encrypted value, seal id for the `error.sealed` header)."""
        handle = subject_handle(raw_key)
        with self._lock:
            known = self._keys.get(handle)
            if known is None:
                known = self._new_key(handle)
        seal_id, cipher = known
        nonce = os.urandom(_NONCE)
        return nonce + cipher.encrypt(nonce, value, _associated(seal_id)), seal_id

    def forget(self, handles: Iterable[str]) -> None:
        """Drop these subjects' keys from memory; their later entries go under throwaway keys."""
        with self._lock:
            for handle in handles:
                self._keys.pop(handle, None)
                self._forgotten.add(handle)

    def _new_key(self, handle: str) -> tuple[str, AESGCM]:
        key = AESGCM.generate_key(256)
        seal_id = f"{handle}.{os.urandom(6).hex()}"
        if handle in self._forgotten:
            return f"{handle}.shredded", AESGCM(key)  # never stored: unreadable from the start
        nonce = os.urandom(_NONCE)
        wrapped = base64.b64encode(nonce + self._wrap.encrypt(nonce, key, _associated(seal_id))).decode()
        record = json.dumps({"handle": handle, "key": wrapped, "at": datetime.now(UTC).isoformat()}).encode()
        self._publish(seal_id.encode(), record)
        self._keys[handle] = (seal_id, AESGCM(key))
        return self._keys[handle]

    def _publish(self, key: bytes, value: bytes) -> None:
        from confluent_kafka import Producer

        from backbone.errors import KafkaUnavailableError

        if self._producer is None:
            self._producer = Producer(self.settings.producer_config(**{"linger.ms": 0}))
        failures: list[str] = []
        self._producer.produce(KEYS_TOPIC, value, key, on_delivery=lambda error, _: failures.append(error.str()) if error else None)
        if self._producer.flush(self.settings.kafka_timeout_s * 3) or failures:
            # No key stored, no entry written: the data plane stops and the batch is read again.
            raise KafkaUnavailableError(f"a DLQ key was not acknowledged by {KEYS_TOPIC} at {self.settings.kafka_bootstrap}")


class DlqKeys:
    """The DLQ keys still on `dlq.keys`, unwrapped, to open sealed dead letters."""

    def __init__(self, keys: dict[str, bytes]) -> None:
        self._keys = keys

    @classmethod
    def load(cls, settings: Settings, master_key: bytes | None = None, timeout: float = 10.0) -> DlqKeys:
        from backbone.kafka.compacted import read_to_end

        wrap = _master(settings, master_key)
        keys: dict[str, bytes] = {}
        for message in read_to_end(settings, KEYS_TOPIC, timeout):
            seal_id = (message.key() or b"").decode(errors="replace")
            if message.value() is None:
                keys.pop(seal_id, None)
                continue
            try:
                raw = base64.b64decode(json.loads(message.value())["key"])
                keys[seal_id] = wrap.decrypt(raw[:_NONCE], raw[_NONCE:], _associated(seal_id))
            except (InvalidTag, ValueError, KeyError, TypeError):
                log.warning("%s[%d]@%d holds no key this master key opens", KEYS_TOPIC, message.partition(), message.offset())
        return cls(keys)

    def __len__(self) -> int:
        return len(self._keys)

    def open(self, letter: DeadLetter) -> bytes | None:
        """The original value of a dead letter (as is when not sealed); `Shredded` if its key is gone."""
        if not letter.sealed:
            return letter.value
        key = self._keys.get(letter.sealed)
        sealed = letter.value or b""
        if key is None:
            raise Shredded(f"the key {letter.sealed} of this dead letter was destroyed (its subject was erased)")
        try:
            return AESGCM(key).decrypt(sealed[:_NONCE], sealed[_NONCE:], _associated(letter.sealed))
        except InvalidTag:
            raise Shredded(f"the dead letter does not open under key {letter.sealed}: altered, or not that key's") from None


def shred(settings: Settings, handles: Iterable[str], timeout: float = 10.0) -> int:
    """Tombstones for every key of these subject handles on `dlq.keys`; returns how many keys."""
    from confluent_kafka import Producer

    from backbone.errors import KafkaUnavailableError
    from backbone.kafka.compacted import read_to_end

    prefixes = tuple(f"{handle}." for handle in handles if handle != UNKEYED)
    if not prefixes:
        return 0
    live: set[bytes] = set()
    for message in read_to_end(settings, KEYS_TOPIC, timeout):
        key = message.key() or b""
        if key.decode(errors="replace").startswith(prefixes):
            (live.add if message.value() is not None else live.discard)(key)
    producer = Producer(settings.producer_config(**{"linger.ms": 0}))
    failures: list[str] = []
    for key in sorted(live):
        producer.produce(KEYS_TOPIC, None, key, on_delivery=lambda error, _: failures.append(error.str()) if error else None)
    if producer.flush(settings.kafka_timeout_s * 3) or failures:
        raise KafkaUnavailableError(f"DLQ key tombstones not acknowledged by {KEYS_TOPIC} at {settings.kafka_bootstrap}")
    return len(live)
