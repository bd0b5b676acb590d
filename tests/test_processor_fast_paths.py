"""The processor's per-event fast paths give exactly what the general code they replace gives: a
recipient's event id, a shared record's Kafka timestamp, an event id read as a UUID and written back."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta, timezone

from hypothesis import given
from hypothesis import strategies as st

from backbone.events.decoder import TextUUID, _read_uuid
from backbone.events.encoder import _uuid as write_uuid
from backbone.keys.pseudonym import _uuid as digest_uuid
from backbone.policy.released import released_timestamp_ms
from processors.audit_record import _uuid as audit_uuid


def _slow_digest_uuid(digest: bytes) -> str:
    raw = bytearray(digest[:16])
    raw[6] = (raw[6] & 0x0F) | 0x40
    raw[8] = (raw[8] & 0x3F) | 0x80
    return str(uuid.UUID(bytes=bytes(raw)))


@given(st.binary(min_size=16, max_size=32))
def test_a_recipient_event_id_is_the_version_4_uuid_of_its_digest(digest: bytes) -> None:
    made = digest_uuid(digest)
    assert made == _slow_digest_uuid(digest)
    parsed = uuid.UUID(made)
    assert parsed.version == 4 and parsed.variant == uuid.RFC_4122


@given(st.datetimes(min_value=datetime(1970, 1, 2), max_value=datetime(9998, 12, 31),
                    timezones=st.sampled_from([UTC, timezone(timedelta(hours=5, minutes=30)), timezone(timedelta(hours=-8))])))
def test_a_shared_records_timestamp_is_its_released_time_in_whole_milliseconds(moment: datetime) -> None:
    expected = max(1, (moment - datetime(1970, 1, 1, tzinfo=UTC)) // timedelta(milliseconds=1))
    assert released_timestamp_ms(moment) == expected
    assert released_timestamp_ms(moment.replace(tzinfo=None)) == max(
        1, (moment.replace(tzinfo=UTC) - datetime(1970, 1, 1, tzinfo=UTC)) // timedelta(milliseconds=1))


def test_a_timestamp_before_the_epoch_or_nothing_released_is_never_zero() -> None:
    assert released_timestamp_ms(datetime(1969, 12, 31, tzinfo=UTC)) == 1
    assert released_timestamp_ms(None) == 1


@given(st.uuids())
def test_an_event_id_read_keeps_its_text_and_writes_the_bytes_a_uuid_writes(value: uuid.UUID) -> None:
    for text in (str(value), str(value).upper()):
        read = _read_uuid(text)
        assert isinstance(read, TextUUID) and read == value and str(read) == str(value) and repr(read) == repr(value)
        assert write_uuid(read) == write_uuid(value) == write_uuid(str(value))
        assert audit_uuid(read) == audit_uuid(value)


def test_an_event_id_read_by_either_decoder_is_one_key_to_the_uniqueness_check() -> None:
    from backbone.quality.checks import QualityMonitor
    from backbone.quality.contract import QualityContract, QualitySection

    event_type = "welfare.benefit_claimed"
    monitor = QualityMonitor([QualityContract(event_type, "test", QualitySection.model_validate(
        {"uniqueness": {"key": "event_id", "threshold": ">= 99"}}))])
    now = datetime(2026, 12, 7, 10, 30, tzinfo=UTC)
    text = str(uuid.uuid4())
    for event_id in (uuid.UUID(text), _read_uuid(text)):  # fastavro's UUID, then the generated decoder's
        monitor.observe(event_type, {"event_id": event_id}, now)
    monitor.flush()
    (window,) = monitor.windows.values()
    assert (window.events, window.duplicates) == (2, 1)


def test_an_event_id_read_copies_and_pickles_as_the_uuid_it_is() -> None:
    import copy
    import pickle

    read = _read_uuid("12345678-1234-5678-1234-567812345678")
    for again in (copy.copy(read), copy.deepcopy({"event_id": read})["event_id"], pickle.loads(pickle.dumps(read))):
        assert again == read and str(again) == str(read) and type(again) is uuid.UUID


@given(st.one_of(st.integers(min_value=-(2**63), max_value=2**63 - 1), st.integers(min_value=-2, max_value=130)),
       st.text(max_size=200))
def test_the_audit_records_longs_and_strings_are_avros_bytes(value: int, text: str) -> None:
    """The audit record's one-byte fast path for 0..63 and its general path write what fastavro writes."""
    from io import BytesIO

    from fastavro import schemaless_writer

    from processors.audit_record import _long, _string

    for schema, datum, written in (("long", value, _long(value)), ("string", text, _string(text))):
        buffer = BytesIO()
        schemaless_writer(buffer, schema, datum)
        assert written == buffer.getvalue()
