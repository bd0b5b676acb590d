"""Names and SQL of the per-agency databases: tables, per-agreement views, users, roles and grants.

Pure functions from names and columns to SQL text, no I/O: the sink runs them, tests read them.
One database per agency (`<prefix><agency>`), one table per provider event type
(`tax.income_declared` -> `tax_income_declared`), one view per agreement (`tax-to-fraud` ->
`tax_to_fraud`, with `__<event>` when the agreement shares several event types). Names are
sanitised by `backbone.policy.names`, which also keeps the names the backbone reserves.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from backbone.clickhouse.cluster import REPLICA_PATH, Cluster, engine, on_cluster
from backbone.clickhouse.users import Credential  # noqa: F401 - this module's API too
from backbone.policy.names import SINK_PREFIX as SINK_WORKLOAD_PREFIX
from backbone.policy.names import sanitise, table_name, view_name  # noqa: F401 - table_name, view_name: this module's API too
from consumers.typemap import Column, quote_identifier

if TYPE_CHECKING:
    from backbone.policy.agreements import Charter

AUDIT_DATABASE = "audit"
QUALITY_DATABASE = "quality"  # data-quality windows and scorecards (consumers/quality.py), landed by the audit sink
AUDIT_TABLE = "decisions"  # a view: one row per (event, recipient), over AUDIT_EVENTS_TABLE
AUDIT_EVENTS_TABLE = "events"  # one row per raw event, its decisions in an array
OPERATIONS_TABLE = "operations"
OVERSIGHT_ROLE = "oversight"
LANDED_AT = "_landed_at"
LANDED_AT_DEFAULT = "toStartOfDay(now())"
# The landing of a fraud table's row: the microsecond its insert (one landed batch) began, the same
# for the whole batch. The incremental fraud rules resume from it (`consumers.fraud.watermarks`); it
# is in the fraud tables only, no agreement view shows it (copies of an event landed for several
# recipients in the same microsecond would link them), and it is not a retention clock.
LANDED_SEQ = "_landed_seq"
LANDED_SEQ_DEFAULT = "toUnixTimestamp64Micro(now64(6))"
OCCURRED_AT = "occurred_at"
ROLE_PREFIX = "backbone_"
# The fraud rules' findings, and the findings the broker acknowledged on `alerts.fraud`.
ALERTS_TABLE = "alerts"
PUBLISHED_TABLE = "alerts_published"
# Where each fraud rule's incremental runs resume (consumers.fraud.watermarks).
WATERMARKS_TABLE = "rule_watermarks"
# The projection of a fraud table's rule keys ordered by landing (`LANDED_SEQ`, `consumers.fraud.layout`);
# the name changed from `landed` (ordered by landing day), so tables made before are migrated.
LANDED_PROJECTION = "landed_seq"
# Rows per granule of a table with projections (the fraud tables): an incremental fraud run reads
# about a granule per subject (or account) that landed beside that subject's rows, so granules far
# smaller than ClickHouse's 8192 keep its read near what landed, not the table (bench.fraud: with
# 8192 a landing touching 10k subjects reads every granule of a 10 M row table). The price is the
# primary index in memory, about rows / 64 keys (~40 bytes each): 6 MB per 10 M rows.
PROJECTED_INDEX_GRANULARITY = 64
# Bytes of a compressed block (at least, at most) in those tables: ClickHouse's 64 KiB default packs ~30
# such granules of a string column into one block, so reading one touched subject's granule
# decompressed ~30; blocks near a granule's size make a sparse read cost what it reads (bench.fraud,
# 10 M rows: an incremental run's time -32 %, unchanged at 1 M where runs read most granules; about
# 10-20 % more disk).
PROJECTED_COMPRESS_BLOCK = (2048, 8192)
COMPRESS_BLOCK_SETTINGS = (f"min_compress_block_size = {PROJECTED_COMPRESS_BLOCK[0]}",
                           f"max_compress_block_size = {PROJECTED_COMPRESS_BLOCK[1]}")
# Seconds after which a fraud table's parts, all older than that, are merged whatever their sizes
# (ClickHouse's `min_age_to_force_merge_seconds`). An incremental run reads a granule per touched
# subject in every part, and the size-ratio merges leave more parts the bigger a table grows
# (bench.fraud: 5-8 at 10 M rows, 8-12 at 30 M); with this the table is one old part and the parts
# of the last hour's landings, whatever its size. Paid in rewrites: the old part is written again
# about once this period while landings arrive (bounded by `max_bytes_to_merge_at_max_space_in_pool`).
# An operator's own value (`ALTER TABLE ... MODIFY SETTING`) is kept by `backbone fraud migrate`.
PROJECTED_MERGE_AGE_S = 3600
MERGE_AGE_SETTING = "min_age_to_force_merge_seconds"
# `alerts` keeps each finding's first alert: a ReplacingMergeTree versioned by how early it was detected,
# so a run records its findings without asking which it holds already (that look-up read most of a
# 5 M alert table per landing: bench.fraud 1.0-1.75 s) and a repeat collapses into the first (`FINAL`).
ALERTS_VERSION = "first_seen"


@dataclass(slots=True, frozen=True)
class Projection:
    """A projection of a table: `columns` kept again, ordered by `order_by` (ClickHouse reads it
    instead of the table for a query it covers, with no `FINAL`)."""

    name: str
    columns: tuple[str, ...]
    order_by: tuple[str, ...]

    @property
    def ddl(self) -> str:
        names = ", ".join(quote_identifier(name) for name in self.columns)
        order = ", ".join(quote_identifier(name) for name in self.order_by)
        return f"PROJECTION {quote_identifier(self.name)} (SELECT {names} ORDER BY ({order}))"


def database_name(prefix: str, agency: str) -> str:
    """`fraud` -> `fraud` (or `t1_fraud` with prefix `t1_`)."""
    return f"{prefix}{sanitise(agency)}"


def qualified(database: str, table: str) -> str:
    return f"{quote_identifier(database)}.{quote_identifier(table)}"


def create_database_sql(database: str, cluster: Cluster | None = None) -> str:
    return f"CREATE DATABASE IF NOT EXISTS {quote_identifier(database)}{on_cluster(cluster)}"


def create_table_sql(
    database: str, table: str, columns: Sequence[Column], order_by: Sequence[str], retention_days: int | None,
    cluster: Cluster | None = None, projections: Sequence[Projection] = (), replica_path: str = REPLICA_PATH,
) -> str:
    """A ReplacingMergeTree keyed on `order_by` (the event id, after the subject's column where rules
    join by subject): redelivered events collapse into one row on merge, and `FINAL` hides duplicates
    before then. The TTL (the agreement's retention) counts from the event's time (`retention_clock`).
    `_landed_at` is the day of landing, not its second: the recipient reads it, and every recipient's
    copy of an event lands in the same second, which would link copies across sharing domains
    (retention counts in days anyway). `projections` (the fraud tables': `consumers.fraud.layout`)
    let a query read a few keys of another order without reading the table. On a
    cluster: a ReplicatedReplacingMergeTree `ON CLUSTER`, named `<table>_local` when sharded (`table_sql`)."""
    # A sink states its table with a writer schema's columns to add the ones it lacks: ClickHouse
    # checks a statement's key and projections even when the table exists, so both keep to those columns.
    names = {column.name for column in columns} | {LANDED_AT, LANDED_SEQ}
    order_by = tuple(name for name in order_by if name in names) or tuple(order_by)
    projections = [projection for projection in projections if {*projection.columns, *projection.order_by} <= names]
    sequenced = any(LANDED_SEQ in projection.columns for projection in projections)
    body = ",\n  ".join([*(column.ddl for column in columns), f"{quote_identifier(LANDED_AT)} DateTime DEFAULT {LANDED_AT_DEFAULT}",
                         *([f"{quote_identifier(LANDED_SEQ)} UInt64 DEFAULT {LANDED_SEQ_DEFAULT}"] if sequenced else []),
                         *(projection.ddl for projection in projections)])
    key = ", ".join(quote_identifier(name) for name in order_by)
    clock = quote_identifier(retention_clock(columns))
    ttl = f"\nTTL {clock} + INTERVAL {int(retention_days)} DAY" if retention_days else ""
    name = qualified(database, cluster.local(table) if cluster else table)
    settings = table_settings(columns, order_by, bool(projections))
    return (
        f"CREATE TABLE IF NOT EXISTS {name}{on_cluster(cluster)} (\n  {body}\n)\n"
        f"ENGINE = {engine(cluster, path=replica_path)}\nORDER BY ({key}){ttl}{settings}"
    )


def table_settings(columns: Sequence[Column], order_by: Sequence[str], projected: bool = False) -> str:
    """`SETTINGS` a table needs: a Nullable column in its key (a subject may be absent from an
    event), and a projection on a ReplacingMergeTree, which ClickHouse otherwise refuses to merge or
    to delete rows from (`backbone erase`); rebuilt, it stays exact."""
    types = {column.name: column.type for column in columns}
    settings = []
    if any(types.get(name, "").startswith("Nullable(") for name in order_by):
        settings.append("allow_nullable_key = 1")
    if projected:  # the fraud tables (consumers.fraud.layout), read a few subjects at a time
        settings += [f"index_granularity = {PROJECTED_INDEX_GRANULARITY}", *COMPRESS_BLOCK_SETTINGS,
                     f"{MERGE_AGE_SETTING} = {PROJECTED_MERGE_AGE_S}",
                     "deduplicate_merge_projection_mode = 'rebuild'", "lightweight_mutation_projection_mode = 'rebuild'"]
    return f"\nSETTINGS {', '.join(settings)}" if settings else ""


def shard_key_sql(columns: Sequence[Column], preferred: Sequence[str]) -> str:
    """What a sharded cluster places rows by: the first of `preferred` (the subject's column, then
    the event id) the table has, so one subject's rows, and every copy of one event, share a shard."""
    types = {column.name: column.type for column in columns}
    for name in preferred:
        if name in types:
            quoted = quote_identifier(name)
            return f"assumeNotNull({quoted})" if types[name].startswith("Nullable(") else quoted
    return quote_identifier(columns[0].name)


def table_sql(
    database: str, table: str, columns: Sequence[Column], order_by: Sequence[str], retention_days: int | None,
    cluster: Cluster | None = None, shard_by: Sequence[str] = (), projections: Sequence[Projection] = (),
    replica_path: str = REPLICA_PATH,
) -> list[str]:
    """`create_table_sql`, and on a sharded cluster the `Distributed` table named `table` over it,
    rows placed by `shard_key_sql(columns, shard_by + order_by)`."""
    statements = [create_table_sql(database, table, columns, order_by, retention_days, cluster, projections, replica_path)]
    if cluster is not None and cluster.sharded:
        key = shard_key_sql(columns, [*shard_by, *order_by])
        statements.append(f"CREATE TABLE IF NOT EXISTS {qualified(database, table)}{cluster.on} "
                          f"AS {qualified(database, cluster.local(table))} ENGINE = {cluster.distributed_engine(database, table, key)}")
    return statements


def cluster_tables(table: str, cluster: Cluster | None) -> list[str]:
    """The tables a column change applies to: the table, and its local tables on a sharded cluster."""
    return [cluster.local(table), table] if cluster is not None and cluster.sharded else [table]


def retention_clock(columns: Sequence[Column]) -> str:
    """The column retention counts from: the event's time `occurred_at` when the table holds it as
    a time (kept, or generalised to the hour or day), so data is kept for the agreed days after the
    fact, not after it reached the recipient; else the landing time `_landed_at` (an `occurred_at`
    generalised to a month or a year is a string or a number: research receives the year only)."""
    for column in columns:
        if column.name == OCCURRED_AT and column.type.startswith(("DateTime", "Nullable(DateTime")):
            return OCCURRED_AT
    return LANDED_AT


def add_columns_sql(database: str, table: str, columns: Iterable[Column], cluster: Cluster | None = None) -> str | None:
    """`ALTER TABLE ... ADD COLUMN IF NOT EXISTS` for fields a newer schema brings; None if none."""
    clauses = [f"ADD COLUMN IF NOT EXISTS {column.ddl}" for column in columns]
    if not clauses:
        return None
    return f"ALTER TABLE {qualified(database, table)}{on_cluster(cluster)} " + ", ".join(clauses)


def coarsen_landed_at_sql(database: str, table: str, cluster: Cluster | None = None) -> list[str]:
    """For a table made before `_landed_at` became the day of landing: its default, then its rows."""
    column = quote_identifier(LANDED_AT)
    statements = [f"ALTER TABLE {qualified(database, name)}{on_cluster(cluster)} MODIFY COLUMN {column} DateTime DEFAULT {LANDED_AT_DEFAULT}"
                  for name in cluster_tables(table, cluster)]
    rows = qualified(database, cluster.local(table) if cluster else table)
    return [*statements, f"ALTER TABLE {rows}{on_cluster(cluster)} UPDATE {column} = toStartOfDay({column}) WHERE {column} != toStartOfDay({column})"]


def create_decisions_view_sql(database: str, cluster: Cluster | None = None) -> str:
    """`audit.decisions`: the audit trail one row per (event, recipient), as auditors query it, over
    the per-event records in `audit.events` (each event once: `FINAL`)."""
    return (
        f"CREATE OR REPLACE VIEW {qualified(database, AUDIT_TABLE)}{on_cluster(cluster)} AS "
        "SELECT event_id, event_type, provider, subject_token, decided_at, "
        "d.recipient AS recipient, d.agreement_id AS agreement_id, d.agreement_version AS agreement_version, "
        "if(d.outcome = 'permit', 'permit', 'deny') AS decision, "
        "if(d.outcome = 'permit', NULL, toString(d.outcome)) AS reason, "
        "d.key_ids AS key_ids, d.recipient_event_id AS recipient_event_id "
        f"FROM {qualified(database, AUDIT_EVENTS_TABLE)} FINAL ARRAY JOIN decisions AS d"
    )


def create_view_sql(database: str, view: str, table: str, fields: Sequence[str], cluster: Cluster | None = None) -> str:
    """The agreed shape for analysts: the released fields only, each event once (`FINAL`)."""
    columns = ", ".join(quote_identifier(name) for name in fields)
    return f"CREATE OR REPLACE VIEW {qualified(database, view)}{on_cluster(cluster)} AS SELECT {columns} FROM {qualified(database, table)} FINAL"


def create_alerts_table_sql(database: str, cluster: Cluster | None = None, table: str = ALERTS_TABLE,
                            replica_path: str = REPLICA_PATH) -> str:
    """Fraud alerts, one per (kind, subject pseudonym, period): a repeated finding collapses on merge
    into its first alert (`ALERTS_VERSION`: the earliest `detected_at` wins, its details with it)."""
    return (
        f"CREATE TABLE IF NOT EXISTS {qualified(database, cluster.local(table) if cluster else table)}{on_cluster(cluster)} "
        "(kind LowCardinality(String), subject String, period String, "
        "details String, detected_at DateTime64(3, 'UTC') DEFAULT now64(3), "
        f"{ALERTS_VERSION} UInt64 MATERIALIZED 18446744073709551615 - toUnixTimestamp64Milli(detected_at)) "
        f"ENGINE = {engine(cluster, f'ReplacingMergeTree({ALERTS_VERSION})', replica_path)} ORDER BY (kind, subject, period)"
    )


def distributed_sql(database: str, table: str, cluster: Cluster, shard_key: str) -> str:
    """On a sharded cluster: the `Distributed` table `table` over its local tables, placed by `shard_key`."""
    return (f"CREATE TABLE IF NOT EXISTS {qualified(database, table)}{cluster.on} AS {qualified(database, cluster.local(table))} "
            f"ENGINE = {cluster.distributed_engine(database, table, shard_key)}")


def create_published_table_sql(database: str, cluster: Cluster | None = None) -> str:
    """The alerts already acknowledged by the broker, so each is published once."""
    return (
        f"CREATE TABLE IF NOT EXISTS {qualified(database, cluster.local(PUBLISHED_TABLE) if cluster else PUBLISHED_TABLE)}{on_cluster(cluster)} "
        "(kind LowCardinality(String), subject String, period String, "
        "published_at DateTime64(3, 'UTC') DEFAULT now64(3)) "
        f"ENGINE = {engine(cluster)} ORDER BY (kind, subject, period)"
    )


def create_watermarks_table_sql(database: str, cluster: Cluster | None = None) -> list[str]:
    """Each fraud rule's watermark: the landing day its last complete run started in and the landing
    (`LANDED_SEQ`, 0: none) it resumes from, for the rule's SQL `fingerprint` (a changed rule or
    column type starts over); the newest day wins on merge. A table made before gets `landed_seq`."""
    table = qualified(database, cluster.local(WATERMARKS_TABLE) if cluster else WATERMARKS_TABLE)
    return [
        f"CREATE TABLE IF NOT EXISTS {table}{on_cluster(cluster)} "
        "(kind LowCardinality(String), fingerprint String, since DateTime, landed_seq UInt64 DEFAULT 0, "
        "written_at DateTime64(3, 'UTC') DEFAULT now64(3)) "
        f"ENGINE = {engine(cluster, 'ReplacingMergeTree(since)')} ORDER BY (kind, fingerprint)",
        *(f"ALTER TABLE {qualified(database, name)}{on_cluster(cluster)} ADD COLUMN IF NOT EXISTS landed_seq UInt64 DEFAULT 0"
          for name in cluster_tables(WATERMARKS_TABLE, cluster)),
    ]


def fraud_tables_sql(database: str, cluster: Cluster | None = None) -> list[str]:
    """The fraud database, `alerts`, `alerts_published` (on a sharded cluster: by subject) and the
    rules' watermarks (by kind)."""
    statements = [create_database_sql(database, cluster), create_alerts_table_sql(database, cluster),
                  create_published_table_sql(database, cluster)]
    if cluster is not None and cluster.sharded:
        statements += [distributed_sql(database, table, cluster, key) for table, key in ((ALERTS_TABLE, "subject"), (PUBLISHED_TABLE, "subject"), (WATERMARKS_TABLE, "kind"))]
    create, *alter = create_watermarks_table_sql(database, cluster)
    return [*statements[:3], create, *statements[3:], *alter]


# --- who may do what: one user per sink, one role per recipient, the oversight role -------------
SINK_USER_PREFIX = f"{ROLE_PREFIX}sink_"
# What every sink's own statements need on its own database, and nothing elsewhere
# (tests/test_clickhouse_users.py collects them from the sinks' code): CREATE DATABASE and TABLE IF
# NOT EXISTS, ALTER TABLE ADD COLUMN, INSERT; each sink also (re)creates views (a recipient's
# agreement views, the audit sink's `decisions`): CREATE OR REPLACE VIEW needs DROP VIEW, and the
# views run as the sink (below), so it reads the tables beneath (SELECT; the fraud rules read them
# too). `system.columns` shows a user the columns of what it holds any privilege on.
SINK_PRIVILEGES = ("CREATE DATABASE", "CREATE TABLE", "ALTER ADD COLUMN", "INSERT", "CREATE VIEW", "DROP VIEW", "SELECT")
# On a cluster every DDL statement runs ON CLUSTER, which ClickHouse lets only users holding CLUSTER run.
CLUSTER_PRIVILEGE = "CLUSTER"
# Views a sink creates run with the sink's privileges (SQL SECURITY DEFINER, definer = the sink
# user), so a recipient role needs SELECT on its views only, never on the tables beneath, which
# hold the fields of every agreement version.
SINK_USER_SETTINGS = "default_normal_view_sql_security = 'DEFINER'"
# What the quality sink (consumers/quality.py, in the audit sink's workload) does on the quality database:
# creates it and its two tables, inserts windows and scorecards, and reads windows back to score them.
QUALITY_PRIVILEGES = ("CREATE DATABASE", "CREATE TABLE", "INSERT", "SELECT")


# What printed statements carry instead of a credential: not a valid hash, so they cannot create a
# user anyone could log in as by accident.
NO_CREDENTIAL = Credential("<sha256 of password and salt: --apply sets it>", "<salt>")


def role_name(prefix: str, agency: str) -> str:
    """`fraud` -> `backbone_fraud` (`backbone_t1_fraud` with prefix `t1_`): the role that reads an agency's views."""
    return f"{ROLE_PREFIX}{database_name(prefix, agency)}"


def sink_user(prefix: str, sink: str) -> str:
    """`fraud` -> `backbone_sink_fraud`: the user the sink of one database writes as (`audit` for the audit sinks)."""
    return f"{SINK_USER_PREFIX}{database_name(prefix, sink)}"


def agreement_views(charter: Charter, recipient: str) -> list[str]:
    """The views a recipient's sink creates, as `consumers.plans.recipient_plan` names them: one per
    agreement id (per event type when its current version shares several)."""
    views = []
    for agreement_id in sorted({a.id for a in charter.agreements if a.recipient == recipient}):
        current = charter.current(agreement_id)
        views += [view_name(agreement_id, event_type, current.event_types) for event_type in current.event_types]
    return views


def _string(value: str) -> str:
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def _user_sql(user: str, databases: Mapping[str, Sequence[str]], credential: Credential, cluster: Cluster | None) -> list[str]:
    """The user, and on each of `databases` (database -> privileges) its privileges."""
    quoted, on = quote_identifier(user), on_cluster(cluster)
    identified = f"IDENTIFIED WITH sha256_hash BY {_string(credential.sha256_hex)} SALT {_string(credential.salt)}"
    statements = [
        f"CREATE USER IF NOT EXISTS {quoted}{on} {identified} SETTINGS {SINK_USER_SETTINGS}",
        f"ALTER USER {quoted}{on} {identified} SETTINGS {SINK_USER_SETTINGS}",  # re-applying sets both again
        f"REVOKE{on} ALL ON *.* FROM {quoted}",
        *(f"GRANT{on} {', '.join(privileges)} ON {quote_identifier(database)}.* TO {quoted}" for database, privileges in databases.items()),
    ]
    if cluster is not None:
        statements.append(f"GRANT{on} {CLUSTER_PRIVILEGE} ON *.* TO {quoted}")
    return statements


def _role_sql(role: str, objects: Iterable[str], cluster: Cluster | None) -> list[str]:
    quoted, on = quote_identifier(role), on_cluster(cluster)
    return [f"CREATE ROLE IF NOT EXISTS {quoted}{on}", f"REVOKE{on} ALL ON *.* FROM {quoted}",
            *(f"GRANT{on} SELECT ON {name} TO {quoted}" for name in objects)]


def sink_users(prefix: str, recipients: Iterable[str]) -> list[str]:
    """Every sink user: one per recipient, and the audit sink's (decisions, checkpoints, operator actions)."""
    return list(sink_workloads(prefix, recipients).values())


def sink_workloads(prefix: str, recipients: Iterable[str]) -> dict[str, str]:
    """Each sink workload (`sink-<recipient>`, `sink-audit`: its Kafka and registry user too) -> its ClickHouse user."""
    names = (*sorted(set(recipients)), AUDIT_DATABASE)
    return {f"{SINK_WORKLOAD_PREFIX}{name}": sink_user(prefix, name) for name in names}


def grants_sql(prefix: str, views: Mapping[str, Sequence[str]], credentials: Mapping[str, Credential] | None = None,
               cluster: Cluster | None = None) -> list[str]:
    """Users, roles and grants for a ClickHouse server, from `views` (recipient -> its agreement views):
    - each sink's user may create, write and read its own database only (`SINK_PRIVILEGES`; on a
      cluster also run its DDL ON CLUSTER), and the views it creates run as it;
    - each recipient's role may SELECT its agreement views only: no table, no other database;
    - the oversight role alone among the roles reads the audit database (the audit sink's user,
      which lands it and defines its `decisions` view, is the only other reader), and the quality
      database (scorecards: counts, no personal data), which the audit sink lands too.
    Every user and role loses all its privileges first, so re-applying removes anything granted by
    hand or by an older charter. `credentials` (sink user -> `Credential`) default to `NO_CREDENTIAL`.
    On a `cluster`, every statement runs `ON CLUSTER`, so each server holds the same users and grants."""
    credentials = credentials or {}
    statements: list[str] = []
    for recipient in sorted(views):
        database = database_name(prefix, recipient)
        user = sink_user(prefix, recipient)
        statements += _user_sql(user, {database: SINK_PRIVILEGES}, credentials.get(user, NO_CREDENTIAL), cluster)
    audit, quality = database_name(prefix, AUDIT_DATABASE), database_name(prefix, QUALITY_DATABASE)
    audit_user = sink_user(prefix, AUDIT_DATABASE)
    statements += _user_sql(audit_user, {audit: SINK_PRIVILEGES, quality: QUALITY_PRIVILEGES}, credentials.get(audit_user, NO_CREDENTIAL),
                            cluster)
    for recipient in sorted(views):
        database = database_name(prefix, recipient)
        statements += _role_sql(role_name(prefix, recipient), [qualified(database, view) for view in views[recipient]], cluster)
    statements += _role_sql(role_name(prefix, OVERSIGHT_ROLE), [f"{quote_identifier(audit)}.*", f"{quote_identifier(quality)}.*"], cluster)
    return statements
