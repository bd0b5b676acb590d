"""The agency producer SDK: validate, fill headers, key, encode and send one agency's events.

    with AgencyProducer("welfare", settings) as producer:
        producer.send("welfare.benefit_claimed", record)
    print(producer.stats)

Per event the work is compiled up front: a validator per event type, an Avro encoder registered
once, a keyed hash for the topic key. Sending is asynchronous (librdkafka batches, idempotent,
acks=all); each acknowledgement or failure is counted in `stats` and handed to `on_delivery`, and
`close()` raises `DeliveryError` if any event was not acknowledged, so nothing is lost in silence.
"""

from __future__ import annotations

import os
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any

from confluent_kafka import KafkaError, KafkaException, Message, Producer

from backbone.errors import kafka_unavailable
from backbone.events.catalog import CONSENT_EVENT, Catalog, EventSchema, load_catalog
from backbone.events.encoder import CompiledEncoder, compile_encoder
from backbone.events.serde import Encoder, encoder_for, registry_client
from backbone.kafka.topics import CONSENT_TOPIC, Topics, consent_topic_config, raw_topic, subject_partition
from backbone.settings import Settings, get_settings
from producers.errors import DeliveryError, ProducerError, ProducerValidationError, QueueFullError
from producers.keys import SubjectKeys
from producers.validation import Validator, compile_validator

CONSENT_AGENCY = "consent"
POLL_EVERY = 1_000
_UUID_BATCH = 4_096


@dataclass(slots=True)
class ProducerStats:
    """Counts of one producer's events; `failed` includes events still undelivered at close."""

    sent: int = 0
    delivered: int = 0
    failed: int = 0
    errors: Counter[str] = field(default_factory=Counter)
    started: float = field(default_factory=time.monotonic)
    finished: float | None = None

    @property
    def in_flight(self) -> int:
        return self.sent - self.delivered - self.failed

    @property
    def elapsed_s(self) -> float:
        return (self.finished or time.monotonic()) - self.started

    @property
    def rate(self) -> float:
        """Acknowledged events per second since the producer started."""
        return self.delivered / self.elapsed_s if self.elapsed_s > 0 else 0.0

    def summary(self) -> str:
        text = f"sent {self.sent}, delivered {self.delivered}, failed {self.failed}"
        if self.errors:
            text += " (" + ", ".join(f"{reason}: {count}" for reason, count in self.errors.most_common(3)) + ")"
        return text


@dataclass(slots=True, frozen=True)
class Delivery:
    """The broker's answer for one event: where it was stored, or why it was not."""

    event_type: str
    event_id: str
    topic: str
    partition: int
    offset: int
    error: str | None

    @property
    def ok(self) -> bool:
        return self.error is None


DeliveryCallback = Callable[[Delivery], None]


@dataclass(slots=True)
class _Route:
    """Everything needed to send one event type, built once at start."""

    event_type: str
    topic: str
    validate: Validator
    encode: Encoder
    subject_field: str | None
    fast_encode: CompiledEncoder | None = None
    check_governance: Validator | None = None
    keyed_by_purpose: bool = False
    partitions: int = 0


class _EventIds:
    """Random UUID4 strings, drawn from the OS in batches (uuid.uuid4() per event is slower)."""

    __slots__ = ("_pool",)

    def __init__(self) -> None:
        self._pool: list[str] = []

    def __call__(self) -> str:
        if not self._pool:
            data = bytearray(os.urandom(16 * _UUID_BATCH))
            for offset in range(0, len(data), 16):
                data[offset + 6] = (data[offset + 6] & 0x0F) | 0x40  # version 4
                data[offset + 8] = (data[offset + 8] & 0x3F) | 0x80  # RFC 4122 variant
            text = data.hex()
            self._pool = [
                f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:32]}"
                for h in (text[i:i + 32] for i in range(0, len(text), 32))
            ]
        return self._pool.pop()


def _reason(error: KafkaError) -> str:
    return error.name() or error.str()


class AgencyProducer:
    """Sends one agency's events (event types `<agency>.*` in the catalog) to `raw.<event_type>`.

    On start it checks the broker answers within `settings.kafka_timeout_s`, creates missing
    topics, and registers each event schema under `<topic>-value`. `send` validates before
    anything is queued: a bad event raises `ProducerValidationError` naming event type and field.
    """

    def __init__(
        self,
        agency: str,
        settings: Settings | None = None,
        catalog: Catalog | None = None,
        on_delivery: DeliveryCallback | None = None,
    ) -> None:
        self.agency = agency
        self.settings = settings or get_settings()
        self.catalog = catalog or load_catalog(self.settings.schemas_dir)
        self.on_delivery = on_delivery
        self.stats = ProducerStats()
        schemas = {name: schema for name, schema in self.catalog.events.items() if schema.provider == agency}
        if not schemas:
            agencies = ", ".join(sorted({schema.provider for schema in self.catalog.events.values()}))
            raise ProducerError(f"agency {agency!r} publishes no event type in the catalog; agencies: {agencies}")
        self._keys = SubjectKeys.from_settings(self.settings)
        self._event_id = _EventIds()
        self._closed = False
        self._since_poll = 0
        self._producer = Producer(self.settings.producer_config(**{"partitioner": "consistent_random"}))
        try:
            self._check_reachable()
            self._routes = self._build_routes(schemas)
        except BaseException:
            self._producer.purge()
            raise

    # -- start-up -----------------------------------------------------------------------------

    def _check_reachable(self) -> None:
        try:
            self._producer.list_topics(timeout=self.settings.kafka_timeout_s)
        except KafkaException as exc:
            error = exc.args[0] if exc.args else None
            detail = error.str() if isinstance(error, KafkaError) else str(exc)
            raise kafka_unavailable(self.settings.kafka_bootstrap, self.settings.kafka_timeout_s, detail) from None

    def _topic_for(self, event_type: str) -> str:
        return CONSENT_TOPIC if event_type == CONSENT_EVENT else raw_topic(event_type)

    def _build_routes(self, schemas: dict[str, EventSchema]) -> dict[str, _Route]:
        topics = Topics(self.settings)
        registry = registry_client(self.settings)
        routes = {}
        for event_type, schema in schemas.items():
            topic = self._topic_for(event_type)
            consent = event_type == CONSENT_EVENT
            topics.ensure(topic, config=consent_topic_config() if consent else None)
            vocabulary_fields = ("purpose",) if consent else ()
            validator = compile_validator(schema, self.catalog.purposes, vocabulary_fields)
            encoder = encoder_for(registry, f"{topic}-value", schema.avro)
            routes[event_type] = _Route(
                event_type, topic, validator, encoder, schema.subject_field, keyed_by_purpose=consent,
                fast_encode=compile_encoder(schema.avro, encoder.schema_id),
                check_governance=compile_validator(schema, self.catalog.purposes, vocabulary_fields, check_types=False),
            )
        metadata = self._producer.list_topics(timeout=self.settings.kafka_timeout_s)
        for route in routes.values():
            meta = metadata.topics.get(route.topic)
            route.partitions = len(meta.partitions) if meta is not None else 0
            if route.keyed_by_purpose and not route.partitions:
                raise ProducerError(f"topic {route.topic} has no partitions yet; retry in a moment")
        return routes

    # -- sending ------------------------------------------------------------------------------

    def subject_key(self, subject_id: str) -> bytes:
        """The topic key of a data subject (keyed hash; never the identifier)."""
        return self._keys(subject_id)

    def send(self, event_type: str, record: dict[str, Any]) -> str:
        """Validate `record` and queue it for `raw.<event_type>`; returns its event id.

        Missing `event_id`, `occurred_at` (now), `provider` and `event_type` are filled in place.
        Raises `ProducerValidationError` (nothing sent) when the event does not fit.
        """
        route = self._routes.get(event_type)
        if route is None:
            raise self._refusal(event_type)
        if record.get("event_id") is None:
            record["event_id"] = self._event_id()
        if record.get("occurred_at") is None:
            record["occurred_at"] = time.time_ns() // 1_000_000
        if record.setdefault("provider", self.agency) != self.agency:
            raise ProducerValidationError(event_type, "provider", f"must be this producer's agency, {self.agency}")
        if record.setdefault("event_type", event_type) != event_type:
            raise ProducerValidationError(event_type, "event_type", "does not match the event type it is sent as")
        value = self._encode(route, record)
        subject = record[route.subject_field] if route.subject_field else None
        key = self._keys(subject) if subject else None
        if route.keyed_by_purpose:
            # One key per (subject, purpose) so compaction keeps every purpose's latest state, on the
            # partition the subject key alone maps to, beside the subject's events.
            self._produce(route, value, key + b":" + record["purpose"].encode(),  # type: ignore[operator]
                          subject_partition(key, route.partitions), record["event_id"])  # type: ignore[arg-type]
        else:
            self._produce(route, value, key, -1, record["event_id"])
        return record["event_id"]

    @staticmethod
    def _encode(route: _Route, record: dict[str, Any]) -> bytes:
        """Validate and encode. Fast path: the compiled strict encoder, then the governance checks;
        if it refuses the record, the precise validator names the field (or, for a valid but
        unusual value such as an int subclass, the serde encoder writes it)."""
        if route.fast_encode is not None:
            try:
                value = route.fast_encode(record)
            except Exception:  # noqa: BLE001 - any refusal sends the record down the precise path
                pass
            else:
                problem = route.check_governance(record)  # type: ignore[misc]
                if problem is not None:
                    raise ProducerValidationError(route.event_type, *problem)
                return value
        problem = route.validate(record)
        if problem is not None:
            raise ProducerValidationError(route.event_type, *problem)
        return route.encode(record)

    def _refusal(self, event_type: str) -> ProducerValidationError:
        if event_type in self.catalog.events:
            owner = self.catalog.events[event_type].provider
            return ProducerValidationError(
                event_type, "", f"belongs to agency {owner}; this producer publishes for {self.agency} only")
        known = ", ".join(sorted(self._routes))
        return ProducerValidationError(event_type, "", f"unknown event type; this producer publishes {known}")

    def _produce(self, route: _Route, value: bytes, key: bytes | None, partition: int, event_id: str) -> None:
        if self._closed:
            raise ProducerError("producer is closed")
        if self.on_delivery is None:
            callback = self._count
        else:
            report, event_type = self.on_delivery, route.event_type

            def callback(error: KafkaError | None, message: Message) -> None:
                self._count(error, message)
                report(Delivery(event_type, event_id, message.topic(), message.partition(),
                                message.offset(), None if error is None else _reason(error)))
        try:
            self._producer.produce(route.topic, value, key, partition, on_delivery=callback)
        except BufferError:
            self._produce_when_room(route.topic, value, key, partition, callback)
        except KafkaException as exc:
            raise ProducerError(f"{route.event_type}: could not queue the event ({exc.args[0].str()})") from None
        self.stats.sent += 1
        self._since_poll += 1
        if self._since_poll >= POLL_EVERY:
            self._since_poll = 0
            self._producer.poll(0)

    def _produce_when_room(self, topic: str, value: bytes, key: bytes | None, partition: int,
                           callback: Callable[[KafkaError | None, Message], None]) -> None:
        """The local queue is full: serve delivery reports until there is room, up to the timeout."""
        deadline = time.monotonic() + self.settings.kafka_timeout_s
        while True:
            self._producer.poll(0.05)
            try:
                self._producer.produce(topic, value, key, partition, on_delivery=callback)
                return
            except BufferError:
                if time.monotonic() >= deadline:
                    raise QueueFullError(
                        f"the send queue stayed full for {self.settings.kafka_timeout_s:g}s with "
                        f"{self.stats.in_flight} events unacknowledged: Kafka at {self.settings.kafka_bootstrap} "
                        "is not taking events"
                    ) from None

    def _count(self, error: KafkaError | None, message: Message) -> None:
        if error is None:
            self.stats.delivered += 1
        else:
            self.stats.failed += 1
            self.stats.errors[_reason(error)] += 1

    def poll(self, timeout: float = 0.0) -> int:
        """Serve delivery reports (`send` does this every 1,000 events on its own)."""
        return self._producer.poll(timeout)

    # -- closing ------------------------------------------------------------------------------

    def flush(self, timeout: float | None = None) -> int:
        """Wait up to `timeout` (default `kafka_timeout_s`) for acknowledgements; returns events still pending."""
        return self._producer.flush(self.settings.kafka_timeout_s if timeout is None else timeout)

    def close(self, timeout: float | None = None, *, raise_on_failure: bool = True) -> ProducerStats:
        """Flush, give up on events still pending after `timeout` (counted as failed, reported to
        `on_delivery`), and raise `DeliveryError` if any event was not acknowledged."""
        if self._closed:
            return self.stats
        remaining = self.flush(timeout)
        if remaining:
            # Purged events get their delivery report (error _PURGE_QUEUE/_PURGE_INFLIGHT): counted, not lost.
            self._producer.purge()
            self._producer.flush(0)
            leftover = self.stats.in_flight
            if leftover > 0:
                self.stats.failed += leftover
                self.stats.errors["undelivered at close"] += leftover
        self._closed = True
        self.stats.finished = time.monotonic()
        if raise_on_failure and self.stats.failed:
            raise DeliveryError(
                f"{self.agency}: {self.stats.failed} of {self.stats.sent} events were not acknowledged by "
                f"Kafka at {self.settings.kafka_bootstrap} ({self.stats.summary()})", self.stats)
        return self.stats

    def __enter__(self) -> AgencyProducer:
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None) -> None:
        # With an exception already on its way, still flush and count, but let that exception through.
        self.close(raise_on_failure=kind is None)


class ConsentPublisher(AgencyProducer):
    """Publishes `consent.changed` to the compacted `consent.changes` topic.

    Keys are `<subject key>:<purpose>` (so compaction keeps each purpose's latest change) and the
    partition is the one the subject key maps to, the same as the subject's events.
    """

    GOVERNANCE = {"lawful_basis": "legal_obligation", "purposes": ["legal_compliance"], "consent_id": None}

    def __init__(self, settings: Settings | None = None, catalog: Catalog | None = None,
                 on_delivery: DeliveryCallback | None = None) -> None:
        super().__init__(CONSENT_AGENCY, settings, catalog, on_delivery)

    def grant(self, subject: str, purpose: str, channel: str = "web", at: int | None = None) -> str:
        """Record that `subject` consents to `purpose`; returns the event id."""
        return self.change(subject, purpose, "granted", channel, at)

    def withdraw(self, subject: str, purpose: str, channel: str = "web", at: int | None = None) -> str:
        """Record that `subject` withdrew consent for `purpose`; returns the event id."""
        return self.change(subject, purpose, "withdrawn", channel, at)

    def change(self, subject: str, purpose: str, status: str, channel: str = "web", at: int | None = None) -> str:
        now = time.time_ns() // 1_000_000
        record = {
            "governance": {**self.GOVERNANCE, "purposes": list(self.GOVERNANCE["purposes"])},
            "subject_national_id": subject,
            "purpose": purpose,
            "status": status,
            "at": now if at is None else at,
            "occurred_at": now,
            "channel": channel,
        }
        return self.send(CONSENT_EVENT, record)
