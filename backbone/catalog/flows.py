"""Flows as enforced: per agreement version and event type, the raw topic it reads, the shared topic
it writes, the recipient's table and view the sink lands it in, and for each released field the
source field and the treatment that made it. Everything the lineage and catalogue say comes from here.

A field the agreement drops, or does not list, is not released: it has no output column. `event_id`
is released as the recipient's own id for the event (derived under the domain key), the other
header fields as the event carries them unless the agreement treats them (`occurred_at`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from backbone.events.catalog import EventSchema
from backbone.kafka.topics import raw_topic, shared_topic
from backbone.policy.agreements import Agreement, Charter, released_header
from backbone.policy.names import sanitise, table_name, view_name
from backbone.policy.released import released_schema
from backbone.policy.treatments import TreatmentScope, compile_treatment

# treatment -> (OpenLineage column-lineage transformation subtype, masking): only `keep` releases
# the value itself; every other treatment releases something computed from it that hides it.
TRANSFORMATIONS: dict[str, tuple[str, bool]] = {
    "keep": ("IDENTITY", False),
    "pseudonymise": ("TRANSFORMATION", True),
    "encrypt": ("TRANSFORMATION", True),
    "generalise": ("TRANSFORMATION", True),
    "mask": ("TRANSFORMATION", True),
    "derive": ("TRANSFORMATION", True),
}
# The recipient's own event id, derived per recipient under the domain key (not an agreement treatment).
DERIVED_ID = "derive"


@dataclass(frozen=True, slots=True)
class Column:
    """One released field: where it comes from and what was done to it."""

    name: str  # in the shared topic, the table and the view
    source: str  # the raw event's field
    treatment: str  # keep, pseudonymise, encrypt, generalise, mask, or derive (event_id)
    params: Any
    description: str
    tags: tuple[str, ...]  # the source field's classification tags (PII, QUASI_ID, SENSITIVE)
    avro_type: Any  # the released type

    @property
    def subtype(self) -> str:
        return TRANSFORMATIONS[self.treatment][0]

    @property
    def masking(self) -> bool:
        return TRANSFORMATIONS[self.treatment][1]


@dataclass(frozen=True, slots=True)
class Flow:
    """One event type shared under one agreement version: raw topic -> shared topic -> table/view."""

    agreement: Agreement
    schema: EventSchema
    raw_topic: str
    shared_topic: str
    database: str
    table: str
    view: str
    columns: tuple[Column, ...]
    dropped: tuple[str, ...]  # payload fields not released (dropped or not listed)
    condition_fields: tuple[str, ...]  # the fields the CEL condition selects on
    released: dict[str, Any]  # Avro schema of the released record

    @property
    def event_type(self) -> str:
        return self.schema.event_type

    def column(self, name: str) -> Column:
        return next(column for column in self.columns if column.name == name)


def _describe(treatment: str, params: Any) -> str:
    if params is None:
        return treatment
    if isinstance(params, dict):
        inner = ", ".join(f"{key}: {value}" for key, value in params.items())
        return f"{treatment} ({inner})"
    return f"{treatment} ({params})"


def columns(agreement: Agreement, schema: EventSchema) -> tuple[Column, ...]:
    """The released columns in the released record's order, header first."""
    scope = TreatmentScope(agreement.domain, agreement.provider, None, agreement.recipient)
    out = []
    header = set(released_header(agreement))
    for entry in released_schema(agreement, schema)["fields"]:
        name = entry["name"]
        info = schema.fields[name]
        if name in header:
            treatment, params = (DERIVED_ID, None) if name == "event_id" else ("keep", None)
            description = ("the recipient's own id for the event, derived under the sharing domain's key"
                           if name == "event_id" else "keep: kept as provided")
        else:
            chosen = agreement.fields[name]
            treatment, params = chosen.name, chosen.params
            compiled = compile_treatment(treatment, params, info, scope)
            description = f"{_describe(treatment, params)}: {compiled.description}"
        avro_type = entry["type"]
        out.append(Column(name, name, treatment, params, description, tuple(sorted(info.tags)), avro_type))
    return tuple(out)


def database_name(prefix: str, recipient: str) -> str:
    """The recipient's ClickHouse database, as the sinks name it (`consumers.ddl.database_name`)."""
    return f"{prefix}{sanitise(recipient)}"


def flow(agreement: Agreement, schema: EventSchema, database_prefix: str = "") -> Flow:
    released = columns(agreement, schema)
    names = {column.name for column in released}
    dropped = tuple(name for name in schema.fields if name not in names and name != "governance")
    condition = tuple(sorted(agreement.program.variables())) if agreement.condition else ()
    return Flow(
        agreement=agreement,
        schema=schema,
        raw_topic=raw_topic(schema.event_type),
        shared_topic=shared_topic(agreement.recipient, schema.event_type),
        database=database_name(database_prefix, agreement.recipient),
        table=table_name(schema.event_type),
        view=view_name(agreement.id, schema.event_type, agreement.event_types),
        columns=released,
        dropped=dropped,
        condition_fields=tuple(name for name in condition if name in schema.fields),
        released=released_schema(agreement, schema),
    )


def agreement_flows(agreement: Agreement, charter: Charter, database_prefix: str = "") -> tuple[Flow, ...]:
    """Every flow of one agreement version, one per event type it shares."""
    return tuple(flow(agreement, charter.catalog.events[event_type], database_prefix) for event_type in agreement.event_types)


def charter_flows(charter: Charter, database_prefix: str = "") -> tuple[Flow, ...]:
    """Every flow of every agreement version of the charter, by agreement key then event type."""
    return tuple(f for agreement in sorted(charter.agreements, key=lambda a: (a.id, a.version))
                 for f in agreement_flows(agreement, charter, database_prefix))
