"""The operator's view of a running backbone: topics, consumer lag, registry subjects, recent
decisions, DLQ entries, rows per agency database and the oldest row of each table against its
retention. Each part is asked separately with a short
timeout, so one unreachable part is reported as such and the rest still answers.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, TypeVar

from backbone.errors import BackboneError, registry_unavailable
from backbone.kafka import dlq
from backbone.kafka.groups import GroupLag, TopicStatus, kafka_status
from backbone.settings import Settings

T = TypeVar("T")


@dataclass
class Retention:
    """The oldest row of one table against the retention its TTL applies (days from `clock`)."""

    database: str
    table: str
    clock: str  # the column retention counts from: occurred_at, or _landed_at
    days: int
    oldest: datetime | None

    @property
    def age_days(self) -> float | None:
        if self.oldest is None:
            return None
        oldest = self.oldest if self.oldest.tzinfo else self.oldest.replace(tzinfo=UTC)
        return (datetime.now(UTC) - oldest).total_seconds() / 86_400

    @property
    def overdue(self) -> bool:
        """Rows past retention still there: ClickHouse removes them at its next merge of their part."""
        age = self.age_days
        return age is not None and age > self.days


# How a table's TTL reads in system.tables.engine_full (consumers.ddl writes `TTL col + INTERVAL n DAY`).
_TTL = re.compile(r"\bTTL\s+`?([A-Za-z_][A-Za-z0-9_]*)`?\s*\+\s*toIntervalDay\((\d+)\)")


@dataclass
class Status:
    topics: list[TopicStatus] = field(default_factory=list)
    groups: list[GroupLag] = field(default_factory=list)
    subjects: list[str] = field(default_factory=list)
    decisions: list[tuple[str, str, int]] = field(default_factory=list)
    dlq: Counter[str] = field(default_factory=Counter)
    rows: list[tuple[str, int]] = field(default_factory=list)
    retention: list[Retention] = field(default_factory=list)
    unreachable: dict[str, str] = field(default_factory=dict)  # part -> why
    # agreement status changes in force (key, status, when, by whom) and changes that cannot be
    # applied (key -> why), which the processors deny as agreement_inactive
    agreement_changes: list[tuple[str, str, str, str]] = field(default_factory=list)
    agreement_problems: dict[str, str] = field(default_factory=dict)


def _ask(status: Status, part: str, call: Callable[[], T]) -> T | None:
    try:
        return call()
    except BackboneError as exc:
        status.unreachable[part] = str(exc)
    except Exception as exc:  # noqa: BLE001 - any failure of one part is reported, the rest goes on
        status.unreachable[part] = f"{type(exc).__name__}: {str(exc).splitlines()[0][:200] if str(exc) else ''}"
    return None


def dlq_status(settings: Settings, timeout: float) -> Counter[str]:
    """Dead letters by `stage: reason`."""
    return Counter({f"{stage}: {reason}": n for (stage, reason), n in dlq.count(settings, timeout).items()})


def registry_subjects(settings: Settings) -> list[str]:
    from backbone.events.serde import registry_client

    try:
        return sorted(registry_client(settings).get_subjects())
    except Exception:
        raise registry_unavailable(settings.schema_registry_url) from None


def retention_status(client: Any, prefix: str) -> list[Retention]:
    """Per table with a TTL in the agency databases: the column it counts from, its days and the oldest row."""
    found = []
    for database, table, engine in client.query(
            "SELECT database, name, engine_full FROM system.tables WHERE engine LIKE '%MergeTree' "
            "AND database NOT IN ('system', 'information_schema', 'INFORMATION_SCHEMA') AND startsWith(database, {p:String}) "
            "ORDER BY database, name", parameters={"p": prefix}).result_rows:
        match = _TTL.search(engine or "")
        if match is None:
            continue
        clock, days = match.group(1), int(match.group(2))
        oldest = client.query(f"SELECT min(`{clock}`), count() FROM `{database}`.`{table}`").result_rows[0]
        found.append(Retention(database, table, clock, days, oldest[0] if oldest[1] else None))
    return found


def clickhouse_status(settings: Settings, minutes: int) -> tuple[list[tuple[str, str, int]], list[tuple[str, int]], list[Retention]]:
    from urllib.parse import urlsplit

    from clickhouse_connect.driver.exceptions import OperationalError

    from backbone.clickhouse.client import make_client

    dsn = urlsplit(settings.clickhouse_dsn or "")
    where = f"{dsn.scheme}://{dsn.hostname}:{dsn.port}" if dsn.hostname else settings.clickhouse_dsn  # never the password
    try:
        client = make_client(settings.clickhouse_dsn or "", read_only=True)
        client.query("SELECT 1")
    except OperationalError:
        raise BackboneError(f"ClickHouse at {where} did not answer") from None
    try:
        prefix = settings.clickhouse_database_prefix
        audit = f"{prefix}audit.decisions"
        has_audit = client.query(
            "SELECT count() FROM system.tables WHERE database = {d:String} AND name = 'decisions'", parameters={"d": f"{prefix}audit"}
        ).result_rows[0][0]
        decisions: list[tuple[str, str, int]] = []
        if has_audit:
            decisions = [(r, d, int(n)) for r, d, n in client.query(
                f"SELECT recipient, if(decision = 'permit', 'permit', concat('deny: ', assumeNotNull(reason))) AS d, count() "
                f"FROM {audit} WHERE decided_at >= now64(3) - INTERVAL {int(minutes)} MINUTE GROUP BY recipient, d ORDER BY recipient, d"
            ).result_rows]
        rows = [(db, int(n)) for db, n in client.query(
            "SELECT database, sum(total_rows) FROM system.tables WHERE engine LIKE '%MergeTree' "
            "AND database NOT IN ('system', 'information_schema', 'INFORMATION_SCHEMA') AND startsWith(database, {p:String}) "
            "GROUP BY database ORDER BY database", parameters={"p": prefix}).result_rows]
        return decisions, rows, retention_status(client, prefix)
    finally:
        client.close()


def agreement_status(settings: Settings, timeout: float) -> tuple[list[tuple[str, str, str, str]], dict[str, str]]:
    """Status changes on `agreements.changes` and the records the processors cannot apply, as a
    worker would see them with this machine's schemas and agreements."""
    from backbone.control import agreement_changes
    from backbone.events.catalog import load_catalog
    from backbone.policy.agreements import load_agreements

    charter = load_agreements(settings.agreements_dir, load_catalog(settings.schemas_dir))
    _, feed = agreement_changes.published(settings, charter, timeout=max(timeout, 2.0))
    changes = [(c.key, c.status, c.at.strftime("%Y-%m-%d %H:%M:%S"), c.by) for c in sorted(feed.statuses.values(), key=lambda c: c.at)]
    return changes, dict(feed.problems)


def collect(settings: Settings, minutes: int = 5, timeout: float = 3.0) -> Status:
    """Ask every part; what does not answer within `timeout` is listed in `unreachable`."""
    status = Status()
    kafka = _ask(status, "kafka", lambda: kafka_status(settings, timeout))
    if kafka is not None:
        status.topics, status.groups = kafka
        status.dlq = _ask(status, "dlq", lambda: dlq_status(settings, timeout)) or Counter()
        changes = _ask(status, "agreement changes", lambda: agreement_status(settings, timeout))
        if changes is not None:
            status.agreement_changes, status.agreement_problems = changes
    status.subjects = _ask(status, "schema registry", lambda: registry_subjects(settings)) or []
    clickhouse = _ask(status, "clickhouse", lambda: clickhouse_status(settings, minutes))
    if clickhouse is not None:
        status.decisions, status.rows, status.retention = clickhouse
    return status


def as_dict(status: Status) -> dict[str, Any]:
    return {
        "topics": [vars(t) for t in status.topics],
        "groups": [vars(g) for g in status.groups],
        "subjects": status.subjects,
        "decisions": status.decisions,
        "dlq": dict(status.dlq),
        "rows": status.rows,
        "retention": [{"database": r.database, "table": r.table, "counted_from": r.clock, "days": r.days,
                       "oldest": r.oldest.isoformat() if r.oldest else None, "overdue": r.overdue} for r in status.retention],
        "unreachable": status.unreachable,
        "agreement_changes": status.agreement_changes,
        "agreement_problems": status.agreement_problems,
    }
