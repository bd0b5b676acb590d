"""The charter's rules beyond the pydantic model: each agreement against the event schemas and the
purpose vocabulary, and the agreements against each other (overlapping active periods, exact links
across sharing domains, names that collide in Kafka or ClickHouse). Pure; `Charter.problems()` runs
them and every problem names file, agreement and field with the fix.
"""

from __future__ import annotations

from backbone.events.catalog import Catalog, EventSchema
from backbone.policy import names
from backbone.policy.agreements import (
    _MACRO_VARIABLE,
    CLEAR_PII_BASES,
    ENVELOPE_TREATABLE,
    ENVELOPE_TREATMENTS,
    GOVERNANCE,
    RELEASED_HEADER,
    Agreement,
    Charter,
    FieldTreatment,
    _where,
)
from backbone.policy.dp_release import dp_problems
from backbone.policy.treatments import TreatmentMisfit, TreatmentScope, compile_treatment


def charter_problems(charter: Charter) -> list[str]:
    """Every problem with the charter's agreements, each naming file, agreement and field."""
    found = []
    for agreement in charter.agreements:
        found.extend(check_agreement(agreement, charter.catalog, charter.source(agreement)))
    found.extend(_overlaps(charter))
    found.extend(_links(charter))
    found.extend(_names(charter))
    return found


def check_agreement(agreement: Agreement, catalog: Catalog, source: str) -> list[str]:
    """Problems with one agreement against the event schemas and the purpose vocabulary."""
    where = _where(agreement, source)
    problems: list[str] = []
    schemas: list[EventSchema] = []
    for event_type in agreement.event_types:
        schema = catalog.events.get(event_type)
        if schema is None:
            problems.append(f"{where}: unknown event type {event_type!r}; known: {', '.join(sorted(catalog.events))}")
        elif schema.provider != agreement.provider:
            problems.append(f"{where}: event type {event_type} is published by {schema.provider}, not by provider {agreement.provider}")
        else:
            schemas.append(schema)
    for purpose in agreement.purposes:
        if purpose not in catalog.purposes:
            problems.append(f"{where}: unknown purpose {purpose!r}; use one of {', '.join(catalog.purposes)} (schemas/purposes.yaml)")
    if agreement.lawful_basis == "consent":
        for schema in schemas:
            if schema.subject_field is None:
                problems.append(f"{where}: consent basis needs events naming their data subject, but {schema.event_type} has no subject field")
    if agreement.survives_erasure and agreement.lawful_basis != "legal_obligation":
        problems.append(
            f"{where}: field survives_erasure: only a legal_obligation basis outlives a subject's erasure, this agreement's"
            f" basis is {agreement.lawful_basis}; remove survives_erasure or make the basis legal_obligation"
        )
    for name, treatment in agreement.fields.items():
        problems.extend(_check_field(agreement, where, name, treatment, schemas))
    problems.extend(_check_condition(agreement, where, schemas))
    problems.extend(dp_problems(agreement, catalog, where))
    return problems


def _check_field(agreement: Agreement, where: str, name: str, treatment: FieldTreatment, schemas: list[EventSchema]) -> list[str]:
    if name in RELEASED_HEADER and name not in ENVELOPE_TREATABLE:
        return [f"{where}: field {name} is a header field, always released; remove it from fields"]
    if name in ENVELOPE_TREATABLE and treatment.name not in ENVELOPE_TREATMENTS:
        return [f"{where}: field {name} is an envelope field: keep it or generalise it (e.g. {{generalise: day}}); it cannot be {treatment.name}"]
    if name == GOVERNANCE:
        return [f"{where}: field governance is never released (the agreement's purposes stand for it); remove it from fields"]
    problems = []
    scope = TreatmentScope(agreement.domain, agreement.provider, None, agreement.recipient)
    for schema in schemas:
        info = schema.fields.get(name)
        if info is None:
            payload = [f for f in schema.fields if f not in RELEASED_HEADER and f != GOVERNANCE]
            problems.append(f"{where}: field {name} is not in {schema.event_type}; its fields: {', '.join(payload)}")
            continue
        try:
            compile_treatment(treatment.name, treatment.params, info, scope)
        except TreatmentMisfit as exc:
            problems.append(f"{where}: field {name} ({schema.event_type}): {exc}")
            continue
        if treatment.name == "keep" and "PII" in info.tags:
            if not (agreement.identified and agreement.lawful_basis in CLEAR_PII_BASES):
                problems.append(
                    f"{where}: field {name} is PII; keep needs identified: true and a legal_obligation or public_task basis"
                    " (or pseudonymise, encrypt, mask or drop it)"
                )
        if treatment.name == "generalise" and "PII" in info.tags:
            problems.append(f"{where}: field {name} is PII and cannot be generalised; pseudonymise, encrypt, mask or drop it")
    return problems


def _check_condition(agreement: Agreement, where: str, schemas: list[EventSchema]) -> list[str]:
    if agreement.condition is None:
        return []
    try:
        program = agreement.program
    except Exception as exc:  # noqa: BLE001 - the CEL binding raises ValueError and others
        first_line = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        return [f"{where}: field condition: the CEL condition does not compile ({first_line})"]
    bound = set(_MACRO_VARIABLE.findall(agreement.condition))
    problems = []
    for schema in schemas:
        unknown = [name for name in program.variables() if name not in schema.fields and name not in bound]
        for name in unknown:
            problems.append(f"{where}: field {name} named in the condition is not a field of {schema.event_type}")
        if agreement.identified:
            continue
        # Selecting on a value the recipient does not receive discloses it bit by bit.
        for name in program.variables():
            info = schema.fields.get(name)
            if info is not None and "PII" in info.tags:
                problems.append(
                    f"{where}: field {name} is PII and the condition selects on it ({schema.event_type}); conditions may read"
                    " only fields not tagged PII unless the agreement is identified: true"
                )
    return problems


def _overlaps(charter: Charter) -> list[str]:
    active = sorted((a for a in charter.agreements if a.status == "active"), key=lambda a: (a.id, a.version))
    problems = []
    for index, first in enumerate(active):
        for second in active[index + 1:]:
            if not _periods_overlap(first, second):
                continue
            where = _where(second, charter.source(second))
            other = f"{first.key} in {charter.source(first)}"
            if first.id == second.id:
                problems.append(
                    f"{where}: field valid_from: active period {_period(second)} overlaps active version {other} ({_period(first)});"
                    " end one version before the next begins, or suspend one"
                )
                continue
            shared = [t for t in second.event_types if t in first.event_types]
            if first.provider == second.provider and first.recipient == second.recipient and shared:
                problems.append(
                    f"{where}: field event_types: {', '.join(shared)} to {second.recipient} is already shared by active agreement"
                    f" {other} in an overlapping period; one agreement per provider, recipient and event type at a time"
                )
    return problems


def exact_links(agreement: Agreement, schema: EventSchema) -> set[str]:
    """Fields `agreement` releases for `schema` exactly enough to join records on across domains:
    the event time kept to the millisecond, and personal fields (PII, QUASI_ID) kept or masked."""
    linking = set()
    occurred = agreement.fields.get("occurred_at")
    if occurred is None or occurred.name == "keep":
        linking.add("occurred_at")
    for name, treatment in agreement.fields.items():
        info = schema.fields.get(name)
        if info is not None and treatment.name in {"keep", "mask"} and info.tags & {"PII", "QUASI_ID"}:
            linking.add(name)
    return linking


def _links(charter: Charter) -> list[str]:
    """Two agreements of different sharing domains that could apply together (neither revoked,
    periods overlapping) must not both release the same event with the same exact linking field,
    unless each names it in `linkable_by`."""
    live = sorted((a for a in charter.agreements if a.status != "revoked"), key=lambda a: (a.id, a.version))
    problems = []
    for index, first in enumerate(live):
        for second in live[index + 1:]:
            if first.provider != second.provider or first.linkage_domain == second.linkage_domain:
                continue
            if not _periods_overlap(first, second):
                continue
            for event_type in (t for t in second.event_types if t in first.event_types):
                schema = charter.catalog.events.get(event_type)
                if schema is None:
                    continue
                for name in sorted(exact_links(first, schema) & exact_links(second, schema)):
                    for agreement, other in ((second, first), (first, second)):
                        if name in agreement.linkable_by:
                            continue
                        fix = "{generalise: day}" if name == "occurred_at" else "pseudonymise, generalise or drop"
                        problems.append(
                            f"{_where(agreement, charter.source(agreement))}: field {name}: released exactly for {event_type} while"
                            f" {other.key} (domain {other.linkage_domain}) releases it exactly too, so their records link;"
                            f" {fix} it in one of them, or state linkable_by: [{name}] in both on purpose"
                        )
    return problems


def _names(charter: Charter) -> list[str]:
    """Agency names the backbone keeps for itself or that become one identifier, and agreement ids
    that become one view (or a table's name) in a recipient database (`backbone.policy.names`)."""
    ordered = sorted(charter.agreements, key=lambda a: (charter.source(a), a.id, a.version))

    def use(agreement: Agreement, name: str, role: str) -> names.Use:
        return names.Use(name, role, _where(agreement, charter.source(agreement)), charter.source(agreement))

    agencies = [use(a, getattr(a, role), role) for a in ordered for role in ("provider", "recipient")]
    problems = names.agency_problems(agencies, {a.recipient for a in ordered})
    for recipient in sorted({a.recipient for a in ordered}):
        mine = [a for a in ordered if a.recipient == recipient]
        views = [(names.view_name(a.id, t, a.event_types), use(a, a.id, "id")) for a in mine for t in a.event_types]
        problems += names.view_problems(recipient, views, [t for a in mine for t in a.event_types])
    return problems


def _periods_overlap(first: Agreement, second: Agreement) -> bool:
    first_ends_after = first.valid_until is None or second.valid_from < first.valid_until
    second_ends_after = second.valid_until is None or first.valid_from < second.valid_until
    return first_ends_after and second_ends_after


def _period(agreement: Agreement) -> str:
    until = agreement.valid_until.date().isoformat() if agreement.valid_until else "open-ended"
    return f"{agreement.valid_from.date().isoformat()}..{until}"
