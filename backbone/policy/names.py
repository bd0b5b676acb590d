"""The names the backbone keeps for itself, and how an agency name becomes an identifier.

An agency name (`NAME_PATTERN`: lowercase letters, digits, `_` and `-`) is used as it is in Kafka
(principal `User:<agency>`, topics `raw.<agency>.` and `shared.<agency>.`, consumer groups
`<agency>.`) and sanitised in ClickHouse (database `<prefix><agency>`, role `backbone_<database>`),
where `-` and `.` become `_`. So an agency must not take a name the backbone's own principals,
databases or groups use, and two agencies must not sanitise to the same identifier: either would
merge what one may do with what the other may do. Every Kafka prefix of an agency ends with a
delimiter an agency name cannot contain, so `fraud` never covers `fraud-x`.

Pure: `backbone.policy.agreements` refuses charters with such names, `backbone.access.acls` and
`consumers.ddl` build their names from here.
"""

from __future__ import annotations

import uuid
from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass

# The backbone's own Kafka principals (`User:<name>`).
PROCESSOR = "processor"
OPERATOR = "operator"
SCHEMA_REGISTRY = "schema-registry"  # not `registry`: that is the population registry agency
CONSENT = "consent"  # the consent publisher: the provider of consent.changed in the catalog
SINK_PREFIX = "sink-"  # sink-<recipient>
# The backbone's own ClickHouse databases and roles.
AUDIT = "audit"
OVERSIGHT = "oversight"
# Consumer groups and ACL prefixes: `<agency>.`; `.` is not in NAME_PATTERN, so one agency's
# prefix never covers another's.
DELIMITER = "."

RESERVED: dict[str, str] = {
    AUDIT: "the audit database and the audit sink",
    OVERSIGHT: "the oversight role",
    OPERATOR: "the operator's Kafka principal",
    PROCESSOR: "the processor's Kafka principal",
    SCHEMA_REGISTRY: "the schema registry's Kafka principal",
    CONSENT: "the consent publisher's Kafka principal",
    "quality": "the data-quality database and sink",
    "system": "ClickHouse's system database",
    "default": "ClickHouse's default database",
    "information_schema": "ClickHouse's information_schema database",
}
RESERVED_PREFIXES: dict[str, str] = {
    "_": "internal topics such as _schemas",
    SINK_PREFIX: "the sinks' principals (sink-<recipient>) and ClickHouse users",
    "backbone": "the backbone's own groups, topics and ClickHouse users",
}
# Tables a sink keeps in a recipient database beside the event tables: no view may take their name.
RESERVED_TABLES: tuple[str, ...] = ("alerts", "alerts_published")
ALERT_NAMESPACE = uuid.UUID("6f1c5d3e-8a0b-4c55-9a43-0b8f5a1d2c7e")


def alert_id(kind: str, subject: str, period: str) -> str:
    """A fraud alert's deterministic id, its key on `alerts.fraud`: the same finding has the same id in
    every replica and run, and `backbone erase` tombstones an erased person's alerts by it."""
    return str(uuid.uuid5(ALERT_NAMESPACE, "\x00".join((kind, subject, period))))


def sanitise(name: str) -> str:
    """`fraud-x` -> `fraud_x`: the ClickHouse identifier of a name (`-` and `.` become `_`)."""
    return name.replace("-", "_").replace(".", "_")


def reserved_for(name: str, field: str = "recipient") -> str | None:
    """What the backbone uses `name` for, if an agency may not take it as `field` (compared after
    sanitising, so `schema_registry` and `sink_x` are refused as well); None if it is free. The
    consent publisher may be the provider of its own events: that is the principal it is."""
    if field == "provider" and name == CONSENT:
        return None
    safe = sanitise(name)
    for reserved, use in RESERVED.items():
        if safe == sanitise(reserved):
            return use
    for prefix, use in RESERVED_PREFIXES.items():
        if safe.startswith(sanitise(prefix)):
            return use
    return None


def clashes(names: Iterable[str]) -> dict[str, list[str]]:
    """Identifier -> the distinct names (in first-seen order) that sanitise to it, where there are several."""
    seen: dict[str, list[str]] = {}
    for name in names:
        group = seen.setdefault(sanitise(name), [])
        if name not in group:
            group.append(name)
    return {safe: group for safe, group in seen.items() if len(group) > 1}


def group_prefix(agency: str) -> str:
    """`fraud` -> `fraud.`: every consumer group of an agency starts with it."""
    return f"{agency}{DELIMITER}"


def table_name(event_type: str) -> str:
    """`tax.income_declared` -> `tax_income_declared`."""
    return sanitise(event_type)


def view_name(agreement_id: str, event_type: str, event_types: Sequence[str]) -> str:
    """`tax-to-fraud` -> `tax_to_fraud`; `__<event>` is added when the agreement shares several."""
    base = sanitise(agreement_id)
    return base if len(event_types) == 1 else f"{base}__{sanitise(event_type.split('.', 1)[1])}"


@dataclass(slots=True, frozen=True)
class Use:
    """One use of a name in the charter: the name, the field holding it, where (`agreement x@1 in
    agreements/x.yaml`) and the file alone."""

    name: str
    field: str
    where: str
    source: str


def agency_problems(uses: Sequence[Use], recipients: Collection[str]) -> list[str]:
    """Agency names (providers and recipients, in charter order) that are reserved, or that sanitise
    to the identifier of another agency name; each clash is named once, at the later name's first use."""
    problems = []
    for use in uses:
        reason = reserved_for(use.name, use.field)
        if reason is not None:
            problems.append(f"{use.where}: field {use.field}: {use.name} is reserved for {reason}; choose another agency name")
    first = {}
    for use in uses:
        first.setdefault(use.name, use)
    for safe, clashing in clashes(use.name for use in uses).items():
        what = "database" if set(clashing) & set(recipients) else "identifier"
        earliest = first[clashing[0]]
        for name in clashing[1:]:
            later = first[name]
            problems.append(f"{later.where}: field {later.field}: {name} and {earliest.name} (in {earliest.source})"
                            f" both become {what} {safe}; rename one")
    return problems


def view_problems(recipient: str, views: Sequence[tuple[str, Use]], event_types: Iterable[str]) -> list[str]:
    """Views of one recipient's agreements (view name, use of the agreement id) that two agreement ids
    share, or that would take the name of a table in the same database."""
    database = sanitise(recipient)
    tables = {table_name(t): f"table of {t}" for t in event_types} | {t: f"table {t} of the fraud rules" for t in RESERVED_TABLES}
    problems = []
    owner: dict[str, Use] = {}
    for view, use in views:
        if view in tables:
            problems.append(f"{use.where}: field id: its view {view} in database {database} would take the name of the"
                            f" {tables[view]}; rename the agreement")
        other = owner.setdefault(view, use)
        if other.name != use.name:
            problems.append(f"{use.where}: field id: {use.name} and {other.name} (in {other.source}) both become view {view}"
                            f" in database {database}; rename one")
    return problems
