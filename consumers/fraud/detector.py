"""Real-time fraud detection in the fraud team's database, on pseudonymised data only.

Each registered rule (`consumers.fraud.registry`) is one SQL query over the landed tables, so that
redelivered events count once (with `FINAL` where a copy would change the result, as in a sum). After
every batch the fraud sink lands,
`FraudDetector.detect()`:
1. inserts the rules' new findings into `alerts`, one per (kind, subject pseudonym, period): a rule's
   first run reads every row; later runs of a scoped rule read only the keys of rows landed since
   the previous run started (`_landed_seq`, the landing of each batch; the watermark is taken before
   the run, so nothing landing during a run is missed), each key over its whole history
   (`consumers.fraud.layout` lays the tables out so that reads what landed, not the table). The
   watermarks are kept in the fraud database (`consumers.fraud.watermarks`): a restarted sink resumes;
2. publishes the alerts not yet in `alerts_published` to `alerts.fraud` (Avro, wire format), keyed
   by each alert's deterministic id, and records them there once the broker acknowledged them. It
   reads the alerts of the keys its incremental runs found (by their subjects), not every alert:
   every alert only on a process's first publish, after a full run, or after another replica led.

With several fraud sink replicas every replica runs the rules (findings collapse in the
ReplacingMergeTree), but only the one `leads()` names publishes: the member that holds the first
partition of the fraud sink's subscription, which the consumer group gives to exactly one member
at a time. So each alert is published once, however many replicas run.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping

from clickhouse_connect.driver.client import Client
from clickhouse_connect.driver.exceptions import DatabaseError
from confluent_kafka import Producer

from backbone.clickhouse.cluster import cluster_of, insert_settings, read_settings
from backbone.errors import TopicError
from backbone.kafka.topics import ALERTS_TOPIC, Topics, alerts_topic_config
from backbone.settings import Settings
from consumers import ddl
from consumers.fraud import layout, watermarks
from consumers.fraud.alerts import Alert, Key, insert_alerts_sql, record
from consumers.fraud.registry import RULES, Rule, Since, lookup

log = logging.getLogger("backbone.fraud")

# Keys found by incremental runs that publishes read by their subjects; beyond it (a broker down for
# long) they are dropped and the next publish reads every alert not published, as a process's first does.
# Settings of an incremental run's query. Its touched keys' `IN` set is checked against the primary
# index by splitting each range that may hold a key into this many parts, level by level: checks of
# about keys x G x log_G(marks / keys), least near G = e. With ClickHouse's 8, that analysis was most
# of what grew with a table's size (bench.fraud, one part per table, 10 M -> 30 M rows: a landing's
# SELECTs 0.53 -> 0.84 s with 8, 0.51 -> 0.69 s with 2, the same granules read).
INCREMENTAL_READ_SETTINGS = {"merge_tree_coarse_index_granularity": 2}
MAX_FOUND_KEYS = 100_000


class FraudDetector:
    """Runs the fraud rules in the fraud database and publishes new alerts to `alerts.fraud`.

    `registry` is the schema registry client the alerts are encoded with (one from the settings
    when None); `rules` the rules to run (the registered ones, as registered at each run, when None).
    """

    def __init__(self, settings: Settings, client: Client, registry: object | None = None,
                 rules: Mapping[str, Rule] | None = None, leads: Callable[[], bool] | None = None) -> None:
        self.settings = settings
        self.leads = leads or (lambda: True)
        self.client = client
        self.registry = registry
        self.rules = RULES if rules is None else rules
        self.database = ddl.database_name(settings.clickhouse_database_prefix, settings.fraud_recipient)
        self._ready = False
        self._look_up = False  # `alerts` made before it kept each finding's first alert (setup)
        # on a sharded cluster alerts, published alerts and watermarks are on their shards when the insert
        # returns: the next publish sees what was published (no alert sent twice), the next run its watermark
        self._insert_settings = insert_settings(cluster_of(settings))
        # on a sharded cluster a rule's IN / JOIN over a Distributed table inside a query over another is
        # read shard by shard (ClickHouse refuses it by default); sets spanning shards say GLOBAL IN
        cluster = cluster_of(settings)
        self._sharded = cluster is not None and cluster.sharded
        self._read_settings = read_settings(cluster)
        self._producer: Producer | None = None
        self._encode: Callable[[dict], bytes] | None = None
        self._off: set[str] = set()
        # rule kind -> (its SQL's fingerprint, where its last complete run started); None until read
        # from the fraud database
        self._since: dict[str, tuple[str, Since]] | None = None
        # The keys the incremental runs found whose alerts no publish has read yet: a publish reads those
        # alerts only, unless `_read_all` (a process's first publishes, those after a full run, after
        # another replica led, or when too many keys piled up): then every alert not published, until a
        # publish starts `_lag_s` after that (on a cluster an alert inserted on one replica may reach the
        # replica a read lands on later: `fraud_cluster_slack_s`). A key stays until a read sees its alert.
        self._found: set[Key] = set()
        self._lag_s = settings.fraud_cluster_slack_s if cluster is not None else 0.0
        self._read_all = True
        self._read_all_until = time.monotonic() + self._lag_s

    def setup(self) -> None:
        if self._ready:
            return
        cluster = cluster_of(self.settings)
        for statement in ddl.fraud_tables_sql(self.database, cluster):
            self.client.command(statement)
        read = {cluster.local(table) if cluster else table for rule in self.rules.values() if rule.scope for table in rule.needs}
        found = layout.layouts(self.client, self.database)
        old = layout.stale_tables(found, read)
        alerts = found.get(cluster.local(ddl.ALERTS_TABLE) if cluster else ddl.ALERTS_TABLE)
        self._look_up = alerts is not None and layout.alerts_stale(alerts)
        if self._look_up:  # a repeated finding would replace its first alert: runs look their findings up
            old.append(ddl.ALERTS_TABLE)
        if old:
            log.error("fraud tables %s were made before the fraud layout (ordered by event id alone, by landing day, or alerts "
                      "keeping the last repeat of a finding): each incremental run reads them whole, or the day's keys, or repeats replace alerts; stop the fraud sinks and run `%s` once", ", ".join(old), layout.MIGRATE_COMMAND)
        self._ready = True

    def _columns(self) -> dict[str, dict[str, str]]:
        result = self.client.query(
            "SELECT table, name, type FROM system.columns WHERE database = {db:String}", parameters={"db": self.database}
        )
        columns: dict[str, dict[str, str]] = {}
        for table, name, kind in result.result_rows:
            columns.setdefault(table, {})[name] = kind
        return columns

    def _runnable(self, columns: Mapping[str, Mapping[str, str]]) -> list[Rule]:
        """The rules whose tables and columns exist; each rule that is off is logged once."""
        runnable = []
        for rule in list(self.rules.values()):
            missing = rule.missing(columns)
            if not missing:
                runnable.append(rule)
            elif rule.kind not in self._off:
                self._off.add(rule.kind)
                log.info("fraud rule %s is off: the fraud database lacks the tables or fields it needs (%s)",
                         rule.kind, ", ".join(missing))
        return runnable

    def detect(self) -> list[Alert]:
        """Run every rule, then publish the alerts not published yet; returns those alerts."""
        self.setup()
        columns = self._columns()
        start = watermarks.resume_point(self.client, cluster_of(self.settings), self.database, self.settings.fraud_cluster_slack_s)
        if self._since is None:
            self._since = watermarks.load(self.client, self.database)
        for rule in self._runnable(columns):
            full = rule.select_sql(self.database, columns, sharded=self._sharded)
            mark = watermarks.fingerprint(full)
            last = self._since.get(rule.kind)
            since = last[1] if last is not None and last[0] == mark and rule.scope else None
            if since is None:
                self.client.command(insert_alerts_sql(self.database, rule.kind, full), settings={**self._insert_settings, **self._read_settings})
                self._read_everything()  # its findings are known to the server only
            else:
                keys, _ = record(self.client, self.database, rule.kind, rule.select_sql(self.database, columns, since, self._sharded),
                                 self._insert_settings, {**self._read_settings, **INCREMENTAL_READ_SETTINGS}, self._look_up)
                self._found |= keys
                if len(self._found) > MAX_FOUND_KEYS:
                    self._found.clear()
                    self._read_everything()
            if last != (mark, start):  # after the alerts: a crash between repeats this run, raising nothing twice
                watermarks.save(self.client, self.database, rule.kind, mark, start, self._insert_settings)
                self._since[rule.kind] = (mark, start)
        if not self.leads():
            self._found.clear()  # another replica publishes; should this one lead later, it reads every alert first
            self._read_everything()
            return []
        return self.publish()

    def _read_everything(self) -> None:
        self._read_all = True
        self._read_all_until = time.monotonic() + self._lag_s

    def publish(self) -> list[Alert]:
        """Send alerts not yet acknowledged by the broker to `alerts.fraud`, then record them: those of
        the keys the incremental runs found (`_found`), or every alert not in `alerts_published`."""
        alerts = ddl.qualified(self.database, ddl.ALERTS_TABLE)
        published = ddl.qualified(self.database, ddl.PUBLISHED_TABLE)
        started, read_all, found = time.monotonic(), self._read_all, set(self._found)
        if read_all:
            new = self._select(f"WHERE (kind, subject, period) NOT IN (SELECT kind, subject, period FROM {published})")
            seen = {alert.key for alert in new}
        else:
            new, seen = self._unpublished(found) if found else ([], set())
        if not new:
            self._read(found & seen, read_all, started)
            return []
        producer, encode = self._publisher()
        for alert in new:
            value = encode({"kind": alert.kind, "subject": alert.subject, "period": alert.period,
                            "details": alert.details, "detected_at": alert.detected_at, "alert_id": alert.alert_id})
            producer.produce(ALERTS_TOPIC, key=alert.alert_id.encode(), value=value)
        if producer.flush(self.settings.kafka_timeout_s) > 0:
            log.warning("alerts.fraud did not acknowledge %d alerts in time; they are sent again after the next batch", len(new))
            return []
        self.client.insert(published, [[a.kind, a.subject, a.period] for a in new], column_names=["kind", "subject", "period"],
                           settings=self._insert_settings)
        self._read(found & seen, read_all, started)
        log.info("published %d fraud alerts from %s", len(new), alerts)
        return new

    def _read(self, seen: set[Key], read_all: bool, started: float) -> None:
        """A publish that started at `started` (monotonic) read the alerts of `seen` and sent those not published."""
        self._found -= seen
        if read_all and started >= self._read_all_until:
            self._read_all = False

    def _unpublished(self, keys: set[Key]) -> tuple[list[Alert], set[Key]]:
        """The alerts of `keys` not in `alerts_published`, and the keys whose alerts were read (published
        or not): both read by the keys' subjects (their primary keys' second column), so the reading
        follows what the runs found, not the alerts held."""
        subjects = {"subjects": sorted({subject for _, subject, _ in keys})}
        published = {tuple(row) for row in self.client.query(
            f"SELECT kind, subject, period FROM {ddl.qualified(self.database, ddl.PUBLISHED_TABLE)} "
            "WHERE subject IN {subjects:Array(String)}", parameters=subjects).result_rows}
        read = [alert for alert in self._select("WHERE subject IN {subjects:Array(String)}", parameters=subjects) if alert.key in keys]
        return [alert for alert in read if alert.key not in published], {alert.key for alert in read}

    def _publisher(self) -> tuple[Producer, Callable[[dict], bytes]]:
        if self._producer is None or self._encode is None:
            from backbone.events.catalog import FRAUD_ALERT, load_catalog
            from backbone.events.serde import encoder_for, registry_client

            try:  # the retention is set on a topic made before it had one too
                Topics(self.settings).reconcile(ALERTS_TOPIC, alerts_topic_config(self.settings))
            except TopicError as exc:  # a topic an operator manages: alerts are still published
                log.warning("%s", exc)
            registry = self.registry or registry_client(self.settings)
            schema = load_catalog(self.settings.schemas_dir).internal_schema(FRAUD_ALERT)
            self._encode = encoder_for(registry, f"{ALERTS_TOPIC}-value", schema)
            self._producer = Producer(self.settings.producer_config())
        return self._producer, self._encode

    def _select(self, where: str = "", limit: int | None = None, parameters: dict | None = None) -> list[Alert]:
        alerts = ddl.qualified(self.database, ddl.ALERTS_TABLE)
        tail = f" LIMIT {int(limit)}" if limit else ""
        result = self.client.query(
            f"SELECT kind, subject, period, details, detected_at FROM {alerts} FINAL {where} ORDER BY detected_at, kind, subject, period{tail}",
            settings=self._read_settings,  # publish: the published alerts of each shard's subjects, on that shard
            parameters=parameters,
        )
        return [Alert(*row) for row in result.result_rows]

    def full_run(self) -> None:
        """The next run of every rule reads every row again (its watermarks are written anew)."""
        self._since = {}

    def alerts(self, kind: str | None = None, limit: int | None = None) -> list[Alert]:
        """Alerts raised so far, oldest first (optionally of one registered kind)."""
        if kind is not None:
            lookup(kind, self.rules)  # an unknown kind names the known ones
        # reading creates nothing (readers may hold a read-only client): no table yet, no alerts yet
        exists = self.client.query("EXISTS TABLE " + ddl.qualified(self.database, ddl.ALERTS_TABLE)).result_rows[0][0]
        if not exists:
            return []
        return self._select(f"WHERE kind = '{kind}'" if kind else "", limit)

    def after_batch(self, destinations: set) -> None:
        """Sink hook: run the rules when the batch landed rows in the fraud database."""
        if not any(destination.database == self.database for destination in destinations):
            return
        try:
            self.detect()
        except DatabaseError as exc:
            # detection catches up after the next batch; the landed rows are safe
            log.warning("fraud rules failed (%s); retried after the next batch", type(exc).__name__)

    def close(self) -> None:
        if self._producer is not None:
            self._producer.flush(self.settings.kafka_timeout_s)
            self._producer = None


class BackgroundDetection:
    """Runs a detector's rules on their own thread when a batch landed fraud rows, at most every
    `interval_s`, so landing never waits for the rules. `close()` runs them a last time and stops."""

    def __init__(self, detector: FraudDetector, interval_s: float = 1.0) -> None:
        self.detector = detector
        self.interval_s = interval_s
        self._due = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="fraud-rules", daemon=True)
        self._thread.start()

    def after_batch(self, destinations: set) -> None:
        if any(destination.database == self.detector.database for destination in destinations):
            self._due.set()

    def _run(self) -> None:
        while not self._stop.is_set():
            if not self._due.wait(0.2):
                continue
            self._due.clear()
            started = time.monotonic()
            self._detect()
            self._stop.wait(max(0.0, self.interval_s - (time.monotonic() - started)))

    def _detect(self) -> None:
        try:
            self.detector.detect()
        except DatabaseError as exc:
            log.warning("fraud rules failed (%s); retried after the next batch", type(exc).__name__)
            self._due.set()

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=30)
        self._detect()  # evidence landed since the last run still raises its alerts
        self.detector.close()
