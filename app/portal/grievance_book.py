"""Grievances kept on the compacted topic `grievances` (one record per case, keyed by its tracking
id, the latest state wins) and every transition sealed as an operator action `grievance` in the
verifiable trail before the new state is published: a step that is not in the trail is not done.

A case names its person by their oversight pseudonym only (what the trail names them by) and its
entry by event id and recipient; the complaint's text stays with the case and is never logged or
put in the trail (the action carries the state, the deadline and the note's SHA-256).

Erasure (`backbone erase`, step `grievances`: `forget`) keeps each of the person's cases for the
defence of legal claims (GDPR Art. 17(3)(e): the agency shows it answered, and in time) but nothing
that leads back to the person: the case is republished under its tracking id without the complaint's
text, the oversight pseudonym, the entry it was about (an event id names the person in the trail) and
every step's note (answers quote the person); its states, dates, handlers, agency and deadline remain,
so the public figures stay true. Compaction then removes the earlier records (`eager_compaction`).
"""

from __future__ import annotations

import hashlib
import json
import logging
import statistics
import threading
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from confluent_kafka import Producer

from app.portal import grievances as g
from backbone.errors import KafkaUnavailableError
from backbone.settings import Settings

log = logging.getLogger(__name__)

GRIEVANCES_TOPIC = "grievances"
GRIEVANCE_ACTION = "grievance"
ERASED = "erased"  # the outcome of the trail's action when a case loses its personal parts


@dataclass(slots=True, frozen=True)
class Case:
    """A grievance with who it concerns (oversight pseudonym) and the person's own words."""

    grievance: g.Grievance
    subject_token: str
    text: str

    def to_json(self) -> dict[str, object]:
        c = self.grievance
        return {"tracking_id": c.tracking_id, "agency": c.agency, "entry": c.entry, "received_at": c.received_at.isoformat(),
                "profile": c.profile.name, "subject_token": self.subject_token, "text": self.text,
                "steps": [{"state": s.state, "at": s.at.isoformat(), "by": s.by, "note": s.note} for s in c.steps]}

    @classmethod
    def from_json(cls, data: dict) -> Case:
        name = data["profile"]
        profile = g.profile(name) if name in g.PROFILES else g.profile("", days=int(name.removeprefix("days")))
        steps = tuple(g.Step(s["state"], datetime.fromisoformat(s["at"]), s["by"], s.get("note", "")) for s in data["steps"])
        return cls(g.Grievance(data["tracking_id"], data["agency"], data["entry"], datetime.fromisoformat(data["received_at"]),
                               profile, steps), data["subject_token"], data.get("text", ""))


def redacted(case: Case) -> Case:
    """The case as erasure keeps it: no text, pseudonym, entry or note; states, dates and handlers kept."""
    c = case.grievance
    steps = tuple(g.Step(s.state, s.at, s.by) for s in c.steps)
    return Case(g.Grievance(c.tracking_id, c.agency, "", c.received_at, c.profile, steps), "", "")


def _publish(settings: Settings, records: list[tuple[bytes, bytes]]) -> None:
    producer = Producer(settings.producer_config(**{"linger.ms": 0}))
    failures: list[str] = []
    for key, value in records:
        producer.produce(GRIEVANCES_TOPIC, value, key,
                         on_delivery=lambda error, _m: failures.append(error.str()) if error is not None else None)
    if producer.flush(settings.kafka_timeout_s) or failures:
        raise KafkaUnavailableError(f"{len(failures) or len(records)} grievance record(s) not acknowledged by {GRIEVANCES_TOPIC}; "
                                    "run it again (it is idempotent)")


def forget(settings: Settings, tokens: Iterable[str], actor: str) -> int:
    """Erasure's step for grievances: every case naming one of `tokens` (the person's oversight
    pseudonyms under every key) republished `redacted`, each sealed first as a `grievance` action
    with outcome `erased`. Returns the cases redacted; idempotent (a redacted case names no one)."""
    from backbone.audit import operations

    wanted = {token for token in tokens if token}
    book = GrievanceBook(settings)
    try:
        found = [case for case in book.cases().values() if case.subject_token in wanted]  # read to the end, or raises
    finally:
        book.close()
    for case in found:
        c = case.grievance
        operations.record(settings, operations.OperatorAction(
            GRIEVANCE_ACTION, actor, c.tracking_id, ERASED, "the person's erasure: text, pseudonym, entry and notes removed",
            {"agency": c.agency, "state": c.state, "deadline": c.deadline.isoformat(), "profile": c.profile.name}))
    if found:
        _publish(settings, [(case.grievance.tracking_id.encode(), json.dumps(redacted(case).to_json()).encode()) for case in found])
    return len(found)


class GrievanceBook:
    """Cases from Kafka, read by one reader thread that follows the topic (from the beginning, then as
    cases arrive); each write sealed first in the operations chain. `close()` stops the reader."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._lock = threading.Lock()
        self._cases: dict[str, Case] = {}
        self._reader: Any = None

    def _ensure(self) -> None:
        from backbone.kafka.topics import Topics, eager_compaction

        Topics(self.settings).ensure(GRIEVANCES_TOPIC, config=eager_compaction())

    def _apply(self, message: Any) -> None:
        key = (message.key() or b"").decode()
        try:
            case = None if message.value() is None else Case.from_json(json.loads(message.value()))
        except (ValueError, KeyError, TypeError, g.GrievanceError):
            log.warning("grievances: record at offset %s is no case; skipped", message.offset())
            return
        with self._lock:
            if case is None:
                self._cases.pop(key, None)
            else:
                self._cases[key] = case

    def cases(self) -> dict[str, Case]:
        """Every case as of now (the reader started and caught up on first use)."""
        from backbone.kafka.compacted import CompactedTopicReader

        with self._lock:
            reader = self._reader
        if reader is None:
            self._ensure()
            reader = CompactedTopicReader(self.settings, GRIEVANCES_TOPIC, self._apply, "grievances-feed")
            reader.start()
            reader.wait_caught_up(self.settings.kafka_timeout_s * 3)
            with self._lock:
                self._reader = reader
        elif not reader.alive:
            raise KafkaUnavailableError(f"grievances cannot be read: {reader.error or 'the reader stopped'}")
        with self._lock:
            return dict(self._cases)

    def save(self, case: Case, actor: str) -> Case:
        """Seal the case's newest step as an operator action, then publish the case (and hold it:
        a reader of this book sees its own write at once)."""
        from backbone.audit import operations

        step = case.grievance.steps[-1]
        operations.record(self.settings, operations.OperatorAction(
            GRIEVANCE_ACTION, actor, case.grievance.tracking_id, step.state, None,
            {"agency": case.grievance.agency, "deadline": case.grievance.deadline.isoformat(), "profile": case.grievance.profile.name,
             "note_sha256": hashlib.sha256(step.note.encode()).hexdigest()}))
        self._ensure()
        producer = Producer(self.settings.producer_config(**{"linger.ms": 0}))
        failures: list[str] = []
        producer.produce(GRIEVANCES_TOPIC, json.dumps(case.to_json()).encode(), case.grievance.tracking_id.encode(),
                         on_delivery=lambda error, _m: failures.append(error.str()) if error is not None else None)
        if producer.flush(self.settings.kafka_timeout_s) or failures:
            raise KafkaUnavailableError(f"grievance {case.grievance.tracking_id} was not acknowledged by {GRIEVANCES_TOPIC}; "
                                        "its step is in the trail: save it again")
        with self._lock:
            self._cases[case.grievance.tracking_id] = case
        return case

    def close(self) -> None:
        with self._lock:
            reader, self._reader = self._reader, None
        if reader is not None:
            reader.stop()


@dataclass(slots=True, frozen=True)
class AgencyStats:
    """What the public page shows per agency: no person, no text, no tracking id."""

    agency: str
    received: int
    open: int
    answered: int
    median_days_to_answer: float | None
    deadlines_missed: int


def agency_stats(cases: Iterable[Case], now: datetime) -> list[AgencyStats]:
    by_agency: dict[str, list[g.Grievance]] = {}
    for case in cases:
        by_agency.setdefault(case.grievance.agency, []).append(case.grievance)
    rows = []
    for agency, found in sorted(by_agency.items()):
        days = [(c.answered_at - c.received_at).total_seconds() / 86400 for c in found if c.answered_at is not None]
        rows.append(AgencyStats(agency, len(found), sum(1 for c in found if c.state in g.OPEN),
                                sum(1 for c in found if c.answered_at is not None),
                                round(statistics.median(days), 1) if days else None, sum(1 for c in found if g.breached(c, now))))
    return rows
