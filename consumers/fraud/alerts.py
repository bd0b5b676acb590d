"""Fraud alerts: what a rule found, and the SQL that records each finding once in `alerts`."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from backbone.policy.names import alert_id
from consumers import ddl


@dataclass(slots=True, frozen=True)
class Alert:
    """One finding: `kind` of rule, the subject's fraud-domain pseudonym, the period, JSON evidence."""

    kind: str
    subject: str
    period: str
    details: str
    detected_at: datetime

    @property
    def key(self) -> tuple[str, str, str]:
        return (self.kind, self.subject, self.period)

    @property
    def alert_id(self) -> str:
        """The alert's deterministic id: the same finding has the same id in every replica and run,
        so consumers of `alerts.fraud` (keyed by it) can tell a repeat from a new alert."""
        return alert_id(*self.key)


# (kind, subject, period): what an alert is one of
Key = tuple[str, str, str]


def record_findings(client, database: str, kind: str, rule: str, settings: dict | None = None,  # noqa: ANN001 - a clickhouse-connect client
                    read: dict | None = None, look_up: bool = False) -> int:
    """`record`, returning how many findings it inserted."""
    return record(client, database, kind, rule, settings, read, look_up)[1]


def record(client, database: str, kind: str, rule: str, settings: dict | None = None,  # noqa: ANN001 - a clickhouse-connect client
           read: dict | None = None, look_up: bool = False) -> tuple[set[Key], int]:
    """Findings of one rule's SELECT over few keys (an incremental run) into `alerts`; returns the keys
    of every finding (alerted before or not: which are published is for the publisher to say) and
    how many it inserted.
    They are inserted without asking which are held already: a finding alerted before collapses into
    its first alert (`ddl.ALERTS_VERSION`, read with `FINAL`), so the cost follows what the rule found,
    not how many alerts the table holds. `look_up`: an `alerts` table made before that, which would
    keep the repeat: the findings' subjects' alerts are looked up and only new ones inserted.
    `settings` are the insert's, `read` the rule query's (a sharded cluster's `Cluster.read_settings`)."""
    found = client.query(f"SELECT kind, subject, period, any(details) FROM ({rule}) AS found "
                         "WHERE subject IS NOT NULL GROUP BY kind, subject, period", settings=dict(read or {})).result_rows
    alerts = ddl.qualified(database, ddl.ALERTS_TABLE)
    keys = {(str(row[0]), str(row[1]), str(row[2])) for row in found}
    if found and look_up:
        held = {tuple(row) for row in client.query(
            f"SELECT subject, period FROM {alerts} WHERE kind = {{kind:String}} AND subject IN {{subjects:Array(String)}}",
            parameters={"kind": kind, "subjects": sorted({row[1] for row in found})}).result_rows}
        found = [row for row in found if (row[1], row[2]) not in held]
    if found:
        client.insert(alerts, [list(row) for row in found], column_names=["kind", "subject", "period", "details"],
                      settings=dict(settings or {}))
    return keys, len(found)


def insert_alerts_sql(database: str, kind: str, rule: str) -> str:
    """New findings of one rule's SELECT into `alerts`, skipping (kind, subject, period) already alerted."""
    alerts = ddl.qualified(database, ddl.ALERTS_TABLE)
    return f"""
        INSERT INTO {alerts} (kind, subject, period, details)
        SELECT kind, subject, period, any(details) FROM ({rule}) AS found
        WHERE subject IS NOT NULL AND (kind, subject, period) NOT IN (SELECT kind, subject, period FROM {alerts} WHERE kind = '{kind}')
        GROUP BY kind, subject, period"""
