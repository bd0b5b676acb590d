"""Avro schema identity, references and compatibility levels (pure: no I/O).

Two schemas are the same schema when their JSON is equal after key sorting and whitespace removal
(docs, defaults and tags count, as in Confluent's registry) and they name the same references. A
primitive type written as an object keeps only the attributes Avro gives meaning to (Java Avro, and
so Confluent and Karapace, drop `name`, `namespace`, `doc`, `aliases` there): `{"type": "string",
"name": "x"}` is the schema `"string"`. Compatibility is decided by the `avro` library's
`ReaderWriterCompatibilityChecker`.
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


PRIMITIVES = frozenset({"null", "boolean", "int", "long", "float", "double", "bytes", "string"})
# Attributes Java Avro never keeps on a primitive type (Schema.SCHEMA_RESERVED less "type").
_DROPPED_ON_PRIMITIVES = frozenset({"doc", "fields", "items", "name", "namespace", "size", "symbols", "values", "aliases"})


@dataclass(slots=True, frozen=True)
class Reference:
    """A named type the schema uses, defined by `subject` version `version` (Confluent's references)."""

    name: str
    subject: str
    version: int

    def body(self) -> dict[str, Any]:
        return {"name": self.name, "subject": self.subject, "version": self.version}


@dataclass(slots=True, frozen=True)
class AvroText:
    """An Avro schema as registered: the text stored and served, its references, and its identity key."""

    text: str
    identity: str
    references: tuple[Reference, ...] = ()

    def parsed(self, names: avro.schema.Names | None = None) -> avro.schema.Schema:
        """The avro library's parse; `names` holds the referenced named types, already parsed."""
        if names is None:
            return avro.schema.parse(self.text)
        return avro.schema.make_avsc_object(json.loads(self.text), names)


def normalised(node: Any) -> Any:
    """`node` with primitive types written as objects reduced as Java Avro reduces them."""
    if isinstance(node, list):
        return [normalised(item) for item in node]
    if not isinstance(node, dict):
        return node
    if node.get("type") in PRIMITIVES:
        kept = {key: value for key, value in node.items() if key not in _DROPPED_ON_PRIMITIVES}
        return kept["type"] if len(kept) == 1 else kept
    reduced = {key: normalised(value) if key in {"type", "items", "values"} else value for key, value in node.items()}
    if isinstance(node.get("fields"), list):
        reduced["fields"] = [
            {**item, "type": normalised(item["type"])} if isinstance(item, dict) and "type" in item else item
            for item in node["fields"]
        ]
    return reduced


def identity_of(document: Any, references: tuple[Reference, ...] = ()) -> str:
    """The key under which equal schemas are one schema (one id)."""
    identity = json.dumps(normalised(document), separators=(",", ":"), sort_keys=True)
    if references:
        identity += json.dumps([r.body() for r in references], separators=(",", ":"), sort_keys=True)
    return identity


def parse_references(raw: Any) -> tuple[Reference, ...]:
    """The `references` field of a request or log record; 42201 when malformed."""
    if raw is None:
        return ()
    if not isinstance(raw, list):
        raise invalid_schema("'references' must be a list of {name, subject, version} objects")
    found = []
    for item in raw:
        try:
            name, subject, version = item["name"], item["subject"], item["version"]
        except (KeyError, TypeError):
            raise invalid_schema("each reference needs a name, a subject and a version") from None
        if not (isinstance(name, str) and isinstance(subject, str) and isinstance(version, int)) or isinstance(version, bool):
            raise invalid_schema("a reference's name and subject are strings and its version an integer")
        found.append(Reference(name, subject, version))
    return tuple(found)


def self_contained(text: str, referenced: list[str]) -> dict[str, Any] | str | list[Any]:
    """`text` with its referenced named types defined inline at their first use, for readers that
    know nothing of references (fastavro, the generated decoder). `referenced` holds the texts of
    every schema it references, directly or not, dependencies first, each once."""
    names = avro.schema.Names()
    for document in referenced:
        avro.schema.make_avsc_object(json.loads(document), names)
        names.default_namespace = None
    return avro.schema.make_avsc_object(json.loads(text), names).to_json(avro.schema.Names())


def parse_avro(text: Any, references: tuple[Reference, ...] = ()) -> AvroText:
    """Read `text` as an Avro schema; raise the 42201 `ApiError` when it is not one. A schema with
    references is checked against them by the registry (`RegistryState.resolve`), which knows them."""
    if not isinstance(text, str):
        raise invalid_schema("the 'schema' field must be a string holding the schema's JSON")
    try:
        document = json.loads(text)
    except json.JSONDecodeError as exc:
        raise invalid_schema(f"not JSON (line {exc.lineno}, column {exc.colno})") from None
    if not references:
        try:
            avro.schema.parse(text)
        except Exception as exc:  # noqa: BLE001 - avro raises SchemaParseException and friends
            raise invalid_schema(f"not a valid Avro schema ({type(exc).__name__}: {str(exc)[:200]})") from None
    return AvroText(json.dumps(document, separators=(",", ":")), identity_of(document, references), references)


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
