"""What an agreement releases, as data: the released fields and the Avro schema of the released
record, from the agreement and the event schema alone. Pure and keyless: sinks plan their tables
and views from it without holding any key; the policy engine builds its output schemas with it.
"""

from __future__ import annotations

import copy
from typing import Any

from backbone.events.catalog import EventSchema, FieldInfo
from backbone.policy.agreements import Agreement, released_header
from backbone.policy.treatments import CompiledTreatment, TreatmentScope, compile_treatment


def header_entries(agreement: Agreement, schema: EventSchema) -> list[dict[str, Any]]:
    """The header fields every released record carries, as the event schema declares them (but
    envelope fields the agreement treats, like `occurred_at`, which come with the payload). The
    `event_id` is the recipient's own id for the event (derived per recipient), of the same type."""
    by_name = {entry["name"]: entry for entry in schema.avro["fields"]}
    return [copy.deepcopy(by_name[name]) for name in released_header(agreement)]


def field_entry(name: str, info: FieldInfo, treatment: str, compiled: CompiledTreatment) -> dict[str, Any]:
    """The Avro field of one released field: the treatment's output type (nullable when the source
    field is), a doc naming the treatment, and the personal-data tags only when kept in clear."""
    avro_type = ["null", compiled.avro_type] if info.nullable else compiled.avro_type
    entry: dict[str, Any] = {"name": name, "type": avro_type, "doc": f"{info.doc} [{treatment}: {compiled.description}]"}
    if info.nullable:
        entry["default"] = None
    if treatment == "keep" and info.tags:
        entry["confluent:tags"] = sorted(info.tags)
    entry["backbone:treatment"] = treatment
    return entry


def record_schema(agreement: Agreement, schema: EventSchema, fields: list[dict[str, Any]]) -> dict[str, Any]:
    """The released record: namespace `backbone.shared.<recipient>.<provider>`, the event's name."""
    return {
        "type": "record",
        "name": schema.avro["name"],
        "namespace": ".".join(part.replace("-", "_") for part in ("backbone", "shared", agreement.recipient, agreement.provider)),
        "doc": f"{schema.event_type} as released to {agreement.recipient} under agreement {agreement.key}",
        "fields": fields,
    }


def released_schema(agreement: Agreement, schema: EventSchema) -> dict[str, Any]:
    """Avro schema of the records `agreement` releases for `schema`'s event type (no keys needed)."""
    scope = TreatmentScope(agreement.domain, agreement.provider, None, agreement.recipient)
    fields = header_entries(agreement, schema)
    for name, info in schema.fields.items():  # schema order: the engine's record layout
        treatment = agreement.fields.get(name)
        if treatment is None:
            continue
        compiled = compile_treatment(treatment.name, treatment.params, info, scope)
        if compiled.released:
            fields.append(field_entry(name, info, treatment.name, compiled))
    return record_schema(agreement, schema, fields)


def released_fields(agreement: Agreement, schema: EventSchema) -> tuple[str, ...]:
    """Names of the fields `agreement` releases for `schema`'s event type, header first."""
    return tuple(entry["name"] for entry in released_schema(agreement, schema)["fields"])
