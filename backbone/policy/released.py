"""What an agreement releases, as data: the released fields and the Avro schema of the released
record, from the agreement and the event schema alone. Pure and keyless: sinks plan their tables
and views from it without holding any key; the policy engine builds its output schemas with it.
"""

from __future__ import annotations

import copy
import re
from datetime import UTC, date, datetime, time, timedelta
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


# -- the released time, the only time a shared record's Kafka metadata may carry ------------------

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MONTH = re.compile(r"^(\d{4})-(\d{2})$")
# The longest span one released `occurred_at` value stands for, by its treatment: a record stamped
# with the start of its year can be up to a year older than the event (and the record itself).
RELEASED_PERIOD_DAYS = {"keep": 0, "hour": 1, "day": 1, "month": 31, "year": 366}


def released_timestamp_ms(value: Any) -> int:
    """The Kafka timestamp of a shared record: its released `occurred_at` as milliseconds since the
    epoch, the start of the period when generalised (a year as int, a month as "YYYY-MM", a day or
    hour as a timestamp). Processing time never appears: two copies of one event in two sharing
    domains carry only what each agreement releases. Never below 1 ms: Kafka takes 0 for "now"."""
    if value.__class__ is datetime and value.tzinfo is not None:  # the usual case, in integer arithmetic
        delta = value - _EPOCH
        return max(1, delta.days * 86_400_000 + delta.seconds * 1_000 + delta.microseconds // 1_000)
    if isinstance(value, datetime):
        moment = value if value.tzinfo else value.replace(tzinfo=UTC)
    elif isinstance(value, date):
        moment = datetime.combine(value, time(), tzinfo=UTC)
    elif isinstance(value, int) and not isinstance(value, bool) and 1 <= value <= 9999:
        moment = datetime(value, 1, 1, tzinfo=UTC)
    elif isinstance(value, str) and (match := _MONTH.match(value)) and 1 <= int(match.group(2)) <= 12:
        moment = datetime(int(match.group(1)), int(match.group(2)), 1, tzinfo=UTC)
    else:
        return 1  # nothing released to stamp with: a constant that says nothing of the event
    return max(1, (moment - _EPOCH) // timedelta(milliseconds=1))


def released_period_days(agreement: Agreement) -> int:
    """How far back from the time of writing a shared record's timestamp can lie, beyond the event's
    own age: the span of the agreement's `occurred_at` generalisation (0 when kept exactly)."""
    treatment = agreement.fields.get("occurred_at")
    if treatment is None or treatment.name == "keep":
        return 0
    params = treatment.params.get("to") if isinstance(treatment.params, dict) else treatment.params
    return RELEASED_PERIOD_DAYS.get(params, RELEASED_PERIOD_DAYS["year"]) if isinstance(params, str) else RELEASED_PERIOD_DAYS["year"]
