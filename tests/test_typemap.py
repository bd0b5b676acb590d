"""The Avro -> ClickHouse type mapping is pure: every rule checked without a database."""

from __future__ import annotations

import pytest

from consumers.typemap import Column, TypeMappingError, clickhouse_type, merge_columns, table_columns


@pytest.mark.parametrize(
    ("avro", "expected"),
    [
        ("boolean", "Bool"),
        ("int", "Int32"),
        ("long", "Int64"),
        ("float", "Float32"),
        ("double", "Float64"),
        ("string", "String"),
        ("bytes", "String"),
        ({"type": "string"}, "String"),
        ({"type": "string", "logicalType": "uuid"}, "UUID"),
        ({"type": "int", "logicalType": "date"}, "Date32"),
        ({"type": "long", "logicalType": "timestamp-millis"}, "DateTime64(3, 'UTC')"),
        ({"type": "long", "logicalType": "timestamp-micros"}, "DateTime64(6, 'UTC')"),
        ({"type": "long", "logicalType": "local-timestamp-millis"}, "DateTime64(3)"),
        ({"type": "bytes", "logicalType": "decimal", "precision": 12, "scale": 2}, "Decimal(12, 2)"),
        ({"type": "fixed", "name": "F", "size": 16}, "FixedString(16)"),
        ({"type": "enum", "name": "E", "symbols": ["a", "b"]}, "LowCardinality(String)"),
        ({"type": "array", "items": "string"}, "Array(String)"),
        ({"type": "map", "values": "long"}, "Map(String, Int64)"),
        (["null", "string"], "Nullable(String)"),
        (["null", {"type": "long", "logicalType": "timestamp-millis"}], "Nullable(DateTime64(3, 'UTC'))"),
        (["null", {"type": "enum", "name": "E2", "symbols": ["x"]}], "LowCardinality(Nullable(String))"),
        (["null", {"type": "array", "items": "int"}], "Array(Int32)"),
        ({"type": "record", "name": "R", "fields": [{"name": "a", "type": "int"}]}, "Tuple(`a` Int32)"),
    ],
)
def test_avro_type_maps_to_clickhouse_type(avro: object, expected: str) -> None:
    assert clickhouse_type(avro) == expected


def test_named_types_are_resolved_by_later_references() -> None:
    schema = {
        "type": "record", "name": "Ev", "namespace": "x",
        "fields": [
            {"name": "first", "type": {"type": "enum", "name": "Kind", "symbols": ["a"]}},
            {"name": "again", "type": "Kind"},
            {"name": "qualified", "type": ["null", "x.Kind"]},
        ],
    }
    assert [c.type for c in table_columns(schema)] == ["LowCardinality(String)"] * 2 + ["LowCardinality(Nullable(String))"]


def test_event_header_categories_are_low_cardinality() -> None:
    schema = {"type": "record", "name": "E", "fields": [
        {"name": "event_type", "type": "string"}, {"name": "provider", "type": "string"}, {"name": "period", "type": "string"}]}
    assert table_columns(schema) == [
        Column("event_type", "LowCardinality(String)"), Column("provider", "LowCardinality(String)"), Column("period", "String")]


def test_unions_of_two_real_types_are_refused_naming_the_field() -> None:
    schema = {"type": "record", "name": "E", "fields": [{"name": "amount", "type": ["int", "string"]}]}
    with pytest.raises(TypeMappingError, match="field amount"):
        table_columns(schema)


def test_merging_schemas_adds_new_fields_and_refuses_changed_types() -> None:
    v1 = [Column("event_id", "UUID"), Column("dob", "Int32")]
    assert merge_columns(v1, [Column("event_id", "UUID"), Column("employer_id", "String")], "v2") == [
        Column("event_id", "UUID"), Column("dob", "Int32"), Column("employer_id", "String")]
    with pytest.raises(TypeMappingError, match="dob"):
        merge_columns(v1, [Column("dob", "String")], "v2")
