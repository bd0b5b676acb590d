"""The processor writes each event's audit record from cached parts (`processors.audit_record`): the
bytes must be exactly what the audit schema's encoder writes for the same record, whatever the
decisions, or the leaves the checkpoints seal would not be the records' canonical encoding."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

from fastavro import parse_schema
from hypothesis import given, settings
from hypothesis import strategies as st

from backbone.events.catalog import AUDIT_EVENT, load_catalog
from backbone.events.serde import Encoder
from backbone.policy.decision import REASONS, Decision
from backbone.settings import PROJECT_ROOT
from processors.audit_record import AuditRecordWriter

AVRO = load_catalog(PROJECT_ROOT / "schemas").internal_schema(AUDIT_EVENT)
ENCODER = Encoder(12345, parse_schema(AVRO), AVRO)
WRITER = AuditRecordWriter.for_schema(ENCODER, AVRO)
names = st.text(st.characters(codec="utf-8", exclude_categories=("Cs",)), max_size=80)
uuids = st.uuids().map(str)


@st.composite
def decisions(draw: st.DrawFn) -> Decision:
    agreement = draw(st.one_of(st.none(), names))
    version = draw(st.one_of(st.none(), st.integers(-(2**31), 2**31 - 1)))
    if draw(st.booleans()):
        return Decision(draw(names), agreement, version, True, None, {"event_id": draw(uuids)}, (), (),
                        tuple(draw(st.lists(names, max_size=4))))
    return Decision(draw(names), agreement, version, False, draw(st.sampled_from(sorted(REASONS))), None, (), (), ())


moments = st.datetimes(min_value=datetime(1971, 1, 1), max_value=datetime(2200, 1, 1), timezones=st.just(UTC))


@settings(max_examples=150, deadline=None)
@given(uuids, names, names, st.one_of(st.none(), names), moments, st.lists(decisions(), max_size=25))
def test_the_written_record_is_byte_for_byte_the_schema_encoding(event_id: str, event_type: str, provider: str,
                                                                 token: str | None, at: datetime, decided: list[Decision]) -> None:
    assert WRITER.direct
    expected = ENCODER(WRITER.record(event_id, event_type, provider, token, at, decided))
    assert WRITER(event_id, event_type, provider, token, at, decided) == expected
    assert WRITER(event_id, event_type, provider, token, at, decided) == expected  # from the caches too


def test_what_the_writer_doubts_is_left_to_the_schema_encoder() -> None:
    at = datetime(2026, 5, 1, tzinfo=UTC)
    odd = Decision("a", "x", 1, True, None, {"event_id": uuid.UUID(int=5)}, (), (), ("k",))  # a UUID object, not text
    assert WRITER(str(uuid.UUID(int=9)), "t.e", "t", None, at, [odd]) == ENCODER(WRITER.record(str(uuid.UUID(int=9)), "t.e", "t", None, at, [odd]))
    assert WRITER("not-a-uuid", "t.e", "t", None, at, []) == ENCODER(WRITER.record("not-a-uuid", "t.e", "t", None, at, []))
    assert WRITER(str(uuid.UUID(int=3)), "t.e", "t", None, at + timedelta(milliseconds=1), []) != \
        WRITER(str(uuid.UUID(int=3)), "t.e", "t", None, at, [])


def test_another_audit_schema_is_written_by_its_encoder_alone() -> None:
    other = {**AVRO, "fields": [f for f in AVRO["fields"] if f["name"] != "provider"]}
    writer = AuditRecordWriter.for_schema(Encoder(1, parse_schema(other), other), other)
    assert not writer.direct
