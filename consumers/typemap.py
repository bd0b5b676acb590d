"""Avro to ClickHouse type mapping: pure code, no I/O.

One function per question: `clickhouse_type(avro_type)` for a field type and `table_columns(schema)`
for a record schema. Rules:
- `["null", T]` is `Nullable(T)`; ClickHouse has no nullable arrays, maps or tuples, so those stay
  non-nullable (an Avro null lands as the empty value);
- logical types: `uuid` is UUID, `date` Date32, `timestamp-millis` DateTime64(3, 'UTC'),
  `timestamp-micros` DateTime64(6, 'UTC'), `local-timestamp-*` DateTime64 without zone, `time-*` Int,
  `decimal` Decimal(p, s);
- enums are `LowCardinality(String)` (new symbols need no ALTER); strings that name a category
  (the event header's `event_type` and `provider`) are LowCardinality too;
- arrays are `Array(T)`, maps `Map(String, T)`, records `Tuple(name T, ...)`, fixed `FixedString(n)`.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from backbone.errors import BackboneError

PRIMITIVES = {
    "boolean": "Bool",
    "int": "Int32",
    "long": "Int64",
    "float": "Float32",
    "double": "Float64",
    "string": "String",
    "bytes": "String",
}
LOGICAL = {
    ("string", "uuid"): "UUID",
    ("int", "date"): "Date32",
    ("int", "time-millis"): "Int32",
    ("long", "time-micros"): "Int64",
    ("long", "timestamp-millis"): "DateTime64(3, 'UTC')",
    ("long", "timestamp-micros"): "DateTime64(6, 'UTC')",
    ("long", "local-timestamp-millis"): "DateTime64(3)",
    ("long", "local-timestamp-micros"): "DateTime64(6)",
}
# Header strings with few distinct values: dictionary-encode them.
LOW_CARDINALITY_FIELDS = frozenset({"event_type", "provider"})
_NOT_NULLABLE = ("Array(", "Map(", "Tuple(", "LowCardinality(")


class TypeMappingError(BackboneError):
    """An Avro type has no ClickHouse equivalent; the message names the field and the type."""


@dataclass(slots=True, frozen=True)
class Column:
    name: str
    type: str

    @property
    def ddl(self) -> str:
        return f"{quote_identifier(self.name)} {self.type}"


def quote_identifier(name: str) -> str:
    """A ClickHouse identifier in backquotes."""
    return "`" + name.replace("\\", "\\\\").replace("`", "\\`") + "`"


def _nullable(inner: str) -> str:
    if inner.startswith(_NOT_NULLABLE[:3]):
        return inner
    if inner.startswith("LowCardinality("):
        return f"LowCardinality(Nullable({inner[len('LowCardinality('):-1]}))"
    return f"Nullable({inner})"


def clickhouse_type(avro_type: Any, named: dict[str, Any] | None = None, namespace: str = "") -> str:
    """The ClickHouse type for an Avro type (a name, a union list or a type object)."""
    named = {} if named is None else named
    if isinstance(avro_type, list):
        branches = [branch for branch in avro_type if branch != "null"]
        if len(branches) != 1:
            raise TypeMappingError(f"union {avro_type!r}: only [\"null\", T] unions map to ClickHouse")
        inner = clickhouse_type(branches[0], named, namespace)
        return _nullable(inner) if len(branches) < len(avro_type) else inner
    if isinstance(avro_type, str):
        if avro_type in PRIMITIVES:
            return PRIMITIVES[avro_type]
        for name in (avro_type, f"{namespace}.{avro_type}"):
            if name in named:
                return clickhouse_type(named[name], named, namespace)
        raise TypeMappingError(f"unknown Avro type name {avro_type!r}")
    if not isinstance(avro_type, Mapping):
        raise TypeMappingError(f"not an Avro type: {avro_type!r}")
    kind = avro_type.get("type")
    logical = avro_type.get("logicalType")
    if logical == "decimal" and kind in ("bytes", "fixed"):
        return f"Decimal({int(avro_type['precision'])}, {int(avro_type.get('scale', 0))})"
    if logical and (kind, logical) in LOGICAL:
        return LOGICAL[(kind, logical)]
    if kind in ("enum", "record", "fixed"):
        space = avro_type.get("namespace", namespace)
        full = avro_type["name"] if "." in avro_type["name"] else f"{space}.{avro_type['name']}".lstrip(".")
        named[full] = avro_type
        named.setdefault(avro_type["name"], avro_type)
        if kind == "enum":
            return "LowCardinality(String)"
        if kind == "fixed":
            return f"FixedString({int(avro_type['size'])})"
        inner = ", ".join(
            f"{quote_identifier(field['name'])} {clickhouse_type(field['type'], named, space)}" for field in avro_type["fields"]
        )
        return f"Tuple({inner})"
    if kind == "array":
        return f"Array({clickhouse_type(avro_type['items'], named, namespace)})"
    if kind == "map":
        return f"Map(String, {clickhouse_type(avro_type['values'], named, namespace)})"
    if isinstance(kind, str | list):
        return clickhouse_type(kind, named, namespace)  # {"type": "string"} and friends
    raise TypeMappingError(f"unsupported Avro type {avro_type!r}")


def table_columns(schema: Mapping[str, Any]) -> list[Column]:
    """One column per field of an Avro record schema, in field order."""
    if schema.get("type") != "record":
        raise TypeMappingError(f"schema {schema.get('name', '?')} is not a record")
    named: dict[str, Any] = {}
    namespace = schema.get("namespace", "")
    columns = []
    for field in schema["fields"]:
        try:
            ch_type = clickhouse_type(field["type"], named, namespace)
        except TypeMappingError as exc:
            raise TypeMappingError(f"schema {schema.get('name', '?')}, field {field['name']}: {exc}") from None
        if field["name"] in LOW_CARDINALITY_FIELDS and ch_type == "String":
            ch_type = "LowCardinality(String)"
        columns.append(Column(field["name"], ch_type))
    return columns


def merge_columns(existing: Iterable[Column], new: Iterable[Column], where: str) -> list[Column]:
    """`existing` plus the columns of `new` it lacks; a field whose type changed is an error."""
    merged = {column.name: column for column in existing}
    for column in new:
        known = merged.get(column.name)
        if known is None:
            merged[column.name] = column
        elif known.type != column.type:
            raise TypeMappingError(
                f"{where}: field {column.name} is {known.type} in one schema and {column.type} in another; "
                "give the changed field a new name in the agreement's new version"
            )
    return list(merged.values())
