"""Real-time fraud detection in the fraud team's database, on pseudonymised data only.

Each planted fraud kind is one SQL rule over the landed tables (read with `FINAL`, so redelivered
events count once). After every batch the fraud sink lands, `FraudDetector.detect()`:
1. inserts the rules' new findings into `alerts`, one per (kind, subject pseudonym, period);
2. publishes the alerts not yet in `alerts_published` to `alerts.fraud` (Avro, wire format), and
   records them there once the broker acknowledged them: at-least-once, without repeats.

Thresholds are the synthetic generator's constants, so detector and ground truth agree by import.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime

from clickhouse_connect.driver.client import Client
from clickhouse_connect.driver.exceptions import DatabaseError
from confluent_kafka import Producer

from backbone.settings import Settings
from backbone.topics import ALERTS_TOPIC, Topics
from consumers import ddl
from producers.synthetic.fraud import (
    CLAIM_AFTER_DEATH,
    FRAUD_KINDS,
    INCOME_THRESHOLD_EUR,
    MEANS_TESTED,
    SHARED_ACCOUNT_MIN_CLAIMANTS,
    SHARED_BANK_ACCOUNT,
    UNDECLARED_INCOME,
    FraudCase,
)

log = logging.getLogger("backbone.fraud")

INCOMES = "tax_income_declared"
CLAIMS = "welfare_benefit_claimed"
DEATHS = "registry_death_registered"
ALERTS_TABLE = "alerts"
PUBLISHED_TABLE = "alerts_published"
ALERT_SCHEMA = {
    "type": "record",
    "name": "FraudAlert",
    "namespace": "backbone.fraud",
    "doc": "A fraud rule matched: kind, the subject's pseudonym in the fraud domain, the period.",
    "fields": [
        {"name": "kind", "type": "string", "doc": "undeclared_income, shared_bank_account or claim_after_death."},
        {"name": "subject", "type": "string", "doc": "Pseudonym of the person in the fraud sharing domain."},
        {"name": "period", "type": "string", "doc": "Benefit period, YYYY-MM."},
        {"name": "details", "type": "string", "doc": "JSON evidence (pseudonymised)."},
        {"name": "detected_at", "type": {"type": "long", "logicalType": "timestamp-millis"}, "doc": "When the rule matched."},
    ],
}


@dataclass(slots=True, frozen=True)
class Alert:
    kind: str
    subject: str
    period: str
    details: str
    detected_at: datetime

    @property
    def key(self) -> tuple[str, str, str]:
        return (self.kind, self.subject, self.period)


@dataclass(slots=True, frozen=True)
class Score:
    kind: str
    true_positives: int
    false_positives: int
    false_negatives: int

    @property
    def precision(self) -> float:
        found = self.true_positives + self.false_positives
        return self.true_positives / found if found else 1.0

    @property
    def recall(self) -> float:
        planted = self.true_positives + self.false_negatives
        return self.true_positives / planted if planted else 1.0


def score(alerts: Iterable[Alert], truth: Iterable[FraudCase], pseudonymise: Callable[[str], str]) -> list[Score]:
    """Precision and recall per kind; ground truth holds raw ids, so they are pseudonymised first."""
    found = {alert.key for alert in alerts}
    planted = {(case.kind, pseudonymise(case.national_id), case.period) for case in truth}
    scores = []
    for kind in sorted({k for k, _, _ in found | planted} | set(FRAUD_KINDS)):
        mine = {key for key in found if key[0] == kind}
        real = {key for key in planted if key[0] == kind}
        scores.append(Score(kind, len(mine & real), len(mine - real), len(real - mine)))
    return scores


def _base(ch_type: str) -> str:
    for wrapper in ("LowCardinality(", "Nullable("):
        if ch_type.startswith(wrapper):
            ch_type = ch_type[len(wrapper):-1]
    return ch_type


def death_period_sql(column: str, ch_type: str) -> str:
    """`YYYY-MM` of the death from a kept date, a month string or a year (then its December)."""
    base = _base(ch_type)
    if base.startswith(("Date", "DateTime")):
        return f"formatDateTime({column}, '%Y-%m')"
    if base == "String":
        return f"substring({column}, 1, 7)"
    if base.startswith(("Int", "UInt")):
        return f"concat(toString({column}), '-12')"
    raise ValueError(f"date_of_death of type {ch_type} cannot give a period")


def _literals(values: Iterable[str]) -> str:
    return ", ".join("'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'" for value in sorted(values))


def rules_sql(database: str, columns: dict[str, dict[str, str]]) -> dict[str, str]:
    """The SELECT of each rule whose tables and columns exist: (kind, subject, period, details)."""
    def table(name: str) -> str:
        return ddl.qualified(database, name)

    def has(name: str, *needed: str) -> bool:
        return all(column in columns.get(name, {}) for column in needed)

    rules: dict[str, str] = {}
    if has(CLAIMS, "national_id", "period", "benefit_type") and has(INCOMES, "national_id", "period", "declared_income"):
        rules[UNDECLARED_INCOME] = f"""
            SELECT '{UNDECLARED_INCOME}' AS kind, c.national_id AS subject, c.period AS period,
                   toJSONString(map('benefit_type', c.benefit, 'declared_income', toString(i.income))) AS details
            FROM (SELECT national_id, period, any(toString(benefit_type)) AS benefit FROM {table(CLAIMS)} FINAL
                  WHERE toString(benefit_type) IN ({_literals(MEANS_TESTED)}) GROUP BY national_id, period) AS c
            INNER JOIN (SELECT national_id, period, sum(declared_income) AS income FROM {table(INCOMES)} FINAL
                        GROUP BY national_id, period HAVING income > {INCOME_THRESHOLD_EUR!r}) AS i
            ON c.national_id = i.national_id AND c.period = i.period"""
    if has(CLAIMS, "national_id", "period", "bank_account"):
        rules[SHARED_BANK_ACCOUNT] = f"""
            SELECT '{SHARED_BANK_ACCOUNT}' AS kind, w.national_id AS subject, w.period AS period,
                   toJSONString(map('bank_account', w.bank_account, 'claimants', toString(a.claimants))) AS details
            FROM (SELECT DISTINCT national_id, period, bank_account FROM {table(CLAIMS)} FINAL) AS w
            INNER JOIN (SELECT bank_account, period, uniqExact(national_id) AS claimants FROM {table(CLAIMS)} FINAL
                        GROUP BY bank_account, period HAVING claimants >= {SHARED_ACCOUNT_MIN_CLAIMANTS}) AS a
            ON w.bank_account = a.bank_account AND w.period = a.period"""
    if has(CLAIMS, "national_id", "period") and has(DEATHS, "national_id", "date_of_death"):
        died = death_period_sql("date_of_death", columns[DEATHS]["date_of_death"])
        benefit = "toString(benefit_type)" if has(CLAIMS, "benefit_type") else "''"
        rules[CLAIM_AFTER_DEATH] = f"""
            SELECT '{CLAIM_AFTER_DEATH}' AS kind, w.national_id AS subject, w.period AS period,
                   toJSONString(map('benefit_type', w.benefit, 'died_in_period', d.died)) AS details
            FROM (SELECT national_id, period, any({benefit}) AS benefit FROM {table(CLAIMS)} FINAL GROUP BY national_id, period) AS w
            INNER JOIN (SELECT national_id, min({died}) AS died FROM {table(DEATHS)} FINAL
                        WHERE date_of_death IS NOT NULL GROUP BY national_id) AS d
            ON w.national_id = d.national_id
            WHERE w.period > d.died"""
    return rules


def insert_alerts_sql(database: str, kind: str, rule: str) -> str:
    """New findings of one rule into `alerts`, skipping (kind, subject, period) already alerted."""
    alerts = ddl.qualified(database, ALERTS_TABLE)
    return f"""
        INSERT INTO {alerts} (kind, subject, period, details)
        SELECT kind, subject, period, any(details) FROM ({rule}) AS found
        WHERE subject IS NOT NULL AND (kind, subject, period) NOT IN (SELECT kind, subject, period FROM {alerts} WHERE kind = '{kind}')
        GROUP BY kind, subject, period"""


class FraudDetector:
    """Runs the fraud rules in the fraud database and publishes new alerts to `alerts.fraud`."""

    def __init__(self, settings: Settings, client: Client, registry: object | None = None) -> None:
        self.settings = settings
        self.client = client
        self.registry = registry
        self.database = ddl.database_name(settings.clickhouse_database_prefix, settings.fraud_recipient)
        self._ready = False
        self._producer: Producer | None = None
        self._encode: Callable[[dict], bytes] | None = None
        self._skipped: set[str] = set()

    def setup(self) -> None:
        if self._ready:
            return
        self.client.command(ddl.create_database_sql(self.database))
        for table in (ALERTS_TABLE, PUBLISHED_TABLE):
            extra = "details String, detected_at DateTime64(3, 'UTC') DEFAULT now64(3)" if table == ALERTS_TABLE else \
                "published_at DateTime64(3, 'UTC') DEFAULT now64(3)"
            self.client.command(
                f"CREATE TABLE IF NOT EXISTS {ddl.qualified(self.database, table)} "
                f"(kind LowCardinality(String), subject String, period String, {extra}) "
                "ENGINE = ReplacingMergeTree ORDER BY (kind, subject, period)"
            )
        self._ready = True

    def _columns(self) -> dict[str, dict[str, str]]:
        result = self.client.query(
            "SELECT table, name, type FROM system.columns WHERE database = {db:String}", parameters={"db": self.database}
        )
        columns: dict[str, dict[str, str]] = {}
        for table, name, kind in result.result_rows:
            columns.setdefault(table, {})[name] = kind
        return columns

    def detect(self) -> list[Alert]:
        """Run every rule, then publish the alerts not published yet; returns those alerts."""
        self.setup()
        rules = rules_sql(self.database, self._columns())
        for kind in FRAUD_KINDS:
            if kind not in rules and kind not in self._skipped:
                self._skipped.add(kind)
                log.info("fraud rule %s is off: the fraud database lacks the tables or fields it needs", kind)
        for kind, rule in rules.items():
            self.client.command(insert_alerts_sql(self.database, kind, rule))
        return self.publish()

    def publish(self) -> list[Alert]:
        """Send alerts not yet acknowledged by the broker to `alerts.fraud`, then record them."""
        alerts = ddl.qualified(self.database, ALERTS_TABLE)
        published = ddl.qualified(self.database, PUBLISHED_TABLE)
        new = self._select(f"WHERE (kind, subject, period) NOT IN (SELECT kind, subject, period FROM {published})")
        if not new:
            return []
        producer, encode = self._publisher()
        for alert in new:
            value = encode({"kind": alert.kind, "subject": alert.subject, "period": alert.period,
                            "details": alert.details, "detected_at": alert.detected_at})
            producer.produce(ALERTS_TOPIC, key=alert.subject.encode(), value=value)
        if producer.flush(self.settings.kafka_timeout_s) > 0:
            log.warning("alerts.fraud did not acknowledge %d alerts in time; they are sent again after the next batch", len(new))
            return []
        self.client.insert(published, [[a.kind, a.subject, a.period] for a in new], column_names=["kind", "subject", "period"])
        log.info("published %d fraud alerts from %s", len(new), alerts)
        return new

    def _publisher(self) -> tuple[Producer, Callable[[dict], bytes]]:
        if self._producer is None or self._encode is None:
            from backbone.serde import encoder_for, registry_client

            Topics(self.settings).ensure(ALERTS_TOPIC)
            registry = self.registry or registry_client(self.settings)
            self._encode = encoder_for(registry, f"{ALERTS_TOPIC}-value", ALERT_SCHEMA)
            self._producer = Producer(self.settings.producer_config())
        return self._producer, self._encode

    def _select(self, where: str = "", limit: int | None = None) -> list[Alert]:
        alerts = ddl.qualified(self.database, ALERTS_TABLE)
        tail = f" LIMIT {int(limit)}" if limit else ""
        result = self.client.query(
            f"SELECT kind, subject, period, details, detected_at FROM {alerts} FINAL {where} ORDER BY detected_at, kind, subject, period{tail}"
        )
        return [Alert(*row) for row in result.result_rows]

    def alerts(self, kind: str | None = None, limit: int | None = None) -> list[Alert]:
        """Alerts raised so far, oldest first (optionally of one kind)."""
        self.setup()
        if kind is not None and kind not in FRAUD_KINDS:
            from backbone.errors import BackboneError

            raise BackboneError(f"unknown fraud kind {kind!r}; use one of {', '.join(FRAUD_KINDS)}")
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
        import threading

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
        import time

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
