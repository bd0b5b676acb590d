"""The Confluent wire-format serde against the real registry, interoperating with confluent-kafka."""

from __future__ import annotations

import datetime as dt
import uuid
from typing import Any

import pytest
from confluent_kafka.schema_registry import Schema, SchemaReference, SchemaRegistryClient
from confluent_kafka.schema_registry.avro import AvroDeserializer, AvroSerializer
from confluent_kafka.serialization import MessageField, SerializationContext

from backbone.errors import (
    BadMagicByte,
    CorruptMessage,
    EncodeError,
    RegistryUnavailable,
    SerdeError,
    TruncatedMessage,
    UnknownSchemaId,
)
from backbone.events.catalog import Catalog, default_catalog
from backbone.events.decoder import compile_decoder
from backbone.events.serde import HEADER_SIZE, MAGIC, Decoder, Encoder, RegistrySchemas, encoder_for, register
from backbone.kafka.topics import raw_topic

SECRET = "SECRET-VALUE-7731"
CATALOG: Catalog = default_catalog()
EVENT_TYPES = sorted(CATALOG.events)


def sample(schema: Any, names: dict[str, Any] | None = None) -> Any:
    """A value for `schema` as fastavro reads it back (UUIDs, aware datetimes, dates); strings hold SECRET."""
    names = {} if names is None else names
    if isinstance(schema, str):
        if schema in names:
            return sample(names[schema], names)
        return {"null": None, "boolean": True, "int": 42, "long": 4_200_000_000, "float": 1.5,
                "double": 2.25, "bytes": b"\x01\x02", "string": SECRET}[schema]
    if isinstance(schema, list):
        return sample(next(branch for branch in schema if branch != "null"), names)
    logical = schema.get("logicalType")
    if logical == "uuid":
        return uuid.UUID("12345678-1234-5678-1234-567812345678")
    if logical == "timestamp-millis":
        return dt.datetime(2024, 5, 6, 7, 8, 9, 123000, tzinfo=dt.timezone.utc)
    if logical == "date":
        return dt.date(1990, 1, 31)
    kind = schema["type"]
    if kind == "record":
        names[f"{schema.get('namespace', '')}.{schema['name']}".lstrip(".")] = schema
        names[schema["name"]] = schema
        return {item["name"]: sample(item["type"], names) for item in schema["fields"]}
    if kind == "enum":
        names[schema["name"]] = schema
        return schema["symbols"][-1]
    if kind == "array":
        return [sample(schema["items"], names)]
    if kind == "map":
        return {"k": sample(schema["values"], names)}
    return sample(kind, names)


def context(event_type: str) -> SerializationContext:
    return SerializationContext(raw_topic(event_type), MessageField.VALUE)


@pytest.fixture(scope="module")
def client(schema_registry_url: str) -> SchemaRegistryClient:
    return SchemaRegistryClient({"url": schema_registry_url})


@pytest.fixture(scope="module")
def encoders(client: SchemaRegistryClient) -> dict[str, Encoder]:
    return {
        event_type: encoder_for(client, f"{raw_topic(event_type)}-value", CATALOG.events[event_type].avro)
        for event_type in EVENT_TYPES
    }


@pytest.mark.parametrize("event_type", EVENT_TYPES)
def test_confluent_serializer_output_decodes_with_our_decoder(
    event_type: str, client: SchemaRegistryClient, encoders: dict[str, Encoder]
) -> None:
    record = sample(CATALOG.events[event_type].avro)
    data = AvroSerializer(client, CATALOG.events[event_type].avro_json)(record, context(event_type))

    decoded = Decoder(client)(data)

    assert decoded.schema_id == encoders[event_type].schema_id
    assert decoded.record == record


@pytest.mark.parametrize("event_type", EVENT_TYPES)
def test_our_encoder_output_decodes_with_confluent_deserializer(
    event_type: str, client: SchemaRegistryClient, encoders: dict[str, Encoder]
) -> None:
    record = sample(CATALOG.events[event_type].avro)
    data = encoders[event_type](record)

    assert AvroDeserializer(client)(data, context(event_type)) == record
    assert Decoder(client)(data).record == record


def test_encoder_writes_the_same_bytes_as_confluent_serializer(
    client: SchemaRegistryClient, encoders: dict[str, Encoder]
) -> None:
    event_type = "welfare.benefit_claimed"
    record = sample(CATALOG.events[event_type].avro)
    confluent = AvroSerializer(client, CATALOG.events[event_type].avro_json)(record, context(event_type))
    ours = encoders[event_type](record)
    assert ours == confluent
    assert ours[0] == MAGIC and int.from_bytes(ours[1:5], "big") == encoders[event_type].schema_id


def test_registering_the_same_schema_again_returns_the_same_id(
    client: SchemaRegistryClient, encoders: dict[str, Encoder]
) -> None:
    event = CATALOG.events["tax.income_declared"]
    assert register(client, f"{raw_topic(event.event_type)}-value", event.avro) == encoders[event.event_type].schema_id


def test_encode_error_names_the_field_and_not_the_value(encoders: dict[str, Encoder]) -> None:
    record = sample(CATALOG.events["welfare.benefit_claimed"].avro)
    record["household_size"] = SECRET

    with pytest.raises(EncodeError) as caught:
        encoders["welfare.benefit_claimed"](record)

    assert "household_size" in str(caught.value)
    assert SECRET not in str(caught.value)
    assert caught.value.__cause__ is not None


def test_encode_error_names_a_missing_field(encoders: dict[str, Encoder]) -> None:
    record = sample(CATALOG.events["welfare.benefit_claimed"].avro)
    del record["national_id"]
    with pytest.raises(EncodeError, match="national_id"):
        encoders["welfare.benefit_claimed"](record)


@pytest.fixture(scope="module")
def valid_bytes(encoders: dict[str, Encoder]) -> bytes:
    return encoders["welfare.benefit_claimed"](sample(CATALOG.events["welfare.benefit_claimed"].avro))


def _message(error: pytest.ExceptionInfo[SerdeError]) -> str:
    assert SECRET not in str(error.value)
    return str(error.value)


def test_wrong_magic_byte_is_a_bad_magic_byte_error(client: SchemaRegistryClient, valid_bytes: bytes) -> None:
    with pytest.raises(BadMagicByte) as caught:
        Decoder(client)(b"\x01" + valid_bytes[1:])
    _message(caught)


def test_unknown_schema_id_is_an_unknown_schema_id_error(client: SchemaRegistryClient, valid_bytes: bytes) -> None:
    with pytest.raises(UnknownSchemaId) as caught:
        Decoder(client)(b"\x00" + (2**31 - 5).to_bytes(4, "big") + valid_bytes[5:])
    assert str(2**31 - 5) in _message(caught)


@pytest.mark.parametrize("keep", [0, 3, 5, -1, -20])
def test_cut_messages_are_truncated_message_errors(client: SchemaRegistryClient, valid_bytes: bytes, keep: int) -> None:
    with pytest.raises(TruncatedMessage) as caught:
        Decoder(client)(valid_bytes[:keep])
    _message(caught)


def test_trailing_bytes_are_a_corrupt_message_error(client: SchemaRegistryClient, valid_bytes: bytes) -> None:
    with pytest.raises(CorruptMessage) as caught:
        Decoder(client)(valid_bytes + b"\x00\x00")
    _message(caught)


def test_invalid_bytes_inside_the_body_are_a_corrupt_message_error(
    client: SchemaRegistryClient, valid_bytes: bytes
) -> None:
    # Byte 5 is the length of event_id (36 characters); make those characters invalid UTF-8.
    assert valid_bytes[5] == 72
    corrupt = valid_bytes[:6] + b"\xff" * 36 + valid_bytes[42:]
    with pytest.raises(CorruptMessage) as caught:
        Decoder(client)(corrupt)
    _message(caught)


def test_decoder_asks_the_registry_once_per_schema_id(
    schema_registry_url: str, valid_bytes: bytes
) -> None:
    decoder = Decoder(SchemaRegistryClient({"url": schema_registry_url}))
    first = decoder(valid_bytes)
    # The registry is now unreachable for this decoder: cached ids still decode.
    decoder.registry = SchemaRegistryClient({"url": "http://127.0.0.1:9", "max.retries": 0})
    assert decoder(valid_bytes) == first


def test_unreachable_registry_is_reported_with_its_url(valid_bytes: bytes) -> None:
    decoder = Decoder(SchemaRegistryClient({"url": "http://127.0.0.1:9", "max.retries": 0}))
    with pytest.raises(RegistryUnavailable, match="127.0.0.1:9"):
        decoder(valid_bytes)


def test_encoder_rejects_an_id_that_does_not_fit_the_header() -> None:
    with pytest.raises(SerdeError):
        Encoder(2**32, CATALOG.events["welfare.benefit_claimed"].parsed)


def test_generated_fast_path_writes_the_same_bytes_and_still_names_a_bad_field() -> None:
    import random

    from backbone.events.catalog import default_catalog
    from producers.synthetic.samples import sample_event

    catalog = default_catalog()
    rng = random.Random(3)
    for schema in catalog.events.values():
        fast, plain = Encoder(7, schema.parsed, schema.avro), Encoder(7, schema.parsed)
        for _ in range(20):
            record = sample_event(schema, rng)
            assert fast(record) == plain(record)
    welfare = catalog.events["welfare.benefit_claimed"]
    record = sample_event(welfare, rng)
    record["household_size"] = "three"
    with pytest.raises(EncodeError, match="household_size") as caught:
        Encoder(7, welfare.parsed, welfare.avro)(record)
    assert "three" not in str(caught.value)


@pytest.mark.parametrize("event_type", ["tax.income_declared", "welfare.benefit_claimed"])
def test_events_whose_schema_references_a_shared_record_decode_with_our_decoders(
    event_type: str, client: SchemaRegistryClient
) -> None:
    """An agency with shared record types registers its event schema with a reference to the
    governance record's own subject (as confluent-kafka's AvroSerializer does); the serde decoder
    and the generated decoder read its events through a self-contained form of that schema."""
    suffix = uuid.uuid4().hex[:8]
    governance_subject = f"backbone.Governance-{suffix}"
    register(client, governance_subject, CATALOG.internal_schema("backbone.Governance"))
    unexpanded = CATALOG.events[event_type].path.read_text()  # names backbone.Governance without defining it
    schema = Schema(unexpanded, "AVRO", [SchemaReference("backbone.Governance", governance_subject, 1)])
    topic = f"raw.refs.{suffix}"
    record = sample(CATALOG.events[event_type].avro)
    data = AvroSerializer(client, schema)(record, SerializationContext(topic, MessageField.VALUE))

    decoded = Decoder(client)(data)
    assert decoded.record == record
    assert client.get_schema(decoded.schema_id).references, "registered with its reference, not expanded"
    resolved = RegistrySchemas(client).schema(decoded.schema_id)
    governance = next(f["type"] for f in resolved["fields"] if f["name"] == "governance")
    assert governance["type"] == "record", "the referenced record is defined inline"
    decode = compile_decoder(resolved)
    assert decode is not None and decode(data, HEADER_SIZE) == (record, len(data))
