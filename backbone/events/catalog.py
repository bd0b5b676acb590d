"""The event catalog: every event type's Avro schema from `schemas/`, with its field tags, and the
purpose vocabulary. Loaded once at start-up; nothing here runs per event.

Event schemas reference the shared `backbone.Governance` record by name; `EventSchema.avro` is the
self-contained schema (the reference expanded) that is registered and used for encoding.
"""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import yaml
from fastavro import parse_schema

from backbone.errors import BackboneError

GOVERNANCE_NAME = "backbone.Governance"
# The consent event goes to the compacted consent.changes topic, never to a raw topic.
CONSENT_EVENT = "consent.changed"
# The backbone's own record schemas (`schemas/<name>.avsc`), beside the event schemas.
AUDIT_EVENT = "backbone.AuditEvent"
AUDIT_CHECKPOINT = "backbone.AuditCheckpoint"
AUDIT_TIMESTAMP = "backbone.AuditTimestamp"
FRAUD_ALERT = "backbone.FraudAlert"
OPERATOR_ACTION = "backbone.OperatorAction"
TAGS_KEY = "confluent:tags"
PERSONAL_TAGS = frozenset({"PII", "QUASI_ID", "SENSITIVE"})
HEADER_FIELDS = ("event_id", "event_type", "occurred_at", "provider", "governance")


class CatalogError(BackboneError):
    """A schema or the purpose vocabulary could not be loaded; the message names the file."""


@dataclass(slots=True, frozen=True)
class FieldInfo:
    name: str
    type: Any
    doc: str
    tags: frozenset[str]

    @property
    def nullable(self) -> bool:
        return isinstance(self.type, list) and "null" in self.type


@dataclass(frozen=True)
class EventSchema:
    """One event type: `tax.income_declared` with provider `tax`, its schema and tagged fields."""

    event_type: str
    path: Path
    avro: dict[str, Any]
    fields: dict[str, FieldInfo] = field(default_factory=dict)

    @property
    def provider(self) -> str:
        return self.event_type.split(".", 1)[0]

    @property
    def avro_json(self) -> str:
        return json.dumps(self.avro)

    @cached_property
    def parsed(self) -> Any:
        """fastavro's parsed schema, for schemaless reads and writes."""
        return parse_schema(copy.deepcopy(self.avro))

    @property
    def subject_field(self) -> str | None:
        """The field naming the data subject (consent and audit look-ups use it), if any."""
        for name, info in self.fields.items():
            if "PII" in info.tags and name.endswith("national_id"):
                return name
        return None

    def tagged(self, tag: str) -> list[str]:
        return [name for name, info in self.fields.items() if tag in info.tags]


@dataclass(frozen=True)
class Purpose:
    id: str
    label: str
    dpv: str


@dataclass(frozen=True)
class Catalog:
    events: dict[str, EventSchema]
    purposes: dict[str, Purpose]
    internal: dict[str, dict[str, Any]] = field(default_factory=dict)  # `backbone.<Name>` -> schema

    @property
    def raw_event_types(self) -> list[str]:
        """Event types agencies publish to raw topics (every one but the consent event)."""
        return [event_type for event_type in self.events if event_type != CONSENT_EVENT]

    def internal_schema(self, name: str) -> dict[str, Any]:
        """One of the backbone's own schemas (`AUDIT_EVENT`, `FRAUD_ALERT`), as a fresh copy."""
        try:
            return copy.deepcopy(self.internal[name])
        except KeyError:
            raise CatalogError(f"the schema directory lacks {name}.avsc; set BACKBONE_SCHEMAS_DIR to the repository's schemas/") from None

    def event(self, event_type: str) -> EventSchema:
        try:
            return self.events[event_type]
        except KeyError:
            known = ", ".join(sorted(self.events))
            raise CatalogError(f"unknown event type {event_type!r}; known: {known}") from None

    def check_purpose(self, purpose: str) -> None:
        if purpose not in self.purposes:
            raise CatalogError(f"unknown purpose {purpose!r}; see schemas/purposes.yaml")


def _read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise CatalogError(f"{path}: not a readable JSON Avro schema ({exc})") from None


def _expand(node: Any, named: dict[str, dict[str, Any]], seen: set[str]) -> Any:
    """Inline the first use of each named shared type (Avro allows later uses by name)."""
    if isinstance(node, str) and node in named and node not in seen:
        seen.add(node)
        return copy.deepcopy(named[node])
    if isinstance(node, list):
        return [_expand(item, named, seen) for item in node]
    if isinstance(node, dict):
        return {key: _expand(value, named, seen) if key in {"type", "items", "values", "fields"} else value
                for key, value in node.items()}
    return node


def load_event_schema(path: Path, shared: dict[str, dict[str, Any]]) -> EventSchema:
    event_type = path.name.removesuffix(".avsc")
    avro = _expand(_read_json(path), shared, set())
    try:
        parse_schema(copy.deepcopy(avro))
    except Exception as exc:  # fastavro raises several types for invalid schemas
        raise CatalogError(f"{path}: invalid Avro schema ({exc})") from None
    fields = {
        item["name"]: FieldInfo(item["name"], item["type"], item.get("doc", ""), frozenset(item.get(TAGS_KEY, ())))
        for item in avro.get("fields", [])
    }
    missing = [name for name in HEADER_FIELDS if name not in fields]
    if missing:
        raise CatalogError(f"{path}: event schema lacks the header fields {', '.join(missing)}")
    return EventSchema(event_type, path, avro, fields)


def load_purposes(path: Path) -> dict[str, Purpose]:
    try:
        data = yaml.safe_load(path.read_text())
        return {item["id"]: Purpose(item["id"], item["label"], item.get("dpv", "")) for item in data["purposes"]}
    except (OSError, yaml.YAMLError, KeyError, TypeError) as exc:
        raise CatalogError(f"{path}: not a purpose vocabulary (a `purposes:` list of id/label/dpv) ({exc})") from None


def default_catalog() -> Catalog:
    """The catalog in `BACKBONE_SCHEMAS_DIR` (the repository's `schemas/` by default)."""
    from backbone.settings import get_settings

    return load_catalog(get_settings().schemas_dir)


def load_catalog(schemas_dir: Path) -> Catalog:
    """Every `<provider>.<event>.avsc` in `schemas_dir`, plus `purposes.yaml` beside them."""
    if not schemas_dir.is_dir():
        raise CatalogError(f"schema directory {schemas_dir} does not exist; set BACKBONE_SCHEMAS_DIR")
    shared = {}
    internal = {}
    for path in sorted(schemas_dir.glob("backbone.*.avsc")):
        schema = _read_json(path)
        shared[f"{schema.get('namespace', '')}.{schema['name']}"] = schema
        internal[path.name.removesuffix(".avsc")] = schema
    if GOVERNANCE_NAME not in shared:
        raise CatalogError(f"{schemas_dir}: missing {GOVERNANCE_NAME}.avsc, the shared governance record")
    events = {}
    for path in sorted(schemas_dir.glob("*.avsc")):
        if path.name.startswith("backbone."):
            continue
        schema = load_event_schema(path, shared)
        events[schema.event_type] = schema
    return Catalog(events, load_purposes(schemas_dir / "purposes.yaml"), internal)
