"""Replay: what two texts of an agreement would release from the last raw events, decided in this
process by the real decoder and the real policy engine. Nothing is published.

`replay(old, new, ...)` decides the given events under each text (each in a `PolicyEngine` of its
own) and counts, per recipient and event type, the records each would release and the fields they
would carry. It also judges the diff's selection terms (condition, purposes, lawful basis): the new
text against itself with the old value of that one term, so a term's verdict is its own effect.

Each text is replayed as if in force (status active, at a moment inside its validity period): the
diff's table compares status and period; the replay shows what the terms release. Consent-based
texts are replayed as if every subject consented (`AssumedConsent`), the upper bound of what a text
can release: consent is the subjects' choice, no part of the agreement change. The figures hold
counts and field names only, never a value.

`replay_from_kafka` is the thin I/O around it: the last N records of each `raw.<event_type>`, read
with an assigned consumer (no group joined, nothing committed) and decoded by the real serde.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from confluent_kafka import Consumer, KafkaError, KafkaException, TopicPartition

from backbone.errors import KafkaUnavailableError, RegistryError, SerdeError
from backbone.events.catalog import Catalog
from backbone.events.serde import Decoder, registry_client
from backbone.kafka.topics import raw_topic
from backbone.keys.keyring import Keyring
from backbone.policy.agreements import Agreement, Charter
from backbone.policy.decision import ConsentRecord, ConsentState, Decision
from backbone.policy.diff import SELECTION_TERMS, Change, Verdict
from backbone.policy.engine import PolicyEngine
from backbone.settings import Settings

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


class AssumedConsent:
    """Every subject consented to every purpose: a consent-based text releases all it can."""

    _granted = ConsentRecord("granted", _EPOCH)

    def get(self, subject: str, purpose: str) -> ConsentRecord:
        return self._granted


@dataclass(slots=True, frozen=True)
class Figures:
    """One recipient and event type: of `events` replayed, what each text releases."""

    recipient: str
    event_type: str
    events: int
    released_old: int
    released_new: int
    newly_released: int  # released under the new text, not under the old
    no_longer_released: int
    fields_old: tuple[str, ...]
    fields_new: tuple[str, ...]

    @property
    def fields_gained(self) -> tuple[str, ...]:
        return tuple(name for name in self.fields_new if name not in self.fields_old)

    @property
    def fields_lost(self) -> tuple[str, ...]:
        return tuple(name for name in self.fields_old if name not in self.fields_new)

    def to_json(self) -> dict[str, Any]:
        return {
            "recipient": self.recipient, "event_type": self.event_type, "events": self.events,
            "released_old": self.released_old, "released_new": self.released_new,
            "more": self.newly_released, "fewer": self.no_longer_released,
            "fields_old": list(self.fields_old), "fields_new": list(self.fields_new),
            "fields_gained": list(self.fields_gained), "fields_lost": list(self.fields_lost),
        }


@dataclass(frozen=True)
class Replay:
    """The figures of one replay and its verdicts on selection terms, keyed (recipient, event type, kind)."""

    requested: int
    events: Mapping[str, int]
    skipped: int
    figures: tuple[Figures, ...]
    verdicts: Mapping[tuple[str, str, str], Verdict] = field(default_factory=dict)
    consent: str = "assumed granted for every subject"

    def to_json(self) -> dict[str, Any]:
        return {
            "requested": self.requested,
            "events": dict(sorted(self.events.items())),
            "skipped": self.skipped,
            "consent": self.consent,
            "figures": [figures.to_json() for figures in self.figures],
            "verdicts": [{"recipient": r, "event_type": t, "kind": k, "events": v.events,
                          "newly_selected": v.newly_selected, "deselected": v.deselected}
                         for (r, t, k), v in sorted(self.verdicts.items())],
        }


def in_force(agreement: Agreement, now: datetime) -> tuple[Agreement, datetime]:
    """The text made active, and a moment inside its validity period (`now` if it is inside)."""
    moment = now if agreement.valid_at(now) else agreement.valid_from
    return agreement.model_copy(update={"status": "active"}), moment


class _Side:
    """One text in an engine of its own, deciding at a moment inside its period."""

    def __init__(self, agreement: Agreement | None, catalog: Catalog, keyring: Keyring, now: datetime) -> None:
        self.engine: PolicyEngine | None = None
        self.moment = now
        if agreement is not None:
            active, self.moment = in_force(agreement, now)
            self.engine = PolicyEngine(Charter(catalog, (active,)), keyring)

    def decide(self, event: dict, consent: ConsentState) -> dict[str, Decision]:
        if self.engine is None:
            return {}
        return {decision.recipient: decision for decision in self.engine.decide(event, consent, self.moment)}


def replay(old: Agreement | None, new: Agreement | None, catalog: Catalog, keyring: Keyring,
           events: Mapping[str, Sequence[dict]], changes: Iterable[Change] = (), consent: ConsentState | None = None,
           now: datetime | None = None, skipped: int = 0, requested: int = 0) -> Replay:
    """Decide `events` (decoded, by event type) under `old` and `new`; judge the selection terms
    among `changes` (the diff's rows awaiting a replay)."""
    consent = consent or AssumedConsent()
    now = now or datetime.now(UTC)
    sides = _Side(old, catalog, keyring, now), _Side(new, catalog, keyring, now)
    pending = {(c.recipient, c.event_type, c.kind) for c in changes if c.judged_by_replay}
    hybrids: dict[str, _Side] = {}
    if old is not None and new is not None:
        for kind in sorted({kind for _, _, kind in pending}):
            attribute = SELECTION_TERMS[kind]
            hybrids[kind] = _Side(new.model_copy(update={attribute: getattr(old, attribute)}), catalog, keyring, now)
    pairs = sorted({(a.recipient, t) for a in (old, new) if a is not None for t in a.event_types})
    counts = {pair: [0, 0, 0, 0] for pair in pairs}  # released old, released new, newly, no longer
    fields: dict[tuple[str, str], tuple[dict[str, None], dict[str, None]]] = {pair: ({}, {}) for pair in pairs}
    selected = {key: [0, 0] for key in pending}  # newly selected, deselected
    for event_type, batch in events.items():
        for event in batch:
            before, after = (side.decide(event, consent) for side in sides)
            for recipient, type_ in pairs:
                if type_ != event_type:
                    continue
                was, now_ = _permit(before.get(recipient)), _permit(after.get(recipient))
                tally = counts[(recipient, type_)]
                tally[0] += was is not None
                tally[1] += now_ is not None
                tally[2] += now_ is not None and was is None
                tally[3] += was is not None and now_ is None
                for names, decision in zip(fields[(recipient, type_)], (was, now_)):
                    if decision is not None:
                        names.update(dict.fromkeys(decision.released_fields))
            for kind, hybrid in hybrids.items():
                key = (new.recipient, event_type, kind)  # type: ignore[union-attr]
                if key not in selected:
                    continue
                released = _permit(after.get(key[0])) is not None
                held = _permit(hybrid.decide(event, consent).get(key[0])) is not None
                selected[key][0] += released and not held
                selected[key][1] += held and not released
    replayed = {event_type: len(batch) for event_type, batch in events.items()}
    figures = tuple(
        Figures(recipient, event_type, replayed.get(event_type, 0), *counts[(recipient, event_type)],
                tuple(fields[(recipient, event_type)][0]), tuple(fields[(recipient, event_type)][1]))
        for recipient, event_type in pairs
    )
    verdicts = {key: Verdict(replayed.get(key[1], 0), *tally) for key, tally in selected.items()}
    return Replay(requested, replayed, skipped, figures, verdicts)


def _permit(decision: Decision | None) -> Decision | None:
    return decision if decision is not None and decision.permitted else None


def last_records(settings: Settings, topic: str, count: int, timeout: float | None = None) -> list[bytes]:
    """The values of the last `count` records of `topic` (by record time), read to end-of-partition.

    Starts each partition `count` before its high watermark, which some brokers report late: then
    more is read and the newest `count` kept. An absent topic has no records.
    """
    if count <= 0:
        return []
    consumer = Consumer(settings.consumer_config(f"reader-{uuid.uuid4().hex}", **{"enable.partition.eof": True}))
    try:
        metadata = consumer.list_topics(topic, timeout=settings.kafka_timeout_s)
        if topic not in metadata.topics or metadata.topics[topic].error is not None:
            return []
        starts = []
        for partition in sorted(metadata.topics[topic].partitions):
            low, high = consumer.get_watermark_offsets(TopicPartition(topic, partition), timeout=settings.kafka_timeout_s)
            starts.append(TopicPartition(topic, partition, max(low, high - count)))
        consumer.assign(starts)
        found: list[tuple[int, int, int, bytes]] = []
        ended: set[int] = set()
        deadline = time.monotonic() + (timeout or settings.kafka_timeout_s * 2)
        while len(ended) < len(starts):
            if time.monotonic() > deadline:
                raise KafkaUnavailableError(f"could not read {topic} to its end within {timeout or settings.kafka_timeout_s * 2:g}s")
            for message in consumer.consume(1000, 0.2):
                error = message.error()
                if error is None:
                    found.append((message.timestamp()[1], message.partition(), message.offset(), message.value() or b""))
                elif error.code() == KafkaError._PARTITION_EOF:
                    ended.add(message.partition())
                elif error.fatal() or error.code() == KafkaError.UNKNOWN_TOPIC_OR_PART:
                    raise KafkaUnavailableError(f"{topic} cannot be read ({error.str()})")
        return [value for *_, value in sorted(found)[-count:]]
    except KafkaException as exc:
        raise KafkaUnavailableError(f"cannot read {topic} at {settings.kafka_bootstrap}: {exc}") from None
    finally:
        consumer.close()


def replay_from_kafka(settings: Settings, old: Agreement | None, new: Agreement | None, catalog: Catalog, count: int,
                      changes: Iterable[Change] = (), keyring: Keyring | None = None,
                      consent: ConsentState | None = None, now: datetime | None = None) -> Replay:
    """`replay` over the last `count` raw events of each event type either text shares, read from
    `raw.<event_type>` and decoded through the schema registry. Decisions and released fields do not
    depend on key values, so without `keyring` the replay pseudonymises under throwaway keys made for
    it: an operator, who holds no domain key, replays too. Records that do not decode, or are of
    another type, are skipped."""
    keyring = keyring or Keyring.for_charter(Charter(catalog, tuple(a for a in (old, new) if a is not None)))
    decode = Decoder(registry_client(settings))
    event_types = sorted({t for a in (old, new) if a is not None for t in a.event_types})
    events: dict[str, list[dict]] = {}
    skipped = 0
    for event_type in event_types:
        events[event_type] = []
        for value in last_records(settings, raw_topic(event_type), count):
            try:
                record = decode(value).record
            except RegistryError:
                raise  # the registry is down: no verdict rather than a partial one
            except SerdeError:
                skipped += 1
                continue
            if record.get("event_type") != event_type:
                skipped += 1
                continue
            events[event_type].append(record)
    return replay(old, new, catalog, keyring, events, changes, consent, now, skipped, count)
