"""The generated Avro decoder (`backbone.events.decoder.compile_decoder`), the router's fast read path:
it reads every schema the backbone carries exactly as fastavro does, and bytes it has any doubt
about go to the serde decoder, so bad input gives the errors (and DLQ reasons) it always gave."""

from __future__ import annotations

import datetime as dt
import io
import re
import time
import uuid
from typing import Any

import pytest
from fastavro import parse_schema, schemaless_reader, schemaless_writer
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from backbone.events.catalog import Catalog, load_catalog
from backbone.events.decoder import _read_uuid, compile_decoder
from backbone.events.serde import Decoder, Encoder, LocalSchemas
from backbone.kafka import dlq
from backbone.kafka.topics import raw_topic
from backbone.keys.keyring import Keyring
from backbone.policy.agreements import load_agreements
from backbone.policy.decision import NoConsent
from backbone.policy.engine import PolicyEngine
from backbone.settings import PROJECT_ROOT
from processors.router import DLQ_TOPIC, Router
from producers.synthetic import generate

CATALOG: Catalog = load_catalog(PROJECT_ROOT / "schemas")
CHARTER = load_agreements(PROJECT_ROOT / "agreements", CATALOG)
ENGINE = PolicyEngine(CHARTER, Keyring.for_charter(CHARTER))
RELEASED = {f"{a.key}:{t}": ENGINE.recipient_schema(a.id, t, a.version) for a in CHARTER.agreements for t in a.event_types}
SCHEMAS = {**{t: s.avro for t, s in CATALOG.events.items()}, **CATALOG.internal, **RELEASED}

# Every shape the compiler reads, in one schema: unions of several branches and nullables either
# way round, logical types, enums, arrays, maps, nested and repeated named records, fixed, bytes.
SHAPES: dict[str, Any] = {"type": "record", "name": "Shapes", "namespace": "test", "fields": [
    {"name": "id", "type": {"type": "string", "logicalType": "uuid"}},
    {"name": "at", "type": {"type": "long", "logicalType": "timestamp-millis"}},
    {"name": "at_micros", "type": {"type": "long", "logicalType": "timestamp-micros"}},
    {"name": "day", "type": {"type": "int", "logicalType": "date"}},
    {"name": "maybe_day", "type": ["null", {"type": "int", "logicalType": "date"}]},
    {"name": "note_or_null", "type": ["string", "null"]},
    {"name": "choice", "type": ["null", "string", "long", "boolean"]},
    {"name": "flag", "type": "boolean"},
    {"name": "ratio", "type": "float"},
    {"name": "amount", "type": "double"},
    {"name": "count", "type": "int"},
    {"name": "big", "type": "long"},
    {"name": "blob", "type": "bytes"},
    {"name": "digest", "type": {"type": "fixed", "name": "Digest", "size": 4}},
    {"name": "kind", "type": {"type": "enum", "name": "Kind", "symbols": ["a", "b", "c"]}},
    {"name": "kinds", "type": {"type": "array", "items": "Kind"}},
    {"name": "labels", "type": {"type": "map", "values": "string"}},
    {"name": "scores", "type": {"type": "map", "values": {"type": "array", "items": "long"}}},
    {"name": "home", "type": {"type": "record", "name": "Address", "fields": [
        {"name": "street", "type": "string"}, {"name": "postcode", "type": ["null", "string"]}]}},
    {"name": "work", "type": ["null", "Address"]},
    {"name": "history", "type": {"type": "array", "items": "test.Address"}},
    {"name": "tagged", "type": {"type": "string", "logicalType": "not-a-known-type"}},
]}


def values(schema: Any, named: dict[str, Any], namespace: str = "") -> st.SearchStrategy[Any]:
    """Values fastavro writes for `schema` (hypothesis)."""
    if isinstance(schema, list):
        return st.one_of(*(values(branch, named, namespace) for branch in schema))
    if isinstance(schema, str):
        primitive = {"null": st.none(), "boolean": st.booleans(), "int": st.integers(-2**31, 2**31 - 1),
                     "long": st.integers(-2**63, 2**63 - 1), "float": st.floats(width=32, allow_nan=False),
                     "double": st.floats(allow_nan=False), "string": st.text(max_size=40), "bytes": st.binary(max_size=40)}
        if schema in primitive:
            return primitive[schema]
        full = schema if "." in schema else f"{namespace}.{schema}" if namespace else schema
        return values(named.get(full) or named[schema], named, namespace)
    kind, logical = schema["type"], schema.get("logicalType")
    if isinstance(kind, (dict, list)):
        return values(kind, named, namespace)
    if (kind, logical) == ("string", "uuid"):
        return st.uuids()
    if (kind, logical) in (("long", "timestamp-millis"), ("long", "timestamp-micros")):
        return st.datetimes(dt.datetime(1900, 1, 1), dt.datetime(2200, 1, 1), timezones=st.just(dt.UTC))
    if (kind, logical) == ("int", "date"):
        return st.dates(dt.date(1900, 1, 1), dt.date(2200, 1, 1))
    if kind in ("record", "enum", "fixed"):
        space = schema.get("namespace", namespace)
        name = schema["name"]
        named[name if "." in name else f"{space}.{name}" if space else name] = schema
        if kind == "enum":
            return st.sampled_from(schema["symbols"])
        if kind == "fixed":
            return st.binary(min_size=schema["size"], max_size=schema["size"])
        return st.fixed_dictionaries({f["name"]: values(f["type"], named, space) for f in schema["fields"]})
    if kind == "array":
        return st.lists(values(schema["items"], named, namespace), max_size=4)
    if kind == "map":
        return st.dictionaries(st.text(max_size=10), values(schema["values"], named, namespace), max_size=4)
    return values(kind, named, namespace)  # {"type": "string"}, unknown logical types


def write(schema: Any, record: Any) -> bytes:
    buffer = io.BytesIO()
    schemaless_writer(buffer, parse_schema(schema), record)
    return buffer.getvalue()


def assert_reads_as_fastavro(schema: Any, body: bytes) -> None:
    expected = schemaless_reader(io.BytesIO(body), parse_schema(schema), None)
    decode = compile_decoder(schema)
    assert decode is not None
    record, end = decode(body, 0)
    assert end == len(body)
    assert record == expected
    assert repr(record) == repr(expected)  # same types and field order, not only equal values


@pytest.mark.parametrize("name", sorted(SCHEMAS))
@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_generated_decoder_reads_every_schema_of_the_backbone_as_fastavro_does(name: str, data: st.DataObject) -> None:
    schema = SCHEMAS[name]
    if compile_decoder(schema) is None:  # a shape left to fastavro (the router then always reads with it)
        assert name not in CATALOG.events, "every event schema must compile: the processor reads them all"
        return
    record = data.draw(values(schema, {}))
    assert_reads_as_fastavro(schema, write(schema, record))


def test_generated_decoder_reads_the_synthetic_demo_events_as_fastavro_does() -> None:
    for event_type, record in generate(seed=3, population=200, events=2_000):
        record.setdefault("event_id", str(uuid.uuid4()))
        assert_reads_as_fastavro(CATALOG.events[event_type].avro, write(CATALOG.events[event_type].avro, record))


@settings(max_examples=300, deadline=None)
@given(data=st.data())
def test_generated_decoder_reads_every_shape_as_fastavro_does(data: st.DataObject) -> None:
    assert_reads_as_fastavro(SHAPES, write(SHAPES, data.draw(values(SHAPES, {}))))


@pytest.mark.parametrize("schema", [
    {"type": "record", "name": "Node", "fields": [{"name": "next", "type": ["null", "Node"]}]},
    {"type": "record", "name": "Money", "fields": [
        {"name": "v", "type": {"type": "bytes", "logicalType": "decimal", "precision": 9, "scale": 2}}]},
    {"type": "record", "name": "Clock", "fields": [{"name": "t", "type": {"type": "int", "logicalType": "time-millis"}}]},
    {"type": "record", "name": "Local", "fields": [
        {"name": "t", "type": {"type": "long", "logicalType": "local-timestamp-millis"}}]},
], ids=["recursive", "decimal", "time-millis", "local-timestamp-millis"])
def test_schemas_with_shapes_it_does_not_read_are_left_to_fastavro(schema: dict) -> None:
    assert compile_decoder(schema) is None


@pytest.mark.parametrize("text", [
    "12345678-1234-5678-1234-567812345678", "12345678-1234-5678-1234-567812345678".upper(),
    "{12345678-1234-5678-1234-567812345678}", "urn:uuid:12345678-1234-5678-1234-567812345678",
    "12345678123456781234567812345678", "1234-5678-1234-5678-1234-5678123456", "12345678-1234-5678-1234-56781234567x",
])
def test_uuids_are_read_as_uuid_UUID_reads_them(text: str) -> None:
    try:
        expected: Any = uuid.UUID(text)
    except ValueError:
        expected = ValueError
    try:
        got: Any = _read_uuid(text)
    except ValueError:
        got = ValueError
    assert got == expected
    if expected is not ValueError:
        assert isinstance(got, uuid.UUID) and got.is_safe == expected.is_safe and str(got) == str(expected)
        assert hash(got) == hash(expected) and got.hex == expected.hex and repr(got) == repr(expected)


@given(st.uuids(), st.sampled_from([str, str.upper, lambda text: text.replace("-", ""), lambda text: "{" + text + "}"]))
def test_a_uuid_read_from_any_text_uuid_UUID_takes_is_that_uuid(value: uuid.UUID, form: Any) -> None:
    text = form(str(value))
    got = _read_uuid(text)
    assert got == value and str(got) == str(value) and hash(got) == hash(value) and got.int == value.int


# -- bad bytes: the router's read path against the serde decoder ----------------------------------


@pytest.fixture(scope="module")
def router() -> tuple[Router, dict[str, bytes], Decoder]:
    schemas = LocalSchemas()
    routing = Router(CATALOG, ENGINE, schemas, Keyring.for_charter(CHARTER))
    routing.prepare()
    valid: dict[str, bytes] = {}
    for event_type, record in generate(seed=5, population=100, events=400):
        if event_type not in valid and event_type in CATALOG.raw_event_types:
            record.setdefault("event_id", str(uuid.uuid4()))
            encoder = Encoder(schemas.register(f"{raw_topic(event_type)}-value", CATALOG.events[event_type].avro),
                              parse_schema(CATALOG.events[event_type].avro))
            valid[event_type] = encoder(record)
    return routing, valid, Decoder(schemas)


def outcome(read: Any, value: bytes) -> tuple[str, str]:
    """The record (its repr: types and field order count, and a NaN equals a NaN), or the error's type and message."""
    try:
        return "record", repr(read(value))
    except Exception as exc:  # noqa: BLE001 - compared as type and message
        return type(exc).__name__, re.sub(r" at 0x[0-9a-f]+", "", str(exc))  # fastavro names its buffer object


def corruptions(value: bytes) -> list[bytes]:
    """Every cut, every byte set to a few telling values, and trailing bytes."""
    out = [value[:n] for n in range(len(value))] + [value + b"\x00", value + b"\x02\x41"]
    for index in range(5, len(value)):
        for byte in (0x00, 0x01, 0x7F, 0x80, 0xFF, value[index] ^ 0x01):
            out.append(value[:index] + bytes([byte]) + value[index + 1:])
    return out


def test_bad_bytes_read_by_the_router_give_todays_record_or_error(router: tuple[Router, dict[str, bytes], Decoder]) -> None:
    routing, valid, decoder = router
    checked = 0
    for value in valid.values():
        for bad in corruptions(value):
            assert outcome(routing._read, bad) == outcome(lambda v: decoder(v).record, bad)
            checked += 1
    assert checked > 1_000


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(body=st.binary(max_size=120), index=st.integers(0, 3))
def test_random_bodies_read_by_the_router_give_todays_record_or_error(
        router: tuple[Router, dict[str, bytes], Decoder], body: bytes, index: int) -> None:
    routing, valid, decoder = router
    value = list(valid.values())[index % len(valid)][:5] + body
    assert outcome(routing._read, value) == outcome(lambda v: decoder(v).record, value)


@settings(max_examples=40, deadline=None)
@given(data=st.data())
def test_corrupted_bodies_of_every_shape_read_as_fastavro_reads_them(data: st.DataObject) -> None:
    parsed, decode = parse_schema(SHAPES), compile_decoder(SHAPES)
    assert decode is not None

    def fast_then_fastavro(body: bytes) -> Any:  # as the router reads
        try:
            record, end = decode(body, 0)
            if end == len(body):
                return record
        except Exception:  # noqa: BLE001
            pass
        return fastavro(body)

    def fastavro(body: bytes) -> Any:
        buffer = io.BytesIO(body)
        record = schemaless_reader(buffer, parsed, None)
        if buffer.tell() != len(body):
            raise ValueError("trailing bytes")
        return record

    body = write(SHAPES, data.draw(values(SHAPES, {})))
    for bad in corruptions(b"\x00" * 5 + body):
        assert outcome(fast_then_fastavro, bad[5:]) == outcome(fastavro, bad[5:])


def test_a_cut_event_is_dead_lettered_as_truncated_as_before(router: tuple[Router, dict[str, bytes], Decoder]) -> None:
    routing, valid, _ = router
    event_type, value = next(iter(valid.items()))
    [output] = routing.route(raw_topic(event_type), b"k", value[:-3], None, NoConsent(), dt.datetime.now(dt.UTC))
    assert output.topic == DLQ_TOPIC
    assert dict(output.headers or [])[dlq.REASON] == b"truncated_message"
    assert output.value == value[:-3]


def test_a_huge_item_count_does_not_keep_the_decoder_looping() -> None:
    schema = {"type": "record", "name": "R", "fields": [{"name": "items", "type": {"type": "array", "items": "null"}}]}
    decode = compile_decoder(schema)
    assert decode is not None
    started = time.perf_counter()
    with pytest.raises(ValueError):
        decode(b"\xfe\xff\xff\xff\xff\xff\xff\xff\x7f\x00", 0)  # 2**62 nulls, then the end of the array
    assert time.perf_counter() - started < 0.1
