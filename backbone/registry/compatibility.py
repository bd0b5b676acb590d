"""Avro schema identity and compatibility levels (pure: no I/O).

Two schemas are the same schema when their JSON is equal after key sorting and whitespace removal
(docs, defaults and tags count, as in Confluent's registry). Compatibility is decided by the `avro`
library's `ReaderWriterCompatibilityChecker`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import avro.schema
from avro.compatibility import ReaderWriterCompatibilityChecker, SchemaCompatibilityType

from backbone.registry.errors import invalid_schema

LEVELS = (
    "BACKWARD",
    "BACKWARD_TRANSITIVE",
    "FORWARD",
    "FORWARD_TRANSITIVE",
    "FULL",
    "FULL_TRANSITIVE",
    "NONE",
)
DEFAULT_LEVEL = "BACKWARD"


@dataclass(slots=True, frozen=True)
class AvroText:
    """A validated Avro schema: the text stored and served, and its identity key."""

    text: str
    identity: str

    def parsed(self) -> avro.schema.Schema:
        return avro.schema.parse(self.text)


def parse_avro(text: Any) -> AvroText:
    """Validate `text` as an Avro schema; raise the 42201 `ApiError` when it is not one."""
    if not isinstance(text, str):
        raise invalid_schema("the 'schema' field must be a string holding the schema's JSON")
    try:
        document = json.loads(text)
    except json.JSONDecodeError as exc:
        raise invalid_schema(f"not JSON (line {exc.lineno}, column {exc.colno})") from None
    try:
        avro.schema.parse(text)
    except Exception as exc:  # noqa: BLE001 - avro raises SchemaParseException and friends
        raise invalid_schema(f"not a valid Avro schema ({type(exc).__name__}: {str(exc)[:200]})") from None
    return AvroText(
        text=json.dumps(document, separators=(",", ":")),
        identity=json.dumps(document, separators=(",", ":"), sort_keys=True),
    )


def _pair(reader: avro.schema.Schema, writer: avro.schema.Schema, role: str) -> list[str]:
    result = ReaderWriterCompatibilityChecker().get_compatibility(reader, writer)
    if result.compatibility is SchemaCompatibilityType.compatible:
        return []
    kinds = ", ".join(sorted(kind.value for kind in result.incompatibilities))
    where = ", ".join(sorted(result.locations))
    details = "; ".join(sorted(str(message) for message in result.messages))
    return [f"{role}: {kinds} at {where} ({details})"]


def incompatibilities(
    candidate: avro.schema.Schema, existing: list[tuple[int, avro.schema.Schema]], level: str
) -> list[str]:
    """Why `candidate` breaks `level` against `existing` (version, schema) pairs, oldest first;
    an empty list means compatible. Non-transitive levels look at the newest version only."""
    if level == "NONE" or not existing:
        return []
    targets = existing if level.endswith("_TRANSITIVE") else existing[-1:]
    backward = level.startswith(("BACKWARD", "FULL"))
    forward = level.startswith(("FORWARD", "FULL"))
    messages: list[str] = []
    for version, schema in targets:
        if backward:
            messages += _pair(candidate, schema, f"version {version}: new schema cannot read data written with it")
        if forward:
            messages += _pair(schema, candidate, f"version {version}: it cannot read data written with the new schema")
    return messages
