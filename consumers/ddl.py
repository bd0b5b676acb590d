"""Names and SQL of the per-agency databases: tables, per-agreement views, roles and grants.

Pure functions from names and columns to SQL text, no I/O: the sink runs them, tests read them.
One database per agency (`<prefix><agency>`), one table per provider event type
(`tax.income_declared` -> `tax_income_declared`), one view per agreement (`tax-to-fraud` ->
`tax_to_fraud`, with `__<event>` when the agreement shares several event types).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from consumers.typemap import Column, quote_identifier

AUDIT_DATABASE = "audit"
AUDIT_TABLE = "decisions"
OPERATIONS_TABLE = "operations"
OVERSIGHT_ROLE = "oversight"
LANDED_AT = "_landed_at"
ROLE_PREFIX = "backbone_"
# The fraud rules' findings, and the findings the broker acknowledged on `alerts.fraud`.
ALERTS_TABLE = "alerts"
PUBLISHED_TABLE = "alerts_published"


def _safe(name: str) -> str:
    return name.replace("-", "_").replace(".", "_")


def database_name(prefix: str, agency: str) -> str:
    """`fraud` -> `fraud` (or `t1_fraud` with prefix `t1_`)."""
    return f"{prefix}{_safe(agency)}"


def table_name(event_type: str) -> str:
    """`tax.income_declared` -> `tax_income_declared`."""
    return _safe(event_type)


def view_name(agreement_id: str, event_type: str, event_types: Sequence[str]) -> str:
    """`tax-to-fraud` -> `tax_to_fraud`; `__<event>` is added when the agreement shares several."""
    base = _safe(agreement_id)
    return base if len(event_types) == 1 else f"{base}__{_safe(event_type.split('.', 1)[1])}"


def qualified(database: str, table: str) -> str:
    return f"{quote_identifier(database)}.{quote_identifier(table)}"


def create_database_sql(database: str) -> str:
    return f"CREATE DATABASE IF NOT EXISTS {quote_identifier(database)}"


def create_table_sql(
    database: str, table: str, columns: Sequence[Column], order_by: Sequence[str], retention_days: int | None
) -> str:
    """A ReplacingMergeTree keyed on `order_by` (the event id): redelivered events collapse into one
    row on merge, and `FINAL` hides duplicates before then. The TTL counts from landing, the moment
    the recipient received the data, so back-dated events are kept for the agreed retention."""
    body = ",\n  ".join([*(column.ddl for column in columns), f"{quote_identifier(LANDED_AT)} DateTime DEFAULT now()"])
    key = ", ".join(quote_identifier(name) for name in order_by)
    ttl = f"\nTTL {quote_identifier(LANDED_AT)} + INTERVAL {int(retention_days)} DAY" if retention_days else ""
    return (
        f"CREATE TABLE IF NOT EXISTS {qualified(database, table)} (\n  {body}\n)\n"
        f"ENGINE = ReplacingMergeTree\nORDER BY ({key}){ttl}"
    )


def add_columns_sql(database: str, table: str, columns: Iterable[Column]) -> str | None:
    """`ALTER TABLE ... ADD COLUMN IF NOT EXISTS` for fields a newer schema brings; None if none."""
    clauses = [f"ADD COLUMN IF NOT EXISTS {column.ddl}" for column in columns]
    if not clauses:
        return None
    return f"ALTER TABLE {qualified(database, table)} " + ", ".join(clauses)


def create_view_sql(database: str, view: str, table: str, fields: Sequence[str]) -> str:
    """The agreed shape for analysts: the released fields only, each event once (`FINAL`)."""
    columns = ", ".join(quote_identifier(name) for name in fields)
    return f"CREATE OR REPLACE VIEW {qualified(database, view)} AS SELECT {columns} FROM {qualified(database, table)} FINAL"


def create_alerts_table_sql(database: str) -> str:
    """Fraud alerts, one per (kind, subject pseudonym, period): a repeated finding collapses on merge."""
    return (
        f"CREATE TABLE IF NOT EXISTS {qualified(database, ALERTS_TABLE)} "
        "(kind LowCardinality(String), subject String, period String, "
        "details String, detected_at DateTime64(3, 'UTC') DEFAULT now64(3)) "
        "ENGINE = ReplacingMergeTree ORDER BY (kind, subject, period)"
    )


def create_published_table_sql(database: str) -> str:
    """The alerts already acknowledged by the broker, so each is published once."""
    return (
        f"CREATE TABLE IF NOT EXISTS {qualified(database, PUBLISHED_TABLE)} "
        "(kind LowCardinality(String), subject String, period String, "
        "published_at DateTime64(3, 'UTC') DEFAULT now64(3)) "
        "ENGINE = ReplacingMergeTree ORDER BY (kind, subject, period)"
    )


def role_name(agency: str) -> str:
    return f"{ROLE_PREFIX}{_safe(agency)}"


def grants_sql(prefix: str, agencies: Iterable[str]) -> list[str]:
    """Roles and grants for a ClickHouse server: each agency reads its own database only; the
    oversight role reads the audit database only. Privileges are revoked first, so re-applying
    removes anything granted by hand."""
    statements: list[str] = []
    targets = [(role_name(agency), database_name(prefix, agency)) for agency in sorted(set(agencies))]
    targets.append((role_name(OVERSIGHT_ROLE), database_name(prefix, AUDIT_DATABASE)))
    for role, database in targets:
        quoted = quote_identifier(role)
        statements += [
            f"CREATE ROLE IF NOT EXISTS {quoted}",
            f"REVOKE ALL ON *.* FROM {quoted}",
            f"GRANT SELECT ON {quote_identifier(database)}.* TO {quoted}",
        ]
    return statements
