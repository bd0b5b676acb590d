"""Where each fraud rule's incremental runs resume, kept in the fraud database (`ddl.WATERMARKS_TABLE`),
so a restarted fraud sink (or another replica) resumes from the last run instead of reading every row.

A watermark is where a rule's last complete run started, for the rule's SQL as it ran
(`fingerprint`): a changed rule, or a column an agreement now releases with another type, gives
another fingerprint and so one full run. It is written after the run's alerts are in `alerts`: a
crash between the two repeats that run, which raises nothing twice (`alerts` skips what it holds).

Where a run starts (`resume_point`) is a landing (`ddl.LANDED_SEQ`: the microsecond a landed batch's
insert began), taken before the run reads anything: the earlier of now and the start of every insert
still running, so a batch whose insert began before the run but is not visible to it yet is read by
the next run. On a cluster the inserts of other nodes (and their clocks) are not seen from here: there
the watermark is the landing day, as before (each run reads the keys landed that day).
"""

from __future__ import annotations

import hashlib
from datetime import datetime, timezone

from consumers import ddl
from consumers.fraud.registry import Since

# Wall clock against the process list's elapsed time (a monotonic clock): what they may differ by.
SLACK_US = 10_000


def fingerprint(sql: str) -> str:
    """A short digest of a rule's SELECT over every row (whitespace aside)."""
    return hashlib.sha256(" ".join(sql.split()).encode()).hexdigest()[:16]


def resume_point(client, clustered: bool = False) -> Since:  # noqa: ANN001 - a clickhouse-connect client
    """Where a run starting now resumes next time: today, and (single node) the earliest landing an
    insert not yet visible may carry."""
    day, now, running = client.query(
        "SELECT toUnixTimestamp(toStartOfDay(now())), toUnixTimestamp64Micro(now64(6)), "
        "(SELECT max(elapsed) FROM system.processes WHERE query_kind = 'Insert')").result_rows[0]
    if clustered:
        return Since(int(day))
    return Since(int(day), max(0, int(now) - int(float(running or 0) * 1_000_000) - SLACK_US))


def load(client, database: str) -> dict[str, tuple[str, Since]]:  # noqa: ANN001 - a clickhouse-connect client
    """kind -> (fingerprint, where its next run resumes) of each rule's newest watermark."""
    rows = client.query(
        f"SELECT kind, argMax(fingerprint, written_at), toUnixTimestamp(argMax(since, written_at)), argMax(landed_seq, written_at) "
        f"FROM {ddl.qualified(database, ddl.WATERMARKS_TABLE)} GROUP BY kind").result_rows
    return {kind: (mark, Since(int(day), int(seq) or None)) for kind, mark, day, seq in rows}


def save(client, database: str, kind: str, mark: str, since: Since) -> None:  # noqa: ANN001
    """Record that `kind`'s rule (of fingerprint `mark`) ran completely from `since` on."""
    client.insert(ddl.qualified(database, ddl.WATERMARKS_TABLE),
                  [[kind, mark, datetime.fromtimestamp(since.day, timezone.utc), since.landed_seq or 0]],
                  column_names=["kind", "fingerprint", "since", "landed_seq"])
