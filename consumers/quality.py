"""The quality sink: lands the processors' closed quality windows (`quality.windows`) in the
`<prefix>quality` database and keeps each hour's scorecard there, merged from every worker's window.

`quality.windows` holds one row per (event type, hour, worker): a redelivered window collapses
(ReplacingMergeTree), so the merge counts each worker's evidence once. After each batch the
scorecard of every hour it touched is computed again from all its windows and written to
`quality.scorecards`, one row per (provider, event type, hour, dimension): a worker whose window
lands late replaces the hour's scorecard with the complete one. `verify_quality` recomputes every
landed scorecard from the windows and checks each window against the audit record that sealed it.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from typing import Any

from clickhouse_connect.driver.client import Client
from clickhouse_connect.driver.exceptions import DatabaseError
from confluent_kafka import Message

from backbone.clickhouse.cluster import Cluster, cluster_of, engine, insert_settings, on_cluster
from backbone.errors import SinkError
from backbone.kafka.topics import QUALITY_TOPIC
from backbone.quality.contract import QualityContract
from backbone.quality.errors import QualityStateError
from backbone.quality.scorecard import Scorecard, score, volume_baseline
from backbone.quality.window import QUALITY_SEAL_TYPE, WindowState, hour_start, merge_all, window_seal_id
from backbone.settings import Settings
from consumers import ddl
from consumers.batching import BatchingSink, Rejection, TargetUnavailable, Written
from consumers.clickhouse_target import clickhouse_error, transient
from consumers.plans import group_id

QUALITY_DATABASE = ddl.QUALITY_DATABASE
QUALITY_SINK = "quality"
WEEK_HOURS = 168

# (table, columns, engine, ORDER BY, what a sharded cluster places rows by: one event type's rows on one
# shard, so FINAL collapses a redelivered window and a scorecard merges every worker's window there)
QUALITY_TABLES = (
    ("windows", """event_type String, provider LowCardinality(String), hour DateTime('UTC'), worker String,
    seal_id String, window String, landed_at DateTime64(3, 'UTC') DEFAULT now64(3)""",
     "ReplacingMergeTree", "event_type, hour, worker", "event_type"),
    ("scorecards", """provider LowCardinality(String), event_type String, hour DateTime('UTC'), dimension LowCardinality(String),
    score Nullable(Float64), checked UInt64, failed UInt64, threshold String, met Nullable(Bool), events UInt64,
    workers UInt32, detail String, computed_at DateTime64(3, 'UTC')""",
     "ReplacingMergeTree(computed_at)", "provider, event_type, hour, dimension", "event_type"),
)
SCORECARD_COLUMNS = ["provider", "event_type", "hour", "dimension", "score", "checked", "failed", "threshold", "met",
                     "events", "workers", "detail", "computed_at"]


def quality_database(settings: Settings) -> str:
    return ddl.database_name(settings.clickhouse_database_prefix, QUALITY_DATABASE)


def quality_tables_sql(database: str, cluster: Cluster | None = None) -> list[str]:
    """The quality database and its tables; on a cluster (`BACKBONE_CLICKHOUSE_CLUSTER`) `Replicated*`
    tables `ON CLUSTER`, and when sharded `<table>_local` with a `Distributed` table over them."""
    statements = [ddl.create_database_sql(database, cluster)]
    for table, columns, kind, order_by, shard_key in QUALITY_TABLES:
        local = ddl.qualified(database, cluster.local(table) if cluster else table)
        statements.append(f"CREATE TABLE IF NOT EXISTS {local}{on_cluster(cluster)} (\n    {columns}\n) "
                          f"ENGINE = {engine(cluster, kind)} ORDER BY ({order_by})")
        if cluster is not None and cluster.sharded:
            statements.append(f"CREATE TABLE IF NOT EXISTS {ddl.qualified(database, table)}{cluster.on} AS {local} "
                              f"ENGINE = {cluster.distributed_engine(database, table, shard_key)}")
    return statements


def setup_quality(client: Client, database: str, cluster: Cluster | None = None) -> None:
    for statement in quality_tables_sql(database, cluster):
        client.command(statement)


def parse_key(key: bytes | None) -> tuple[str, int, str]:
    """`<event type>|<hour>|<worker>` -> its parts; ValueError when it is not one."""
    event_type, hour, worker = (key or b"").decode().split("|")
    return event_type, int(hour), worker


def land_windows(client: Client, database: str, contracts: Mapping[str, QualityContract],
                 windows: Iterable[tuple[bytes | None, bytes | None]], settings: Mapping[str, Any] | None = None,
                 ) -> tuple[int, list[tuple[int, str]], set[tuple[str, int]]]:
    """Insert each readable window (key, value); returns (landed, [(index, reason) refused], the
    (event type, hour) pairs touched). Refused: unreadable, or of an event type with no contract.
    `settings`: the insert's (`insert_settings` of a sharded cluster: the windows are on their shard
    before the scorecards are computed from them)."""
    rows: list[list[Any]] = []
    refused: list[tuple[int, str]] = []
    touched: set[tuple[str, int]] = set()
    for index, (key, value) in enumerate(windows):
        try:
            event_type, hour, worker = parse_key(key)
            window = WindowState.from_bytes(value or b"")
        except (ValueError, UnicodeDecodeError, QualityStateError):
            refused.append((index, "undecodable"))
            continue
        if window.key != (event_type, hour) or event_type not in contracts:
            refused.append((index, "unknown_event_type"))
            continue
        rows.append([event_type, window.provider, hour_start(hour), worker, window_seal_id(value or b""), (value or b"").decode()])
        touched.add((event_type, hour))
    if rows:
        client.insert(f"{database}.windows", rows, column_names=["event_type", "provider", "hour", "worker", "seal_id", "window"],
                      settings=dict(settings or {}))
    return len(rows), refused, touched


def _windows(client: Client, database: str, event_type: str, hours: Iterable[int]) -> list[tuple[str, WindowState]]:
    wanted = [hour_start(h) for h in hours]
    if not wanted:
        return []
    result = client.query(f"SELECT worker, window FROM {database}.windows FINAL WHERE event_type = {{t:String}} "
                          "AND hour IN {h:Array(DateTime('UTC'))} ORDER BY hour, worker",
                          parameters={"t": event_type, "h": wanted})
    return [(worker, WindowState.from_bytes(window.encode())) for worker, window in result.result_rows]


def scorecard_of(client: Client, database: str, contract: QualityContract, hour: int) -> tuple[Scorecard, int] | None:
    """The hour's scorecard from every worker's window, with the volume baseline of the same hour in
    the contract's earlier weeks (their events, as landed), and how many workers' windows it merges."""
    found = _windows(client, database, contract.event_type, [hour])
    if not found:
        return None
    merged, = merge_all([window for _, window in found])
    weeks = contract.quality.volume.weeks if contract.quality.volume else 0
    earlier = merge_all([w for _, w in _windows(client, database, contract.event_type,
                                                [hour - WEEK_HOURS * k for k in range(1, weeks + 1)])])
    return score(merged, contract, volume_baseline([w.events for w in earlier])), len(found)


def scorecard_rows(card: Scorecard, workers: int, computed_at: datetime) -> list[list[Any]]:
    return [[row["provider"], row["event_type"], row["hour"], row["dimension"], row["score"], row["checked"], row["failed"],
             row["threshold"], row["met"], row["events"], workers, json.dumps(row["detail"], sort_keys=True), computed_at]
            for row in card.rows()]


def refresh_scorecards(client: Client, database: str, contracts: Mapping[str, QualityContract],
                       touched: Iterable[tuple[str, int]], settings: Mapping[str, Any] | None = None) -> list[Scorecard]:
    """Compute again and write the scorecard of each (event type, hour) touched."""
    cards: list[Scorecard] = []
    rows: list[list[Any]] = []
    now = datetime.now(UTC)
    for event_type, hour in sorted(touched):
        found = scorecard_of(client, database, contracts[event_type], hour)
        if found is not None:
            cards.append(found[0])
            rows.extend(scorecard_rows(found[0], found[1], now))
    if rows:
        client.insert(f"{database}.scorecards", rows, column_names=SCORECARD_COLUMNS, settings=dict(settings or {}))
    return cards


class QualityTarget:
    """The quality sink's target: windows in, scorecards refreshed."""

    name = QUALITY_SINK

    def __init__(self, settings: Settings, client: Client, contracts: Mapping[str, QualityContract]) -> None:
        self.client = client
        self.contracts = dict(contracts)
        self.database = quality_database(settings)
        self.cluster = cluster_of(settings)
        # a sharded cluster's Distributed inserts in the foreground: a window is on its shard before
        # its hour's scorecard is computed, so no scorecard misses a window
        self.insert_settings = insert_settings(self.cluster)
        self.scorecards: dict[str, Scorecard] = {}  # the newest hour's scorecard per event type, for metrics

    def setup(self) -> None:
        try:
            setup_quality(self.client, self.database, self.cluster)
        except DatabaseError as exc:
            raise SinkError(f"sink {self.name}: ClickHouse refused the schema set-up ({clickhouse_error(exc)})") from exc

    def write(self, messages: list[Message]) -> Written:
        try:
            landed, refused, touched = land_windows(self.client, self.database, self.contracts,
                                                    [(m.key(), m.value()) for m in messages], self.insert_settings)
            for card in refresh_scorecards(self.client, self.database, self.contracts, touched, self.insert_settings):
                newest = self.scorecards.get(card.event_type)
                if newest is None or card.hour >= newest.hour:
                    self.scorecards[card.event_type] = card
        except DatabaseError as exc:
            if transient(exc):
                raise TargetUnavailable(f"ClickHouse: {clickhouse_error(exc)}") from exc
            raise SinkError(f"sink {self.name}: ClickHouse refused a batch ({clickhouse_error(exc)})") from exc
        return Written(landed, [Rejection(messages[i], reason) for i, reason in refused], set(touched))

    def close(self) -> None:
        pass


def quality_sink(settings: Settings, client: Client, contracts: Mapping[str, QualityContract], *,
                 own_client: bool = True) -> BatchingSink:
    """The quality sink (its client closed with it unless `own_client=False`)."""
    return BatchingSink(settings, QualityTarget(settings, client, contracts), group_id=group_id(settings, QUALITY_SINK),
                        subscription=QUALITY_TOPIC, on_close=client.close if own_client else None)


def landed_scorecards(client: Client, database: str) -> list[tuple[Any, ...]]:
    """(provider, event type, hour, dimension, score, checked, failed, threshold) of every landed
    scorecard row, newest computation of each."""
    if not client.command(f"EXISTS TABLE {database}.scorecards"):
        return []
    return [tuple(row) for row in client.query(
        f"SELECT provider, event_type, hour, dimension, score, checked, failed, threshold FROM {database}.scorecards FINAL "
        "ORDER BY provider, event_type, hour, dimension").result_rows]


def verify_quality(client: Client, prefix: str, contracts: Mapping[str, QualityContract]) -> tuple[int, list[str]]:
    """(scorecards checked, problems): every landed window must be sealed by an audit record
    (`audit verify` checks those records against their signed checkpoints), and every landed
    scorecard must equal the one computed again from the windows."""
    database = ddl.database_name(prefix, QUALITY_DATABASE)
    audit = ddl.qualified(ddl.database_name(prefix, ddl.AUDIT_DATABASE), ddl.AUDIT_EVENTS_TABLE)
    problems: list[str] = []
    if not client.command(f"EXISTS DATABASE {database}"):
        return 0, []
    sealed = {str(row[0]) for row in client.query(f"SELECT DISTINCT event_id FROM {audit} WHERE event_type = "
                                                   "{t:String}", parameters={"t": QUALITY_SEAL_TYPE}).result_rows}
    hours: set[tuple[str, int]] = set()
    for event_type, hour, worker, seal_id, window in client.query(
            f"SELECT event_type, hour, worker, seal_id, window FROM {database}.windows FINAL ORDER BY hour, event_type, worker").result_rows:
        at = int(hour.replace(tzinfo=UTC).timestamp()) // 3600
        hours.add((event_type, at))
        if window_seal_id(window.encode()) != seal_id or seal_id not in sealed:
            problems.append(f"quality window {event_type} {hour:%Y-%m-%d %H}:00 of worker {worker} is not the one the "
                            "audit trail sealed (edited, or never sealed)")
    landed = {(r[0], r[1], int(r[2].replace(tzinfo=UTC).timestamp()) // 3600, r[3]): (r[4], r[5], r[6])
              for r in client.query(f"SELECT provider, event_type, hour, dimension, score, checked, failed "
                                    f"FROM {database}.scorecards FINAL").result_rows}
    for event_type, hour in sorted(hours):
        if event_type not in contracts:
            continue
        found = scorecard_of(client, database, contracts[event_type], hour)
        for row in found[0].rows() if found else ():
            key = (row["provider"], event_type, hour, row["dimension"])
            expected = (row["score"], row["checked"], row["failed"])
            got = landed.pop(key, None)
            if got is None or not _same(got, expected):
                problems.append(f"quality scorecard {event_type} {hour_start(hour):%Y-%m-%d %H}:00 {row['dimension']}: "
                                f"landed {got} but the sealed windows give {expected}")
    problems.extend(f"quality scorecard {k[1]} {hour_start(k[2]):%Y-%m-%d %H}:00 {k[3]} has no sealed window behind it"
                    for k in sorted(landed))
    return len(hours), problems


def _same(got: tuple[Any, ...], expected: tuple[Any, ...]) -> bool:
    (score_a, *counts_a), (score_b, *counts_b) = got, expected
    close = (score_a is None and score_b is None) or (score_a is not None and score_b is not None
                                                        and abs(score_a - score_b) < 1e-9)
    return close and list(counts_a) == list(counts_b)


def recent_scorecards(client: Client, database: str, hours: int = 168, provider: str | None = None) -> list[dict[str, Any]]:
    """The landed scorecards of the `hours` up to the newest landed hour (of `provider` if given),
    one dict per (provider, event type, hour, dimension), for the console."""
    where = "AND provider = {p:String}" if provider else ""
    result = client.query(
        f"SELECT provider, event_type, hour, dimension, score, checked, failed, threshold, met, detail FROM {database}.scorecards FINAL "
        f"WHERE hour >= (SELECT max(hour) FROM {database}.scorecards) - toIntervalHour({int(hours)}) {where} "
        "ORDER BY provider, event_type, hour, dimension", parameters={"p": provider or ""})
    names = ("provider", "event_type", "hour", "dimension", "score", "checked", "failed", "threshold", "met", "detail")
    return [{**dict(zip(names, row, strict=True)), "detail": json.loads(row[9] or "{}")} for row in result.result_rows]
