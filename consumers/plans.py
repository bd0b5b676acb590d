"""What each sink consumes and where it lands it, planned from the charter before any message.

A recipient's plan: its shared topics (one subscription pattern), its database, one table per
provider event type (columns from every agreement version's released schema, TTL from the longest
retention) and one view per agreement. The audit plan: `audit.decisions` into the audit database
(`events`, one row per raw event, and the `decisions` view, one row per event and recipient). The
checkpoints plan: `audit.checkpoints` (the processors' signed checkpoints) into `checkpoints` beside
them, and `audit.timestamps` (RFC 3161 timestamps of checkpoints, when a TSA is configured) into
`timestamps`, so the audit database alone is enough to verify the trail (`consumers.audit_trail`).
Released schemas come from `backbone.policy.released`, which needs no keys: a sink never holds one.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from backbone.clickhouse.cluster import Cluster, cluster_of
from backbone.events.catalog import AUDIT_CHECKPOINT, AUDIT_EVENT, AUDIT_TIMESTAMP, OPERATOR_ACTION, Catalog, load_catalog
from backbone.kafka.topics import (
    AUDIT_TOPIC,
    CHECKPOINTS_PATTERN,
    OPERATIONS_TOPIC,
    TIMESTAMPS_TOPIC,
    shared_event_type,
    shared_pattern,
)
from backbone.policy.agreements import Charter
from backbone.policy.released import released_fields, released_schema
from backbone.settings import Settings
from consumers import ddl
from consumers.typemap import Column, merge_columns, table_columns

SINK_GROUP_PREFIX = "backbone-sink-"
AUDIT_SINK = "audit"
OPERATIONS_SINK = "audit-operations"
CHECKPOINTS_SINK = "audit-checkpoints"
CHECKPOINTS_TABLE = "checkpoints"  # in the audit database
TIMESTAMPS_SINK = "audit-timestamps"
TIMESTAMPS_TABLE = "timestamps"  # in the audit database
# Treatments that keep one value per subject (a masked or generalised subject field would put many on one shard)
SUBJECT_TREATMENTS = frozenset({"pseudonymise", "encrypt", "keep"})


@dataclass(slots=True, frozen=True)
class Destination:
    """One table a sink lands into."""

    database: str
    table: str
    order_by: tuple[str, ...] = ("event_id",)
    retention_days: int | None = None
    shard_by: tuple[str, ...] = ()  # on a sharded cluster, rows go by the first of these (then order_by) the table has
    projections: tuple[ddl.Projection, ...] = ()  # the fraud rules' (consumers.fraud.layout)

    @property
    def name(self) -> str:
        return ddl.qualified(self.database, self.table)


@dataclass
class SinkPlan:
    """What one sink consumes and where it lands it; built from the charter, not per message."""

    name: str
    group_id: str
    subscription: str  # a topic name, or a `^regex`
    route: Callable[[str], Destination]  # topic -> destination
    databases: tuple[str, ...]
    tables: dict[Destination, list[Column]] = field(default_factory=dict)
    views: list[str] = field(default_factory=list)
    cluster: Cluster | None = None  # the DDL runs ON CLUSTER with Replicated tables (None: one node)


def group_id(settings: Settings, name: str) -> str:
    """The consumer group of the sink `name` (the database prefix keeps tenants apart)."""
    return f"{SINK_GROUP_PREFIX}{settings.clickhouse_database_prefix}{name}"


def recipient_plan(settings: Settings, charter: Charter, recipient: str) -> SinkPlan:
    """Tables (from every agreement version's released schema), TTLs and per-agreement views of one agency."""
    database = ddl.database_name(settings.clickhouse_database_prefix, recipient)
    agreements = [a for a in charter.agreements if a.recipient == recipient]
    columns: dict[str, list[Column]] = {}
    retention: dict[str, int] = {}
    subject: dict[str, tuple[str, ...]] = {}  # the subject's (pseudonymised) field: one subject, one shard
    cluster = cluster_of(settings)
    for agreement in agreements:
        for event_type in agreement.event_types:
            schema = released_schema(agreement, charter.catalog.events[event_type])
            subject_field = charter.catalog.events[event_type].subject_field
            treatment = agreement.fields.get(subject_field) if subject_field else None
            if treatment is not None and treatment.name in SUBJECT_TREATMENTS:
                subject[event_type] = (subject_field,)  # type: ignore[assignment]
            where = f"agreement {agreement.key}, {event_type}"
            columns[event_type] = merge_columns(columns.get(event_type, []), table_columns(schema), where)
            retention[event_type] = max(retention.get(event_type, 0), agreement.retention_days)

    def destination(event_type: str) -> Destination:
        table, shard_by = ddl.table_name(event_type), subject.get(event_type, ())
        order_by: tuple[str, ...] = ("event_id",)
        projections: tuple[ddl.Projection, ...] = ()
        if recipient == settings.fraud_recipient:  # laid out for the incremental fraud rules
            from consumers.fraud.layout import fraud_layout

            order_by, projections = fraud_layout(table, [column.name for column in columns.get(event_type, [])], shard_by)
        return Destination(database, table, order_by, retention.get(event_type), shard_by, projections)

    planned = {event_type: destination(event_type) for event_type in columns}

    def route(topic: str) -> Destination:
        event_type = shared_event_type(recipient, topic) or topic
        return planned.get(event_type) or destination(event_type)

    plan = SinkPlan(recipient, group_id(settings, recipient), shared_pattern(recipient), route, (database,), cluster=cluster)
    for event_type, cols in columns.items():
        plan.tables[planned[event_type]] = cols
    for agreement_id in sorted({a.id for a in agreements}):
        current = charter.current(agreement_id)  # the version in force now, else the highest
        for event_type in current.event_types:
            fields = released_fields(current, charter.catalog.events[event_type])
            view = ddl.view_name(agreement_id, event_type, current.event_types)
            plan.views.append(ddl.create_view_sql(database, view, ddl.table_name(event_type), fields, cluster))
    return plan


def _audit_topic_plan(settings: Settings, catalog: Catalog | None, name: str, topic: str, schema_name: str,
                      table: str, order_by: tuple[str, ...], views: tuple[str, ...] = (), shard_by: tuple[str, ...] = ()) -> SinkPlan:
    """One of the backbone's own topics into one table of `<prefix>audit` (every record kept: no TTL)."""
    schema = (catalog or load_catalog(settings.schemas_dir)).internal_schema(schema_name)
    database = ddl.database_name(settings.clickhouse_database_prefix, ddl.AUDIT_DATABASE)
    destination = Destination(database, table, order_by, None, shard_by)
    return SinkPlan(name=name, group_id=group_id(settings, name), subscription=topic, route=lambda _topic: destination,
                    databases=(database,), tables={destination: table_columns(schema)}, views=list(views), cluster=cluster_of(settings))


def audit_plan(settings: Settings, catalog: Catalog | None = None) -> SinkPlan:
    """`audit.decisions` (one record per raw event) into `<prefix>audit.events`, one row per event,
    with the view `<prefix>audit.decisions` giving one row per (event, recipient)."""
    database = ddl.database_name(settings.clickhouse_database_prefix, ddl.AUDIT_DATABASE)
    return _audit_topic_plan(settings, catalog, AUDIT_SINK, AUDIT_TOPIC, AUDIT_EVENT, ddl.AUDIT_EVENTS_TABLE, ("event_id",),
                             (ddl.create_decisions_view_sql(database, cluster_of(settings)),), ("subject_token",))


def operations_plan(settings: Settings, catalog: Catalog | None = None) -> SinkPlan:
    """`audit.operations` (operator actions) into `<prefix>audit.operations`, one row per action."""
    return _audit_topic_plan(settings, catalog, OPERATIONS_SINK, OPERATIONS_TOPIC, OPERATOR_ACTION, ddl.OPERATIONS_TABLE,
                             ("action_id",))


def checkpoints_plan(settings: Settings, catalog: Catalog | None = None) -> SinkPlan:
    """`audit.checkpoints` (signed checkpoints, one per processor batch) and
    `audit.operations.checkpoints` (one per operator action) into `<prefix>audit.checkpoints`, one
    row per (writer, sequence): a redelivered checkpoint collapses, and the verifier reads without
    `FINAL`, so two different ones of a sequence show as a fork."""
    return _audit_topic_plan(settings, catalog, CHECKPOINTS_SINK, CHECKPOINTS_PATTERN, AUDIT_CHECKPOINT, CHECKPOINTS_TABLE,
                             ("writer", "sequence"))


def timestamps_plan(settings: Settings, catalog: Catalog | None = None) -> SinkPlan:
    """`audit.timestamps` (RFC 3161 timestamps of checkpoints) into `<prefix>audit.timestamps`, one
    row per (writer, sequence, gen_time): a redelivered timestamp collapses, a second timestamp of
    the same checkpoint (after a restart) is kept beside the first."""
    return _audit_topic_plan(settings, catalog, TIMESTAMPS_SINK, TIMESTAMPS_TOPIC, AUDIT_TIMESTAMP, TIMESTAMPS_TABLE,
                             ("writer", "sequence", "gen_time"))
