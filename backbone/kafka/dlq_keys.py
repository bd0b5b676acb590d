"""Crypto-shredding of the processor's dead letters: the keys that seal them, and their destruction.

Each dead letter's value is encrypted (AES-256-GCM) under a key of the entry's subject and period.
The subject is found by the raw topic key (the producers' keyed hash of the subject id, or whatever
key a provider uses; `subject_handle`); a message without a key has the handle `unkeyed`. A key
seals one subject's entries of one period (a day, or the DLQ retention when that is shorter:
`period_ms`) and lives on the compacted `dlq.keys` topic, wrapped under the master key, one record
per key (`<handle>.p<period start ms>.<random>`; the period start is bound to the wrapped key).

Keys are destroyed (tombstones on `dlq.keys`):
- by `backbone erase` for the erased subject's handles (`shred`): the SDK key's, and those of any
  raw topic key the operator names (`--topic-key`);
- once the DLQ retention has passed since the key's period began (`expire`), whoever the subject:
  the processor runs `expire` hourly, `backbone erase` and `backbone dlq replay` run it too. So no
  dead letter is readable longer than `BACKBONE_DLQ_RETENTION_DAYS` after it was written, keyed
  or not, erased or not; `DlqKeys` refuses an expired key even before its tombstone is written.

Every worker forgets the keys of erased subjects (`DlqSealer.forget`): their later entries are
sealed under keys never stored, unreadable from the start.
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import os
import threading
import time
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from backbone.errors import BackboneError
from backbone.kafka.topics import DLQ_KEYS_TOPIC, eager_compaction

if TYPE_CHECKING:

    from backbone.kafka.dlq import DeadLetter
    from backbone.settings import Settings

log = logging.getLogger(__name__)

KEYS_TOPIC = DLQ_KEYS_TOPIC
UNKEYED = "unkeyed"  # the handle of messages without a key: no subject to erase them by
DAY_MS = 86_400_000
_NONCE = 12


class Shredded(BackboneError):
    """A dead letter's key is gone (its subject was erased, or its retention passed): its value cannot be decrypted."""


def subject_handle(raw_key: bytes | None) -> str:
    """The DLQ key handle of a raw message's subject, from its raw topic key (the producers' keyed
    hash of the subject id, or a provider's own key): a hash of that, so the handle never equals a topic key."""
    if not raw_key:
        return UNKEYED
    return hashlib.sha256(b"backbone dlq subject\x00" + raw_key).hexdigest()[:32]


def keys_topic_config() -> dict[str, str]:
    """`dlq.keys` is compacted, and cleaned eagerly, so a destroyed key leaves the log soon."""
    return eager_compaction()


def retention_ms(settings: Settings) -> int:
    """How long a DLQ keeps entries (`BACKBONE_DLQ_RETENTION_DAYS`), and so how long a key may live."""
    return int(settings.dlq_retention_days * DAY_MS)


def period_ms(settings: Settings) -> int:
    """How long one key seals new entries of a subject: a day, or the DLQ retention when that is shorter."""
    return max(1, min(DAY_MS, retention_ms(settings)))


def period_start(seal_id: str) -> int | None:
    """The period start (epoch ms) a seal id names, None for an id without one (sealed before periods)."""
    parts = seal_id.split(".")
    if len(parts) == 3 and parts[1].startswith("p") and parts[1][1:].isdigit():
        return int(parts[1][1:])
    return None


def _associated(seal_id: str) -> bytes:
    return b"backbone dlq key\x00" + seal_id.encode()


def _master(settings: Settings, master_key: bytes | None) -> AESGCM:
    from backbone.keys.master import master_key_from_settings

    return AESGCM(master_key if master_key is not None else master_key_from_settings(settings))


def _now_ms() -> int:
    return int(time.time() * 1000)


class DlqSealer:
    """Encrypts the processor's dead letters per subject and period (`seal`), publishing each new key
    to `dlq.keys` (acknowledged before the entry it encrypts is written) and forgetting the keys of
    erased subjects (`forget`): later entries about them are sealed under keys never stored."""

    def __init__(self, settings: Settings, master_key: bytes | None = None) -> None:
        self.settings = settings
        self._wrap = _master(settings, master_key)
        self._period = period_ms(settings)
        self._current = -1  # the period start the keys in memory belong to
        self._keys: dict[str, tuple[str, AESGCM]] = {}  # handle -> (seal id, cipher), this period only
        self._forgotten: set[str] = set()
        self._lock = threading.Lock()
        self._producer = None

    def seal(self, raw_key: bytes | None, value: bytes, now_ms: int | None = None) -> tuple[bytes, str]:
        """(encrypted value, seal id for the `error.sealed` header)."""
        handle = subject_handle(raw_key)
        moment = _now_ms() if now_ms is None else now_ms
        start = moment - moment % self._period
        with self._lock:
            if start != self._current:  # a new period: new keys for everyone, the old ones only expire
                self._current, self._keys = start, {}
            known = self._keys.get(handle)
            if known is None:
                known = self._new_key(handle, start)
        seal_id, cipher = known
        nonce = os.urandom(_NONCE)
        return nonce + cipher.encrypt(nonce, value, _associated(seal_id)), seal_id

    def forget(self, handles: Iterable[str]) -> None:
        """Drop these subjects' keys from memory; their later entries go under throwaway keys."""
        with self._lock:
            for handle in handles:
                if handle == UNKEYED:
                    continue  # everyone's unkeyed entries: they expire with the retention instead
                self._keys.pop(handle, None)
                self._forgotten.add(handle)

    def _new_key(self, handle: str, start: int) -> tuple[str, AESGCM]:
        key = AESGCM.generate_key(256)
        seal_id = f"{handle}.p{start}.{os.urandom(6).hex()}"
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


def _started(seal_id: str, value: bytes | None) -> int | None:
    """When a stored key's period began: from its id, or (a key sealed before periods) when it was made."""
    start = period_start(seal_id)
    if start is not None or value is None:
        return start
    try:
        return int(datetime.fromisoformat(json.loads(value)["at"]).timestamp() * 1000)
    except (ValueError, KeyError, TypeError):
        return None


def _live(settings: Settings, timeout: float) -> dict[bytes, bytes]:
    """The records on `dlq.keys` now that no tombstone followed: seal id -> value."""
    from backbone.kafka.compacted import read_to_end

    live: dict[bytes, bytes] = {}
    for message in read_to_end(settings, KEYS_TOPIC, timeout):
        key = message.key() or b""
        if message.value() is None:
            live.pop(key, None)
        else:
            live[key] = message.value()
    return live


class DlqKeys:
    """The DLQ keys still on `dlq.keys` and not expired, unwrapped, to open sealed dead letters."""

    def __init__(self, keys: dict[str, bytes]) -> None:
        self._keys = keys

    @classmethod
    def load(cls, settings: Settings, master_key: bytes | None = None, timeout: float = 10.0, now_ms: int | None = None) -> DlqKeys:
        wrap = _master(settings, master_key)
        deadline = (_now_ms() if now_ms is None else now_ms) - retention_ms(settings)
        keys: dict[str, bytes] = {}
        for raw_id, value in _live(settings, timeout).items():
            seal_id = raw_id.decode(errors="replace")
            started = _started(seal_id, value)
            if started is None or started <= deadline:
                continue  # expired (or undatable): destroyed by `expire`, never opened meanwhile
            try:
                raw = base64.b64decode(json.loads(value)["key"])
                keys[seal_id] = wrap.decrypt(raw[:_NONCE], raw[_NONCE:], _associated(seal_id))
            except (InvalidTag, ValueError, KeyError, TypeError):
                log.warning("a record on %s holds no key this master key opens", KEYS_TOPIC)
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
            raise Shredded(f"the key {letter.sealed} of this dead letter was destroyed (its subject was erased, or its retention passed)")
        try:
            return AESGCM(key).decrypt(sealed[:_NONCE], sealed[_NONCE:], _associated(letter.sealed))
        except InvalidTag:
            raise Shredded(f"the dead letter does not open under key {letter.sealed}: altered, or not that key's") from None


def _tombstone(settings: Settings, keys: Iterable[bytes], what: str) -> None:
    from confluent_kafka import Producer

    from backbone.errors import KafkaUnavailableError

    producer = Producer(settings.producer_config(**{"linger.ms": 0}))
    failures: list[str] = []
    for key in keys:
        producer.produce(KEYS_TOPIC, None, key, on_delivery=lambda error, _: failures.append(error.str()) if error else None)
        producer.poll(0)
    if producer.flush(settings.kafka_timeout_s * 3) or failures:
        raise KafkaUnavailableError(f"{what} not acknowledged by {KEYS_TOPIC} at {settings.kafka_bootstrap}")


def shred(settings: Settings, handles: Iterable[str], timeout: float = 10.0) -> int:
    """Tombstones for every key of these subject handles on `dlq.keys`; returns how many keys.
    The `unkeyed` handle is everyone's: its keys go by `expire`, never by one person's erasure."""
    prefixes = tuple(f"{handle}." for handle in handles if handle != UNKEYED)
    if not prefixes:
        return 0
    live = sorted(key for key in _live(settings, timeout) if key.decode(errors="replace").startswith(prefixes))
    _tombstone(settings, live, "DLQ key tombstones")
    return len(live)


def expire(settings: Settings, now_ms: int | None = None, timeout: float = 10.0) -> int:
    """Tombstones for every key whose period began `BACKBONE_DLQ_RETENTION_DAYS` ago or earlier
    (the entries it sealed are past their retention, or will be soon); returns how many keys."""
    deadline = (_now_ms() if now_ms is None else now_ms) - retention_ms(settings)
    expired = []
    for key, value in _live(settings, timeout).items():
        started = _started(key.decode(errors="replace"), value)
        if started is not None and started <= deadline:
            expired.append(key)
    _tombstone(settings, sorted(expired), "expired DLQ key tombstones")
    if expired:
        log.info("destroyed %d DLQ keys past the DLQ retention", len(expired))
    return len(expired)

