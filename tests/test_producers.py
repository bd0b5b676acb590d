"""The agency producer SDK against the real embedded broker and schema registry: events land on
their topics and decode with confluent-kafka's AvroDeserializer, keys hold no identifier, bad events
never leave the process, and an unreachable broker or lost events are reported, not hidden."""

from __future__ import annotations

import copy
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from confluent_kafka import Consumer, Message, TopicPartition
from confluent_kafka.schema_registry import SchemaRegistryClient
from confluent_kafka.schema_registry.avro import AvroDeserializer
from confluent_kafka.serialization import MessageField, SerializationContext

from backbone.errors import KafkaUnavailableError
from backbone.kafka.topics import CONSENT_TOPIC, raw_topic
from backbone.settings import PROJECT_ROOT, Settings, load_settings
from backbone.stack.embedded import EmbeddedBroker, free_port
from producers import (
    AgencyProducer,
    ConsentPublisher,
    Delivery,
    DeliveryError,
    ProducerValidationError,
)
from producers.synthetic import generate

pytestmark = pytest.mark.integration


def synthetic(event_type: str, count: int, seed: int = 1) -> list[dict]:
    """`count` synthetic events of one type (fresh dicts: the SDK fills headers in place)."""
    agency = event_type.split(".", 1)[0]
    return [record for kind, record in generate(seed=seed, population=400, events=count * 4, agencies=[agency])
            if kind == event_type][:count]


def read_back(settings: Settings, deliveries: list[Delivery]) -> list[Message]:
    """The stored messages at the offsets the broker acknowledged (partitions assigned, no group)."""
    wanted = {(d.topic, d.partition, d.offset) for d in deliveries}
    consumer = Consumer(settings.consumer_config(None))
    first: dict[tuple[str, int], int] = {}
    for topic, partition, offset in wanted:
        first[(topic, partition)] = min(offset, first.get((topic, partition), offset))
    consumer.assign([TopicPartition(t, p, o) for (t, p), o in first.items()])
    found: dict[tuple[str, int, int], Message] = {}
    deadline = time.monotonic() + 20
    try:
        while len(found) < len(wanted) and time.monotonic() < deadline:
            for message in consumer.consume(500, timeout=0.5):
                if message.error() is None:
                    place = (message.topic(), message.partition(), message.offset())
                    if place in wanted:
                        found[place] = message
    finally:
        consumer.close()
    assert len(found) == len(wanted), "not every acknowledged event could be read back"
    return [found[(d.topic, d.partition, d.offset)] for d in deliveries]


def messages_by_event_id(settings: Settings, deliveries: list[Delivery]) -> dict[str, Message]:
    return {d.event_id: m for d, m in zip(deliveries, read_back(settings, deliveries), strict=True)}


def read_partition(settings: Settings, topic: str, partition: int, until_offset: int) -> list[Message]:
    consumer = Consumer(settings.consumer_config(None))
    consumer.assign([TopicPartition(topic, partition, 0)])
    messages: list[Message] = []
    deadline = time.monotonic() + 20
    try:
        while time.monotonic() < deadline and (not messages or messages[-1].offset() < until_offset):
            messages += [m for m in consumer.consume(500, timeout=0.5) if m.error() is None]
    finally:
        consumer.close()
    return messages


def collecting() -> tuple[list[Delivery], Callable[[Delivery], None]]:
    deliveries: list[Delivery] = []
    return deliveries, deliveries.append


def test_events_land_on_their_topics_and_decode_with_confluent_avro_deserializer(
    registry_settings: Settings, schema_registry_url: str
) -> None:
    deliveries, on_delivery = collecting()
    sent = {"welfare.benefit_claimed": synthetic("welfare.benefit_claimed", 20),
            "tax.income_declared": synthetic("tax.income_declared", 20)}
    originals = {t: copy.deepcopy(records) for t, records in sent.items()}
    for agency, event_type in (("welfare", "welfare.benefit_claimed"), ("tax", "tax.income_declared")):
        with AgencyProducer(agency, registry_settings, on_delivery=on_delivery) as producer:
            for record in sent[event_type]:
                producer.send(event_type, record)
        assert producer.stats.delivered == producer.stats.sent == 20
        assert producer.stats.failed == 0
    assert all(d.ok for d in deliveries) and len(deliveries) == 40

    deserialize = AvroDeserializer(SchemaRegistryClient({"url": schema_registry_url}))
    decoded = {}
    for delivery, message in zip(deliveries, read_back(registry_settings, deliveries), strict=True):
        assert message.topic() == raw_topic(delivery.event_type)
        value = deserialize(message.value(), SerializationContext(message.topic(), MessageField.VALUE))
        decoded[str(value["event_id"])] = value
    for event_type, records in originals.items():
        for record in records:
            value = decoded[record["event_id"]]
            assert value["event_type"] == event_type
            assert value["national_id"] == record["national_id"]
            assert value["governance"] == record["governance"]
            assert value["period"] == record["period"]


def test_missing_headers_are_filled_and_the_event_id_returned(registry_settings: Settings) -> None:
    record = synthetic("registry.address_changed", 1)[0]
    for header in ("event_id", "occurred_at", "provider", "event_type"):
        del record[header]
    before = int(time.time() * 1000)
    with AgencyProducer("registry", registry_settings) as producer:
        event_id = producer.send("registry.address_changed", record)
    assert record["event_id"] == event_id and len(event_id) == 36 and event_id[14] == "4"
    assert record["provider"] == "registry" and record["event_type"] == "registry.address_changed"
    assert before <= record["occurred_at"] <= int(time.time() * 1000)
    assert producer.stats.delivered == 1


def test_keys_hold_no_identifier_and_one_subject_always_gets_one_key(registry_settings: Settings) -> None:
    deliveries, on_delivery = collecting()
    claims = synthetic("welfare.benefit_claimed", 30)
    person = claims[0]["national_id"]
    with AgencyProducer("welfare", registry_settings, on_delivery=on_delivery) as welfare:
        for record in claims:
            welfare.send("welfare.benefit_claimed", record)
        welfare.send("welfare.benefit_claimed", {**copy.deepcopy(claims[0]), "event_id": None, "period": "2030-01"})
    with AgencyProducer("tax", registry_settings) as tax:
        assert tax.subject_key(person) == welfare.subject_key(person)
    stored = messages_by_event_id(registry_settings, deliveries)
    keys_by_person: dict[str, set[bytes]] = {}
    for record in claims:
        message = stored[record["event_id"]]
        key = message.key()
        assert record["national_id"].encode() not in key
        assert record["name"].encode() not in key
        keys_by_person.setdefault(record["national_id"], set()).add(key)
    assert all(len(keys) == 1 for keys in keys_by_person.values())
    assert len({next(iter(keys)) for keys in keys_by_person.values()}) == len(keys_by_person)
    again = next(m for event_id, m in stored.items() if event_id not in {r["event_id"] for r in claims})
    assert again.key() == stored[claims[0]["event_id"]].key()
    assert again.partition() == stored[claims[0]["event_id"]].partition()  # same subject, same partition: order kept
    for message in stored.values():
        assert all(person.encode() not in value for _, value in (message.headers() or []))


def _drop(field: str) -> Callable[[dict], None]:
    return lambda record: record.pop(field)


BAD_EVENTS: dict[str, tuple[Callable[[dict], None], str]] = {
    "missing field": (_drop("postcode"), "postcode"),
    "wrong type": (lambda r: r.update(household_size="three"), "household_size"),
    "float for an int": (lambda r: r.update(household_size=2.5), "household_size"),
    "unknown enum symbol": (lambda r: r.update(benefit_type="holiday_pay"), "benefit_type"),
    "unknown purpose": (lambda r: r["governance"]["purposes"].append("marketing"), "governance.purposes[3]"),
    "no purposes": (lambda r: r["governance"].update(purposes=[]), "governance.purposes"),
    "missing governance": (_drop("governance"), "governance"),
    "invalid lawful basis": (lambda r: r["governance"].update(lawful_basis="because"), "governance.lawful_basis"),
    "consent basis without consent id": (lambda r: r["governance"].update(lawful_basis="consent"), "governance.consent_id"),
    "unknown field": (lambda r: r.update(social_security_number="x"), "social_security_number"),
    "empty subject": (lambda r: r.update(national_id=""), "national_id"),
}


def test_invalid_events_raise_naming_event_type_and_field_and_nothing_reaches_the_topic(
    registry_settings: Settings,
) -> None:
    template = synthetic("welfare.benefit_claimed", 1)[0]
    refused_ids = []
    deliveries, on_delivery = collecting()
    with AgencyProducer("welfare", registry_settings, on_delivery=on_delivery) as producer:
        for case, (spoil, field) in BAD_EVENTS.items():
            record = copy.deepcopy(template)
            record["event_id"] = f"{len(refused_ids):08d}-0000-4000-8000-000000000000"
            refused_ids.append(record["event_id"])
            spoil(record)
            with pytest.raises(ProducerValidationError) as raised:
                producer.send("welfare.benefit_claimed", record)
            message = str(raised.value)
            assert raised.value.field == field, case
            assert "welfare.benefit_claimed" in message and field in message, case
            assert template["national_id"] not in message and template["name"] not in message, case
        assert producer.stats.sent == 0
        # A valid event of the same subject goes to the same partition: read up to it.
        producer.send("welfare.benefit_claimed", {**copy.deepcopy(template), "event_id": None})
    (last,) = deliveries
    stored = read_partition(registry_settings, last.topic, last.partition, last.offset)
    deserialize = AvroDeserializer(SchemaRegistryClient({"url": registry_settings.schema_registry_url}))
    stored_ids = {str(deserialize(m.value(), SerializationContext(m.topic(), MessageField.VALUE))["event_id"]) for m in stored}
    assert not stored_ids & set(refused_ids)


def test_an_event_type_of_another_agency_is_refused(registry_settings: Settings) -> None:
    with AgencyProducer("welfare", registry_settings) as producer:
        with pytest.raises(ProducerValidationError, match="belongs to agency tax"):
            producer.send("tax.income_declared", synthetic("tax.income_declared", 1)[0])
        with pytest.raises(ProducerValidationError, match="unknown event type"):
            producer.send("welfare.holiday_booked", {})
        with pytest.raises(ProducerValidationError, match="provider"):
            producer.send("welfare.benefit_claimed", {**synthetic("welfare.benefit_claimed", 1)[0], "provider": "tax"})
    assert producer.stats.sent == 0


def test_an_unreachable_broker_is_a_clear_error_within_the_timeout(tmp_path: Path) -> None:
    settings = load_settings(kafka_bootstrap=f"127.0.0.1:{free_port()}", kafka_timeout_s=2, data_dir=tmp_path)
    started = time.monotonic()
    with pytest.raises(KafkaUnavailableError, match="did not answer within 2s"):
        AgencyProducer("welfare", settings)
    assert time.monotonic() - started < 6


def test_consent_changes_are_keyed_per_purpose_on_the_partition_of_the_subjects_events(
    registry_settings: Settings, schema_registry_url: str
) -> None:
    deliveries, on_delivery = collecting()
    claims = synthetic("welfare.benefit_claimed", 12, seed=5)
    with AgencyProducer("welfare", registry_settings, on_delivery=on_delivery) as welfare:
        for record in claims:
            welfare.send("welfare.benefit_claimed", record)
    with ConsentPublisher(registry_settings, on_delivery=on_delivery) as consent:
        for record in claims:
            consent.withdraw(record["national_id"], "scientific_research")
            consent.grant(record["national_id"], "personalised_service")
        with pytest.raises(ProducerValidationError, match="purpose"):
            consent.grant(claims[0]["national_id"], "marketing")
    assert len(deliveries) == 36 and all(d.ok for d in deliveries)
    consent_ids = {d.event_id for d in deliveries if d.event_type == "consent.changed"}
    assert {d.topic for d in deliveries if d.event_id in consent_ids} == {CONSENT_TOPIC}
    stored = messages_by_event_id(registry_settings, deliveries)
    deserialize = AvroDeserializer(SchemaRegistryClient({"url": schema_registry_url}))
    partition_of = {record["national_id"]: stored[record["event_id"]].partition() for record in claims}
    event_key = {record["national_id"]: stored[record["event_id"]].key() for record in claims}
    assert len(set(partition_of.values())) > 1
    for message in (stored[event_id] for event_id in consent_ids):
        value = deserialize(message.value(), SerializationContext(CONSENT_TOPIC, MessageField.VALUE))
        subject = value["subject_national_id"]
        assert message.partition() == partition_of[subject]
        assert message.key() == event_key[subject] + b":" + value["purpose"].encode()
        assert subject.encode() not in message.key()


def test_events_the_broker_never_acknowledges_are_counted_reported_and_raised(
    registry_settings: Settings, tmp_path: Path
) -> None:
    deliveries, on_delivery = collecting()
    with EmbeddedBroker(tmp_path / "broker") as broker:
        settings = registry_settings.model_copy(update={"kafka_bootstrap": broker.bootstrap, "kafka_timeout_s": 2.0})
        producer = AgencyProducer("welfare", settings, on_delivery=on_delivery)
        producer.send("welfare.benefit_claimed", synthetic("welfare.benefit_claimed", 1)[0])
        assert producer.flush() == 0
    for record in synthetic("welfare.benefit_claimed", 10, seed=2):
        producer.send("welfare.benefit_claimed", record)
    started = time.monotonic()
    with pytest.raises(DeliveryError, match="10 of 11 events were not acknowledged") as raised:
        producer.close(timeout=1)
    assert time.monotonic() - started < 5
    assert raised.value.stats.failed == 10 and raised.value.stats.delivered == 1
    assert len(deliveries) == 11 and sum(not d.ok for d in deliveries) == 10


def test_compiled_encoder_writes_the_same_bytes_as_the_serde_encoder() -> None:
    from backbone.events.catalog import load_catalog
    from backbone.events.encoder import compile_encoder
    from backbone.events.serde import Encoder

    catalog = load_catalog(PROJECT_ROOT / "schemas")
    compiled = {name: compile_encoder(schema.avro, 42) for name, schema in catalog.events.items()}
    reference = {name: Encoder(42, schema.parsed) for name, schema in catalog.events.items()}
    assert all(encoder is not None for encoder in compiled.values())
    seen = set()
    for event_type, record in generate(seed=13, population=2_000, events=20_000, fraud_rate=0.02):
        assert compiled[event_type](record) == reference[event_type](record), event_type
        seen.add(event_type)
    assert seen == set(catalog.events)
