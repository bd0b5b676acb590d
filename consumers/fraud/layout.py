"""How the fraud database's tables are laid out for the incremental rules, and the migration of
tables made before that layout.

A fraud table is ordered by (subject, event id): a rule reading the whole history of the subjects
that landed since its last run reads their granules only (primary-key pruning), not the table, and
copies of one event share the subject, so they still collapse into one row (a copy re-released
across a pseudonym key rotation would not, as it would not on a sharded cluster, which places rows
by the subject too). It carries a projection of the rules' key columns ordered by landing
(`ddl.LANDED_SEQ`, the microsecond a landed batch's insert began: `ddl.LANDED_PROJECTION`), so
finding the keys that landed since the last run reads what landed since, not the table (nor the
day); and for a rule keyed by something else (`shared_bank_account`: bank account and period) a
projection of its columns ordered by its key, which that rule reads without `FINAL`. A table holds
`ddl.PROJECTED_INDEX_GRANULARITY` rows per granule: a touched subject costs a granule's reading, so small granules
keep the read near what the subjects hold.

A table made before (ordered by event id alone) is migrated by `backbone fraud migrate`: a new table
with the layout, every row copied (each gets the migration's landing, so the next incremental run
reads every key once), the two exchanged atomically (`EXCHANGE TABLES`), rows landed
meanwhile copied again, the old rows dropped. Run again after an interruption, it resumes. A table
laid out before its compressed blocks were made about a granule gets those settings (new parts and
merges write them; no copy), and one made before its old parts were merged by age gets that
setting (`ddl.PROJECTED_MERGE_AGE_S`). An `alerts` table made before it kept each finding's first alert
(`ddl.ALERTS_VERSION`) is copied and exchanged the same way.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

from backbone.clickhouse.cluster import Cluster, generation_path, on_cluster
from consumers import ddl
from consumers.fraud.registry import RULES, Rule
from consumers.typemap import Column, quote_identifier

log = logging.getLogger("backbone.fraud")

EVENT_ID = "event_id"
# The new table of a migration, until it takes the table's place.
RELAYOUT_SUFFIX = "__relayout"
MIGRATE_COMMAND = "backbone fraud migrate"


def projections(table: str, columns: Iterable[str], subject: Sequence[str] = (),
                rules: Mapping[str, Rule] | None = None) -> tuple[ddl.Projection, ...]:
    """The projections the scoped rules reading `table` need: their key columns by landing
    (`ddl.LANDED_PROJECTION`), and, for a rule whose key does not start with the subject (the
    table's order), that rule's columns ordered by its key (`key_<columns>`)."""
    have = set(columns)
    scoped = [rule for rule in (RULES if rules is None else rules).values()
              if rule.scope and table in rule.needs and set(rule.scope) <= set(rule.needs[table]) <= have]
    keys = tuple(sorted({column for rule in scoped for column in rule.scope}))
    made = [ddl.Projection(ddl.LANDED_PROJECTION, (ddl.LANDED_SEQ, *keys), (ddl.LANDED_SEQ,))] if keys else []
    for rule in scoped:
        name = "key_" + "_".join(rule.scope)
        if rule.scope[0] not in subject[:1] and name not in {projection.name for projection in made}:
            made.append(ddl.Projection(name, tuple(dict.fromkeys((*rule.scope, *rule.needs[table]))), rule.scope))
    return tuple(made)


def fraud_layout(table: str, columns: Iterable[str], subject: Sequence[str]) -> tuple[tuple[str, ...], tuple[ddl.Projection, ...]]:
    """(ORDER BY, projections) of a fraud table: (subject, event id), and `projections`."""
    return (*subject, EVENT_ID), projections(table, list(columns), subject)


@dataclass(slots=True, frozen=True)
class Layout:
    """A table as ClickHouse reports it: its sorting key and the names of its projections."""

    sorting_key: tuple[str, ...]
    projections: frozenset[str]
    engine_full: str = ""  # its engine and settings, as `system.tables` reports them


def layouts(client, database: str) -> dict[str, Layout]:  # noqa: ANN001 - a clickhouse-connect client
    """Every MergeTree table of `database` (local tables on a sharded cluster) and its layout."""
    projected: dict[str, set[str]] = {}
    for table, name in client.query("SELECT table, name FROM system.projections WHERE database = {db:String}",
                                    parameters={"db": database}).result_rows:
        projected.setdefault(table, set()).add(name)
    rows = client.query("SELECT name, sorting_key, engine_full FROM system.tables WHERE database = {db:String} AND engine LIKE '%MergeTree'",
                        parameters={"db": database}).result_rows
    return {name: Layout(sorting_key(key), frozenset(projected.get(name, ())), engine) for name, key, engine in rows}


def settings_sql(database: str, table: str, found: Layout, cluster: Cluster | None = None) -> str | None:
    """For a table laid out before its compressed blocks were made about a granule
    (`ddl.PROJECTED_COMPRESS_BLOCK`) or before its old parts were merged by age
    (`ddl.PROJECTED_MERGE_AGE_S`): the settings it lacks, so new parts and merges follow them; None
    when it has them (a merge age of the operator's own is kept)."""
    missing = [setting for setting in ddl.COMPRESS_BLOCK_SETTINGS if setting not in found.engine_full]
    if not re.search(rf"\b{ddl.MERGE_AGE_SETTING} = ", found.engine_full):
        missing.append(f"{ddl.MERGE_AGE_SETTING} = {ddl.PROJECTED_MERGE_AGE_S}")
    if not missing:
        return None
    return f"ALTER TABLE {ddl.qualified(database, table)}{on_cluster(cluster)} MODIFY SETTING {', '.join(missing)}"


def sorting_key(text: str) -> tuple[str, ...]:
    """`national_id, event_id` or `(event_id)` (as `system.tables` reports a key) -> its column names."""
    text = text.strip()
    if text.startswith("(") and text.endswith(")"):
        text = text[1:-1]
    return tuple(part.strip().strip("`") for part in text.split(",") if part.strip())


def stale(found: Layout, order_by: Sequence[str], planned: Sequence[ddl.Projection]) -> bool:
    """True when a table is not laid out as planned (another sorting key, or other projections)."""
    return found.sorting_key != tuple(order_by) or found.projections != frozenset(p.name for p in planned)


@dataclass(slots=True, frozen=True)
class Migration:
    """The statements that give one table its planned layout, in order: `create` the new table,
    `copy` every row, `swap` the two (atomic), `catch_up` rows landed meanwhile, `drop` the old rows."""

    table: str
    create: list[str]
    copy: str
    swap: str
    catch_up: str
    drop: list[str]


def migration(database: str, table: str, columns: Sequence[Column], order_by: Sequence[str], retention_days: int | None,
              cluster: Cluster | None = None, shard_by: Sequence[str] = (), planned: Sequence[ddl.Projection] = (),
              generation: str | None = None) -> Migration:
    """The migration of `database.table` (its current `columns`, `_landed_at` and `_landed_seq` aside) to the layout.
    On a sharded cluster rows go through the `Distributed` tables (placed by the same key) and the
    shards' local tables are exchanged; every DDL runs `ON CLUSTER`. On a cluster the new table's
    Keeper path carries `generation` (default: the UTC second the migration is planned), so a
    later migration of the same table (whose live table then holds the path the previous one gave
    `<table>__relayout`) makes a replica path of its own, not one already taken."""
    new = f"{table}{RELAYOUT_SUFFIX}"
    names = ", ".join(quote_identifier(name) for name in (*(column.name for column in columns), ddl.LANDED_AT))
    sharded = cluster is not None and cluster.sharded
    # a Distributed insert is sent to the shards before it returns; an IN over one is resolved once (GLOBAL)
    sync, global_in = (" SETTINGS distributed_foreground_insert = 1", "GLOBAL ") if sharded else ("", "")
    source, target = ddl.qualified(database, table), ddl.qualified(database, new)
    local = (lambda name: cluster.local(name)) if cluster is not None else (lambda name: name)  # noqa: E731
    event_id = quote_identifier(EVENT_ID)
    return Migration(
        table=table,
        create=ddl.table_sql(database, new, columns, order_by, retention_days, cluster, shard_by, planned,
                             generation_path(generation or datetime.now(UTC).strftime("g%Y%m%d%H%M%S"))),
        copy=f"INSERT INTO {target} ({names}) SELECT {names} FROM {source}{sync}",
        swap=f"EXCHANGE TABLES {ddl.qualified(database, local(table))} AND {ddl.qualified(database, local(new))}{on_cluster(cluster)}",
        catch_up=(f"INSERT INTO {source} ({names}) SELECT {names} FROM {target} "
                  f"WHERE {event_id} {global_in}NOT IN (SELECT {event_id} FROM {source}){sync}"),
        drop=[f"DROP TABLE IF EXISTS {ddl.qualified(database, name)}{on_cluster(cluster)} SYNC"
              for name in ddl.cluster_tables(new, cluster)],
    )


def alerts_stale(found: Layout) -> bool:
    """True for an `alerts` table made before it kept each finding's first alert (`ddl.ALERTS_VERSION`):
    a repeated finding would replace the alert, so each run must look its findings up first."""
    return re.search(rf"ReplacingMergeTree\(.*\b{ddl.ALERTS_VERSION}\)", found.engine_full) is None


def alerts_migration(database: str, cluster: Cluster | None = None, generation: str | None = None) -> Migration:
    """The migration of `alerts` to one keeping each finding's first alert, as `migration` does a data
    table's: a new table, every alert copied (its `detected_at` with it), the two exchanged, alerts raised
    meanwhile caught up by their (kind, subject, period), the old table dropped."""
    table, new = ddl.ALERTS_TABLE, f"{ddl.ALERTS_TABLE}{RELAYOUT_SUFFIX}"
    sharded = cluster is not None and cluster.sharded
    sync, global_in = (" SETTINGS distributed_foreground_insert = 1", "GLOBAL ") if sharded else ("", "")
    local = (lambda name: cluster.local(name)) if cluster is not None else (lambda name: name)  # noqa: E731
    source, target = ddl.qualified(database, table), ddl.qualified(database, new)
    names = "kind, subject, period, details, detected_at"
    create = [ddl.create_alerts_table_sql(database, cluster, new,
                                          generation_path(generation or datetime.now(UTC).strftime("g%Y%m%d%H%M%S")))]
    if sharded:
        create.append(ddl.distributed_sql(database, new, cluster, "subject"))
    return Migration(
        table=table,
        create=create,
        copy=f"INSERT INTO {target} ({names}) SELECT {names} FROM {source}{sync}",
        swap=f"EXCHANGE TABLES {ddl.qualified(database, local(table))} AND {ddl.qualified(database, local(new))}{on_cluster(cluster)}",
        catch_up=(f"INSERT INTO {source} ({names}) SELECT {names} FROM {target} "
                  f"WHERE (kind, subject, period) {global_in}NOT IN (SELECT kind, subject, period FROM {source}){sync}"),
        drop=[f"DROP TABLE IF EXISTS {ddl.qualified(database, name)}{on_cluster(cluster)} SYNC" for name in ddl.cluster_tables(new, cluster)],
    )


def _migrate_alerts(client, database: str, found: Mapping[str, Layout], cluster: Cluster | None) -> bool:  # noqa: ANN001
    """Give `alerts` its first-alert version (or finish an interrupted migration); True when it did anything."""
    local = cluster.local if cluster is not None else (lambda name: name)
    current = found.get(local(ddl.ALERTS_TABLE))
    if current is None:
        return False
    steps = alerts_migration(database, cluster)
    if not alerts_stale(current):
        if local(f"{ddl.ALERTS_TABLE}{RELAYOUT_SUFFIX}") not in found:
            return False
        statements = (steps.catch_up, *steps.drop)  # interrupted after the swap: the old alerts are in the leftover
    else:
        log.info("fraud alerts in %s: made before they kept each finding's first alert, migrating", database)
        statements = (*steps.drop, *steps.create, steps.copy, steps.swap, steps.catch_up, *steps.drop)
    for statement in statements:
        client.command(statement)
    return True


def migrate(client, plan) -> list[str]:  # noqa: ANN001 - a clickhouse-connect client and a SinkPlan
    """Give every table of the fraud sink's `plan` that exists with another layout the planned one;
    returns the tables migrated. Idempotent: a table laid out already is left alone, and a migration
    interrupted after its swap only catches up and drops the old rows."""
    migrated = []
    cluster = plan.cluster
    local = (lambda name: cluster.local(name)) if cluster is not None else (lambda name: name)  # noqa: E731
    for database in plan.databases:
        found = layouts(client, database)
        for destination in plan.tables:
            current = found.get(local(destination.table))
            if destination.database != database or current is None:
                continue  # not landed yet: the sink creates it laid out
            columns = [Column(name, kind) for name, kind in client.query(
                "SELECT name, type FROM system.columns WHERE database = {db:String} AND table = {t:String} ORDER BY position",
                parameters={"db": database, "t": local(destination.table)}).result_rows
                if name not in (ddl.LANDED_AT, ddl.LANDED_SEQ)]
            steps = migration(database, destination.table, columns, destination.order_by, destination.retention_days,
                              cluster, destination.shard_by, destination.projections)
            leftover = local(f"{destination.table}{RELAYOUT_SUFFIX}") in found
            if not stale(current, destination.order_by, destination.projections):
                if leftover:  # interrupted after the swap: the old rows are in the leftover
                    for statement in (steps.catch_up, *steps.drop):
                        client.command(statement)
                    migrated.append(destination.table)
                elif destination.projections and (lacking := settings_sql(database, local(destination.table), current, cluster)):
                    client.command(lacking)  # parts written and merged from now on follow them
                    migrated.append(destination.table)
                continue
            log.info("fraud table %s: ordered by (%s), migrating to (%s)", destination.name,
                        ", ".join(current.sorting_key), ", ".join(destination.order_by))
            for statement in (*steps.drop, *steps.create, steps.copy, steps.swap, steps.catch_up, *steps.drop):
                client.command(statement)
            migrated.append(destination.table)
        if _migrate_alerts(client, database, found, cluster):
            migrated.append(ddl.ALERTS_TABLE)
    return migrated


# The projection by landing day tables had before `ddl.LANDED_SEQ`: their runs read the keys landed that day.
DAY_PROJECTION = "landed"


def stale_tables(found: Mapping[str, Layout], tables: Iterable[str]) -> list[str]:
    """Of `tables` (ones the rules read), those made before the layout: ordered by the event id alone,
    or by subject with the projection by landing day (then each run reads the keys landed that day)."""
    return sorted(table for table in tables if table in found
                  and (found[table].sorting_key == (EVENT_ID,) or DAY_PROJECTION in found[table].projections))
