"""Where each fraud rule's incremental runs resume, kept in the fraud database (`ddl.WATERMARKS_TABLE`),
so a restarted fraud sink (or another replica) resumes from the last run instead of reading every row.

A watermark is where a rule's last complete run started, for the rule's SQL as it ran
(`fingerprint`): a changed rule, or a column an agreement now releases with another type, gives
another fingerprint and so one full run. It is written after the run's alerts are in `alerts`: a
crash between the two repeats that run, which raises nothing twice (`alerts` skips what it holds).

Where a run starts (`resume_point`) is a landing (`ddl.LANDED_SEQ`: the microsecond a landed batch's
insert began), taken before the run reads anything: the earlier of now and the start of every insert
still running, so a batch whose insert began before the run but is not visible to it yet is read by
the next run. On a cluster the same, over the inserts running on every replica
(`clusterAllReplicas(<cluster>, system.processes)`) and the parts a replica has not fetched yet
(`system.replication_queue`), less `fraud_cluster_slack_s` (`BACKBONE_FRAUD_CLUSTER_SLACK_S`): another
server's clock may run ahead of this one, and a part may reach the replica a read lands on a little
after its insert ended. A run resuming earlier only reads some keys again (their alerts are held).
"""

from __future__ import annotations

import hashlib
from datetime import datetime, timezone

from backbone.clickhouse.cluster import Cluster
from backbone.clickhouse.cluster import sql_string as _string
from consumers import ddl
from consumers.fraud.registry import Since

# Wall clock against the process list's elapsed time (a monotonic clock): what they may differ by.
SLACK_US = 10_000


def fingerprint(sql: str) -> str:
    """A short digest of a rule's SELECT over every row (whitespace aside)."""
    return hashlib.sha256(" ".join(sql.split()).encode()).hexdigest()[:16]


def resume_sql(cluster: Cluster | None = None, database: str = "") -> str:
    """Today (unix seconds), now (microseconds), the longest-running insert's elapsed seconds (on
    every replica of `cluster`), and (on a cluster) the oldest part of `database` a replica has yet
    to fetch (unix seconds; 0: none). A replica that does not answer fails the query, and so the run
    (retried after the next batch), rather than being skipped: an insert it holds could land behind the
    watermark once it is reachable again."""
    processes = "system.processes"
    pending = ""
    if cluster is not None:
        processes = f"clusterAllReplicas({_string(cluster.name)}, system.processes)"
        pending = (f", (SELECT toUnixTimestamp(min(create_time)) FROM clusterAllReplicas({_string(cluster.name)}, system.replication_queue) "
                   f"WHERE database = {_string(database)} AND type = 'GET_PART')")
    return ("SELECT toUnixTimestamp(toStartOfDay(now())), toUnixTimestamp64Micro(now64(6)), "
            f"(SELECT max(elapsed) FROM {processes} WHERE query_kind = 'Insert'){pending}")


def resume_from(day: int, now_us: int, running_s: float | None, pending_s: int | None = None, slack_s: float = 0.0) -> Since:
    """Where a run starting at `now_us` resumes next time: before every insert still running (for
    `running_s` seconds), every part not fetched yet (queued at `pending_s`), less `slack_s`."""
    start = now_us - int(float(running_s or 0) * 1_000_000)
    if pending_s:
        start = min(start, int(pending_s) * 1_000_000)
    return Since(int(day), max(0, start - SLACK_US - int(slack_s * 1_000_000)))


def resume_point(client, cluster: Cluster | None = None, database: str = "", slack_s: float = 0.0) -> Since:  # noqa: ANN001
    """Where a run starting now resumes next time (`resume_from`), as the server (on a `cluster`:
    every replica) sees it; `slack_s` is for a cluster's clocks and replication."""
    row = client.query(resume_sql(cluster, database)).result_rows[0]
    day, now, running = row[:3]
    pending = row[3] if cluster is not None else None
    return resume_from(int(day), int(now), running, pending, slack_s if cluster is not None else 0.0)


def load(client, database: str) -> dict[str, tuple[str, Since]]:  # noqa: ANN001 - a clickhouse-connect client
    """kind -> (fingerprint, where its next run resumes) of each rule's newest watermark."""
    rows = client.query(
        f"SELECT kind, argMax(fingerprint, written_at), toUnixTimestamp(argMax(since, written_at)), argMax(landed_seq, written_at) "
        f"FROM {ddl.qualified(database, ddl.WATERMARKS_TABLE)} GROUP BY kind").result_rows
    return {kind: (mark, Since(int(day), int(seq) or None)) for kind, mark, day, seq in rows}


def save(client, database: str, kind: str, mark: str, since: Since, settings: dict | None = None) -> None:  # noqa: ANN001
    """Record that `kind`'s rule (of fingerprint `mark`) ran completely from `since` on."""
    client.insert(ddl.qualified(database, ddl.WATERMARKS_TABLE),
                  [[kind, mark, datetime.fromtimestamp(since.day, timezone.utc), since.landed_seq or 0]],
                  column_names=["kind", "fingerprint", "since", "landed_seq"], settings=dict(settings or {}))
