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

from confluent_kafka import Message

from backbone.errors import RegistryError, SerdeError
from backbone.events.serde import Decoder
from backbone.kafka.compacted import Retry
from backbone.policy.decision import ConsentRecord

log = logging.getLogger(__name__)

STATUSES = ("granted", "withdrawn")


class ConsentTable:
    """(subject, purpose) -> ConsentRecord, the last change of each in log order."""

    def __init__(self, decoder: Decoder) -> None:
        self._decode = decoder
        self._records: dict[tuple[str, str], ConsentRecord] = {}
        self._by_key: dict[bytes, set[tuple[str, str]]] = {}  # Kafka key -> (subject, purpose) it carried
        self.rejected = 0

    def __len__(self) -> int:
        return len(self._records)

    def get(self, subject: str, purpose: str) -> ConsentRecord | None:
        return self._records.get((subject, purpose))

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
        pair = (subject, purpose)
        if key is not None:
            self._by_key.setdefault(key, set()).add(pair)
        self._records[pair] = ConsentRecord(status, at)

    def _withdraw_key(self, key: bytes | None, where: str, why: str) -> None:
        self.rejected += 1
        pairs = self._by_key.get(key or b"", set())
        now = datetime.now(UTC)
        for pair in pairs:
            self._records[pair] = ConsentRecord("withdrawn", now)
        # the place and the count only: the record may hold personal data
        log.warning("consent record at %s cannot be read (%s): counted as a withdrawal for the %d consent(s) its key carried",
                    where, why, len(pairs))
