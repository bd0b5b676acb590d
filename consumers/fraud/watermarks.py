"""Where each fraud rule's incremental runs resume, kept in the fraud database (`ddl.WATERMARKS_TABLE`),
so a restarted fraud sink (or another replica) resumes from the last run instead of reading every row.

A watermark is the landing day a rule's last complete run started in, for the rule's SQL as it ran
(`fingerprint`): a changed rule, or a column an agreement now releases with another type, gives
another fingerprint and so one full run. It is written after the run's alerts are in `alerts`: a
crash between the two repeats that run, which raises nothing twice (`alerts` skips what it holds).
The day changes once a day, so a watermark is written about once a day per rule.
"""

from __future__ import annotations

import hashlib
from datetime import datetime, timezone

from consumers import ddl


def fingerprint(sql: str) -> str:
    """A short digest of a rule's SELECT over every row (whitespace aside)."""
    return hashlib.sha256(" ".join(sql.split()).encode()).hexdigest()[:16]


def load(client, database: str) -> dict[str, tuple[str, int]]:  # noqa: ANN001 - a clickhouse-connect client
    """kind -> (fingerprint, day as unix seconds) of each rule's newest watermark."""
    rows = client.query(
        f"SELECT kind, argMax(fingerprint, written_at), toUnixTimestamp(argMax(since, written_at)) "
        f"FROM {ddl.qualified(database, ddl.WATERMARKS_TABLE)} GROUP BY kind").result_rows
    return {kind: (mark, int(since)) for kind, mark, since in rows}


def save(client, database: str, kind: str, mark: str, since: int) -> None:  # noqa: ANN001
    """Record that `kind`'s rule (of fingerprint `mark`) ran completely from the day `since` on."""
    client.insert(ddl.qualified(database, ddl.WATERMARKS_TABLE), [[kind, mark, datetime.fromtimestamp(since, timezone.utc)]],
                  column_names=["kind", "fingerprint", "since"])
