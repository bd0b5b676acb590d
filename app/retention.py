"""Rows a recipient's table holds fewer of than were permitted to it because the agreement's
retention (a ClickHouse TTL counted from the event's time) dropped them as they landed: the demo's
summary says so under the rows."""

from __future__ import annotations

import re
from dataclasses import dataclass


@dataclass(slots=True, frozen=True)
class RetentionDrop:
    """Fewer rows in a recipient's table than events permitted to it: ClickHouse dropped the rest
    as they landed, being older than the agreement's retention (counted from the event's time)."""

    database: str
    table: str
    permitted: int
    landed: int
    retention_days: int


# as written (`+ INTERVAL 365 DAY`) and as ClickHouse stores it in system.tables (`+ toIntervalDay(365)`)
_TTL_DAYS = re.compile(r"\bTTL\b.*?(?:INTERVAL\s+(\d+)\s+DAY|toIntervalDay\((\d+)\))", re.DOTALL | re.IGNORECASE)


def retention_drops(permitted: dict[tuple[str, str], int], rows: list[tuple[str, str, int]],
                    table_sql: dict[tuple[str, str], str]) -> list[RetentionDrop]:
    """The tables (database, table) with a retention TTL in their `CREATE TABLE` that hold fewer rows
    than were permitted to them."""
    drops = []
    for database, table, landed in rows:
        ttl = _TTL_DAYS.search(table_sql.get((database, table), ""))
        wanted = permitted.get((database, table), 0)
        if ttl and landed < wanted:
            drops.append(RetentionDrop(database, table, wanted, landed, int(ttl.group(1) or ttl.group(2))))
    return drops
