"""The processor's consent table: the latest consent of each (subject, purpose), fed by the
compacted `consent.changes` topic, applied in flight.

Every worker reads the whole topic itself, so whichever worker handles a subject's events sees
that subject's consent. A withdrawal takes effect for every event processed after the change was
consumed: the table is a dict updated by the reader thread, read by the data plane per decision.

Fail closed:
- Records apply in the log's order: the last record of a key wins, whatever its `at` says (a grant
  stamped in the future by a skewed clock cannot hide a later withdrawal).
- A record that cannot be read (undecodable bytes, no subject, an unknown status, a tombstone)
  counts as a withdrawal for every (subject, purpose) its Kafka key carried before.
- A schema registry outage does not skip a record: the reader waits (`Retry`) and applies nothing
  after it until the registry answers; the data plane pauses meanwhile.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from hashlib import blake2b

from confluent_kafka import Message

from backbone.errors import RegistryError, SerdeError
from backbone.events.serde import Decoder
from backbone.kafka.compacted import Retry
from backbone.policy.decision import ConsentRecord

log = logging.getLogger(__name__)

STATUSES = ("granted", "withdrawn")
# Every worker holds every consent: entries are kept compact (bench.state measures them). An entry
# is a 16-byte digest of (subject, purpose) -> an int packing the time in ms and the status bit
# (~600 bytes per entry as (str, str) -> ConsentRecord with a datetime; see the README's figures).
DIGEST_SIZE = 16
_WITHDRAWN = 1


def entry_key(subject: str, purpose: str) -> bytes:
    """The table's key of (subject, purpose): a digest, 16 bytes whatever the id's length."""
    return blake2b(f"{subject}\x00{purpose}".encode(), digest_size=DIGEST_SIZE).digest()


def _pack(status: str, at: datetime) -> int:
    return (int(at.timestamp() * 1000) << 1) | (_WITHDRAWN if status == "withdrawn" else 0)


def _unpack(packed: int) -> ConsentRecord:
    return ConsentRecord("withdrawn" if packed & _WITHDRAWN else "granted", datetime.fromtimestamp((packed >> 1) / 1000, UTC))


class ConsentTable:
    """(subject, purpose) -> ConsentRecord, the last change of each in log order."""

    def __init__(self, decoder: Decoder) -> None:
        self._decode = decoder
        self._records: dict[bytes, int] = {}  # entry_key -> packed status and time
        # digest of the Kafka key -> the entry it carried (or a tuple of entries, when several)
        self._by_key: dict[bytes, bytes | tuple[bytes, ...]] = {}
        self.rejected = 0

    def __len__(self) -> int:
        return len(self._records)

    def get(self, subject: str, purpose: str) -> ConsentRecord | None:
        packed = self._records.get(entry_key(subject, purpose))
        return None if packed is None else _unpack(packed)

    def apply_message(self, message: Message) -> None:
        self.apply(message.key(), message.value(), f"{message.topic()}[{message.partition()}]@{message.offset()}")

    def apply(self, key: bytes | None, value: bytes | None, where: str = "consent.changes") -> None:
        if value is None:
            self._withdraw_key(key, where, "a tombstone")
            return
        try:
            record = self._decode(value).record
        except RegistryError as exc:  # the registry is down: wait, never skip a consent change
            raise Retry(f"schema registry unavailable ({type(exc).__name__})") from None
        except SerdeError as exc:
            self._withdraw_key(key, where, f"undecodable ({type(exc).__name__})")
            return
        subject, purpose, status = record.get("subject_national_id"), record.get("purpose"), record.get("status")
        if not subject or not purpose or status not in STATUSES:
            self._withdraw_key(key, where, "no subject, purpose or known status")
            return
        at = record.get("at") or datetime.now(UTC)
        entry = entry_key(subject, purpose)
        if key is not None:
            kafka_key = _key_digest(key)
            carried = self._by_key.get(kafka_key)
            if carried is None:
                self._by_key[kafka_key] = entry
            elif isinstance(carried, bytes):
                if carried != entry:
                    self._by_key[kafka_key] = (carried, entry)
            elif entry not in carried:
                self._by_key[kafka_key] = (*carried, entry)
        self._records[entry] = _pack(status, at)

    def _withdraw_key(self, key: bytes | None, where: str, why: str) -> None:
        self.rejected += 1
        carried = self._by_key.get(_key_digest(key or b""), ())
        pairs = (carried,) if isinstance(carried, bytes) else carried
        withdrawn = _pack("withdrawn", datetime.now(UTC))
        for pair in pairs:
            self._records[pair] = withdrawn
        # the place and the count only: the record may hold personal data
        log.warning("consent record at %s cannot be read (%s): counted as a withdrawal for the %d consent(s) its key carried",
                    where, why, len(pairs))


def _key_digest(key: bytes) -> bytes:
    return blake2b(key, digest_size=DIGEST_SIZE).digest()
