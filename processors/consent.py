"""The processor's consent table: the latest consent of each (subject, purpose), fed by the
compacted `consent.changes` topic, applied in flight.

Every worker reads the whole topic itself, so whichever worker handles a subject's events sees
that subject's consent. A withdrawal takes effect for every event processed after the change was
consumed: the table is a dict updated by the reader thread, read by the data plane per decision.
"""

from __future__ import annotations

from confluent_kafka import Message

from backbone.policy.engine import ConsentRecord
from backbone.serde import Decoder


class ConsentTable:
    """(subject, purpose) -> ConsentRecord; the newest change (by its `at`) wins."""

    def __init__(self, decoder: Decoder) -> None:
        self._decode = decoder
        self._records: dict[tuple[str, str], ConsentRecord] = {}
        self.rejected = 0

    def __len__(self) -> int:
        return len(self._records)

    def get(self, subject: str, purpose: str) -> ConsentRecord | None:
        return self._records.get((subject, purpose))

    def apply_message(self, message: Message) -> None:
        value = message.value()
        if value is None:
            return
        record = self._decode(value).record
        subject, purpose, status, at = record["subject_national_id"], record["purpose"], record["status"], record["at"]
        if not subject or status not in ("granted", "withdrawn"):
            self.rejected += 1
            return
        key = (subject, purpose)
        current = self._records.get(key)
        if current is None or current.at <= at:
            self._records[key] = ConsentRecord(status, at)
