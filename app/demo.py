"""`backbone demo`: the whole flow on the embedded stack, with live progress and a summary.

Starts the broker and registry, creates one keyring per role (`backbone.keys.roles`), runs a real processor worker (`backbone process`,
a Faust worker, as a child process) and the ClickHouse sinks (threads of this process: chDB is one
process per directory), produces a seeded population's events for every agency, demonstrates a
consent withdrawal and an agreement suspension taking effect in flight, waits until every event is
decided and landed, then reports. Everything lives under `<data dir>/demo`, wiped at each run.
"""

from __future__ import annotations

import os
import shutil
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path
from typing import Any

from app.dp_release import run_release, source_table
from app.local import ProcessorWorker, provision_role_keyrings, stack_settings, token_environment, worker_environment
from app.retention import RetentionDrop, retention_drops
from app.scoring import score
from backbone.audit.log import public_key_map
from backbone.audit.published import read_published, write_published
from backbone.clickhouse.client import make_client, serve_readers
from backbone.clickhouse.endpoint import ChdbServer
from backbone.control import agreement_changes
from backbone.errors import BackboneError
from backbone.events.catalog import load_catalog
from backbone.events.serde import registry_client
from backbone.files.private import private_directory
from backbone.kafka import dlq
from backbone.keys.keyring import BUILT_IN_DOMAINS, PROCESSOR_SIGNER, Keyring
from backbone.keys.pseudonym import token
from backbone.policy.agreements import load_agreements
from backbone.quality.contract import load_quality
from backbone.settings import Settings
from backbone.stack.embedded import EmbeddedStack, free_port, port_in_use
from consumers import ddl
from consumers.audit_trail import ClickHouseTrail
from consumers.batching import SinkThreads
from consumers.fraud import FraudDetector
from consumers.quality import landed_scorecards, quality_database, quality_sink
from consumers.sink import Sink, sinks_for
from producers import AgencyProducer, ConsentPublisher
from producers.synthetic import SyntheticStream, write_ground_truth

AUDIT = f"{ddl.AUDIT_DATABASE}.{ddl.AUDIT_TABLE}"


@contextmanager
def _environment(**values: str) -> Iterator[None]:
    """`values` in os.environ while the block runs (a child process started there inherits them)."""
    saved = {name: os.environ.get(name) for name in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
DEMO_AGREEMENT = "tax-to-fraud"


@dataclass
class InFlight:
    """What the in-flight demonstrations showed."""

    consent_before: str = ""
    consent_after: str = ""
    consent_seconds: float = 0.0
    suspended_decision: str = ""
    reactivated_decision: str = ""
    subject: str = ""  # the citizen of the consent demonstration (the portal's demo link is for them)


PUBLISHED_KEYS = "audit-keys.json"  # the public signing keys verifiers check the demo's trail against


@dataclass
class DemoResult:
    produced: Counter[str] = field(default_factory=Counter)
    decisions: list[tuple[str, str, int]] = field(default_factory=list)  # recipient, decision/reason, count
    rows: list[tuple[str, str, int]] = field(default_factory=list)  # database, table, rows
    dlq: dict[str, int] = field(default_factory=dict)
    alerts: Counter[str] = field(default_factory=Counter)
    scores: list[Any] = field(default_factory=list)
    in_flight: InFlight = field(default_factory=InFlight)
    clickhouse_dsn: str = ""
    truth_path: Path | None = None
    elapsed_s: float = 0.0
    audit: Any = None  # the landed audit trail's verification (`backbone.audit.log.Report`)
    keyrings: list[tuple[str, str, Path | None]] = field(default_factory=list)  # part, role, keyring it opens
    retention_drops: list[RetentionDrop] = field(default_factory=list)
    catalog: dict[str, list[Path]] = field(default_factory=dict)  # kind -> files (`app/catalog.py`)
    lineage_events: Path | None = None  # the processor's OpenLineage run events (file transport)
    statistics: Any = None  # the DP release of claims per region for the busiest month (`app.dp_release.Release`)


class Demo:
    """One demo run. `run()` returns the figures the summary prints."""

    def __init__(self, base: Settings, events: int, seed: int, keep_ports: bool, report: Any) -> None:
        self.base = base
        self.events = events
        self.seed = seed
        self.keep_ports = keep_ports
        self.report = report  # callable(stage, **figures) for progress
        self.data_dir = (base.data_dir / "demo").resolve()
        self.stack: EmbeddedStack | None = None
        self.worker: ProcessorWorker | None = None
        self.settings: Settings | None = None
        self.client: Any = None
        self._sinks: list[Sink] = []
        self._sink_threads: SinkThreads | None = None
        self._served: ChdbServer | None = None  # the demo's chDB directory, read-only for other processes
        self.result = DemoResult()
        self.in_flight_events = 0  # raw events the in-flight demonstrations sent
        # with --keep-running every long-running part serves Prometheus metrics: part -> URL
        self.metrics_urls: dict[str, str] = {}
        self._metrics_ports = {part: free_port() for part in ("registry", "processor", "sinks")} if keep_ports else {}

    # set-up ------------------------------------------------------------------------------------
    def start(self) -> Settings:
        started = time.monotonic()
        if self.data_dir.exists():
            shutil.rmtree(self.data_dir)
        private_directory(self.data_dir)  # 0700, whatever the umask of whoever runs the demo
        broker_port = self.base.broker_port if self.keep_ports and not port_in_use(self.base.broker_port) else 0
        registry_port = self.base.schema_registry_port if self.keep_ports and not port_in_use(self.base.schema_registry_port) else 0
        self.report("stack", note="starting the broker and the schema registry")
        self.stack = EmbeddedStack(self.data_dir, broker_port=broker_port, registry_port=registry_port,
                                   broker_engine=self.base.embedded_broker,
                                   broker_retention_hours=self.base.embedded_broker_retention_hours)
        with _environment(BACKBONE_METRICS_PORT=str(self._metrics_ports.get("registry", 0))):  # the registry child reads it
            self.stack.start()
        self.charter = load_agreements(self.base.agreements_dir, load_catalog(self.base.schemas_dir))
        charter = self.charter
        # Each role its own keyring under its own master key: the processor worker opens the
        # processor's, this process acts as the operator (agreement changes) and opens the operator's.
        self.keyrings = provision_role_keyrings(self.data_dir, charter)
        settings = stack_settings(
            self.stack, self.data_dir,
            clickhouse_dsn=f"chdb://{self.data_dir / 'clickhouse'}",
            kafka_partitions=self.base.kafka_partitions,
            clickhouse_database_prefix="",
            **self.keyrings["operator"].settings(),  # the operator's keys stay in a file, never on the token
            audit_keys_file=self.data_dir / PUBLISHED_KEYS,
        )
        self.settings = settings
        # the console's oversight page computes a person's oversight pseudonym: the oversight role's keyring
        self.oversight_settings = settings.model_copy(update=self.keyrings["oversight"].settings())
        processor = self.keyrings["processor"]
        processor_env = processor.environment()
        if self.base.key_provider != "file":
            # the processor's domain, encryption and signing keys are made in the token; only it logs in
            token = self.base.model_copy(update={**processor.settings(), "data_dir": self.data_dir})
            processor_env |= {"key_provider": self.base.key_provider,
                              **{k.removeprefix("BACKBONE_").lower(): v for k, v in token_environment(token).items()}}
            self.keyring = Keyring.open(token)
            self.keyring.ensure(sorted({*BUILT_IN_DOMAINS, *charter.domains()}), sorted(charter.providers()), [PROCESSOR_SIGNER])
        self.result.keyrings = [
            ("processor worker", "processor", processor.keyring_path),
            ("agreement changes (this process)", "operator", self.keyrings["operator"].keyring_path),
            ("re-identification, audit subject", "oversight", self.keyrings["oversight"].keyring_path),
            ("sinks", "(none)", None),
            ("fraud scoring against the ground truth (the demo's check)", "processor", processor.keyring_path),
        ]
        self.report("keys", note="one keyring per role: " + ", ".join(f"{r.role} {r.keyring_path.name}" for r in self.keyrings.values()))
        # scoring pseudonymises the synthetic ground truth as the processor did: the demo's own check
        if self.base.key_provider == "file":
            self.keyring = processor.open()
        self.publish_keys()
        self.report("processor", note="starting a processor worker (Faust)")
        self.worker = ProcessorWorker(settings, "logs/processor", metrics_port=str(self._metrics_ports.get("processor", 0)),
                                      **processor_env)
        self.worker.start(timeout=120)
        self.report("sinks", note="starting the ClickHouse sinks (chDB)")
        self.client = make_client(settings.clickhouse_dsn)
        self._sinks = sinks_for(settings, charter, lambda: make_client(settings.clickhouse_dsn or ""), registry_client(settings))
        self._sinks.append(quality_sink(settings, make_client(settings.clickhouse_dsn or ""), load_quality(settings.schemas_dir, charter.catalog)))
        self._served = serve_readers(settings.clickhouse_dsn or "")  # backbone status, queries and the console read it meanwhile
        if self._metrics_ports:
            self._serve_sink_metrics(settings)
        self._sink_threads = SinkThreads(self._sinks).start()
        self.result.clickhouse_dsn = settings.clickhouse_dsn or ""
        self.result.elapsed_s = time.monotonic() - started
        return settings

    def _serve_sink_metrics(self, settings: Settings) -> None:
        from prometheus_client import REGISTRY

        from backbone.telemetry import metrics

        metrics.SinkCollector(self._sinks)
        REGISTRY.register(metrics.LagCollector(settings, {sink.group_id for sink in self._sinks} | {"backbone-processor"}))
        metrics.serve(settings, self._metrics_ports["sinks"])
        self.metrics_urls = {part: f"http://{settings.metrics_host}:{port}/metrics" for part, port in self._metrics_ports.items()}

    def environment(self) -> dict[str, str]:
        """`BACKBONE_*` variables pointing a process at this demo's stack."""
        assert self.settings is not None
        return worker_environment(self.settings)

    # the flow ----------------------------------------------------------------------------------
    def produce(self) -> SyntheticStream:
        assert self.settings is not None
        population = max(200, self.events // 11)  # about one event a person a month: eleven months, up to about now
        stream = SyntheticStream(seed=self.seed, population=population, events=self.events)
        producers: dict[str, AgencyProducer] = {}
        catalog = load_catalog(self.settings.schemas_dir)
        sent = 0
        try:
            for agency in sorted(stream.agencies):
                producers[agency] = ConsentPublisher(self.settings, catalog) if agency == "consent" else AgencyProducer(agency, self.settings, catalog)
            for event_type, record in stream:
                producers[record["provider"]].send(event_type, record)
                self.result.produced[event_type] += 1
                sent += 1
                if sent % 2000 == 0:
                    self.report("produce", completed=sent, total=self.events)
        finally:
            for producer in producers.values():
                producer.close()
        self.report("produce", completed=sent, total=self.events)
        self.result.truth_path = self.data_dir / "ground_truth.json"
        write_ground_truth(self.result.truth_path, stream.ground_truth)
        self.ground_truth = list(stream.ground_truth)
        return stream

    def decided_events(self) -> int:
        return int(self.client.query(f"SELECT uniqExact(event_id) FROM {AUDIT}").result_rows[0][0])

    def wait_until_decided(self, expected: int, timeout: float) -> int:
        """Block until the audit database holds a decision for `expected` events (bounded)."""
        deadline = time.monotonic() + timeout
        decided = 0
        while time.monotonic() < deadline:
            self._check_alive()
            decided = self.decided_events()
            self.report("decide", completed=decided, total=expected)
            if decided >= expected:
                return decided
            time.sleep(0.5)
        return decided

    def _check_alive(self) -> None:
        if self.worker is not None and not self.worker.alive():
            raise BackboneError(f"the processor worker stopped; see {self.worker.log_path}")
        if self._sink_threads is not None:
            self._sink_threads.check()

    def decision_for(self, event_id: str, recipient: str, timeout: float = 30.0) -> str:
        """`permit` or the deny reason of one event for one recipient, once the audit sink has it."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            rows = self.client.query(
                f"SELECT decision, reason FROM {AUDIT} WHERE event_id = {{e:String}} AND recipient = {{r:String}} LIMIT 1",
                parameters={"e": event_id, "r": recipient},
            ).result_rows
            if rows:
                decision, reason = rows[0]
                return "permit" if decision == "permit" else str(reason)
            time.sleep(0.2)
        return "not decided in time"

    def show_consent_withdrawal(self) -> None:
        """A citizen withdraws consent for research; the very next claim is no longer shared."""
        assert self.settings is not None
        subject = str(900_000_000 + uuid.uuid4().int % 99_999_999)
        claim = {
            "governance": {"lawful_basis": "consent", "purposes": ["scientific_research", "service_provision"], "consent_id": "demo-consent"},
            "national_id": subject, "name": "Demo Citizen", "date_of_birth": date(1985, 6, 1), "postcode": "1011 KK",
            "benefit_type": "housing_allowance", "period": "2026-01", "monthly_amount": 420.0,
            "bank_account": "NL20INGB0001234567", "household_size": 1, "declared_other_income": 0.0,
        }
        self.result.in_flight.subject = subject
        with ConsentPublisher(self.settings) as consent:
            consent.grant(subject, "scientific_research")
        time.sleep(1.0)
        with AgencyProducer("welfare", self.settings) as producer:
            before = producer.send("welfare.benefit_claimed", dict(claim))  # send fills event_id in the dict it gets
        self.in_flight_events += 1
        self.result.in_flight.consent_before = self.decision_for(before, "research")
        with ConsentPublisher(self.settings) as consent:
            consent.withdraw(subject, "scientific_research")
        withdrawn_at = time.monotonic()
        # send claims until one is decided after the withdrawal reached the worker (bounded)
        outcome = ""
        for _ in range(20):
            with AgencyProducer("welfare", self.settings) as producer:
                after = producer.send("welfare.benefit_claimed", dict(claim))
            self.in_flight_events += 1
            outcome = self.decision_for(after, "research")
            if outcome != "permit":
                break
            time.sleep(0.25)
        self.result.in_flight.consent_after = outcome
        self.result.in_flight.consent_seconds = time.monotonic() - withdrawn_at

    def show_suspension(self) -> None:
        """The operator suspends tax -> fraud; the next income is denied without restarting anything."""
        assert self.settings is not None
        income = {
            "governance": {"lawful_basis": "legal_obligation", "purposes": ["fraud_prevention_and_detection"], "consent_id": None},
            "national_id": str(800_000_000 + uuid.uuid4().int % 99_999_999), "name": "Demo Taxpayer", "employer_id": "E-0001",
            "period": "2026-01", "declared_income": 2100.0, "bank_account": "NL39RABO0300065264",
        }
        self._change_agreement("suspended")
        self.publish_keys()
        try:
            with AgencyProducer("tax", self.settings) as producer:
                event_id = producer.send("tax.income_declared", dict(income))
            self.in_flight_events += 1
            self.result.in_flight.suspended_decision = self.decision_for(event_id, "fraud")
        finally:
            self._change_agreement("active")
        with AgencyProducer("tax", self.settings) as producer:
            event_id = producer.send("tax.income_declared", {**income, "period": "2026-02"})
        self.in_flight_events += 1
        self.result.in_flight.reactivated_decision = self.decision_for(event_id, "fraud")

    def _change_agreement(self, status: str) -> None:
        """Publish a status change and wait until the worker says it applied it (no restart)."""
        assert self.settings is not None and self.worker is not None
        offset = self.worker.log_size()
        changed = agreement_changes.change_status(self.settings, self.charter, DEMO_AGREEMENT, None, status)
        if not self.worker.wait_for_line(f"agreement {changed.key} is now {status}", offset):
            raise BackboneError(f"the processor did not apply {changed.key} -> {status} within 15 s; see {self.worker.log_path}")

    def release_statistics(self) -> None:
        """Statistics' DP release of claims per region for the month with most landed claims (welfare-to-fraud's dp_release)."""
        assert self.settings is not None
        table = source_table(self.settings, self.charter.current("welfare-to-fraud"))
        busiest = self.client.query(f"SELECT period FROM {table} FINAL GROUP BY period ORDER BY count() DESC LIMIT 1").result_rows
        if busiest:  # the operator's keyring seals the spend, under an identity of its own
            releaser = self.settings.model_copy(update={"identity": self.settings.identity or "statistics-releaser"})
            self.result.statistics = run_release(releaser, self.client, self.charter, "welfare-to-fraud", window=busiest[0][0])

    def settle(self, timeout: float = 30.0) -> None:
        """Wait until the sinks have landed everything (no new rows for a few seconds)."""
        deadline = time.monotonic() + timeout
        last, quiet_since = -1, time.monotonic()
        while time.monotonic() < deadline:
            landed = sum(sink.stats.landed for sink in self._sinks)
            if landed != last:
                last, quiet_since = landed, time.monotonic()
            elif time.monotonic() - quiet_since > 3.0:
                return
            time.sleep(0.5)

    def collect(self) -> DemoResult:
        assert self.settings is not None
        result = self.result
        result.decisions = [
            (r, d, int(n)) for r, d, n in self.client.query(
                f"SELECT recipient, if(decision = 'permit', 'permit', concat('deny: ', assumeNotNull(reason))) AS d, count() "
                f"FROM {AUDIT} GROUP BY recipient, d ORDER BY recipient, d").result_rows
        ]
        tables = self.client.query(
            "SELECT database, name FROM system.tables WHERE database NOT IN ('system', 'information_schema', 'INFORMATION_SCHEMA', 'default') "
            "AND engine LIKE '%MergeTree' ORDER BY database, name").result_rows
        result.rows = [(db, name, int(self.client.query(f"SELECT count() FROM {db}.{name} FINAL").result_rows[0][0])) for db, name in tables]
        prefix = self.settings.clickhouse_database_prefix
        permitted = {(ddl.database_name(prefix, r), ddl.table_name(e)): int(n) for r, e, n in self.client.query(
            f"SELECT recipient, event_type, uniqExact(event_id) FROM {AUDIT} WHERE decision = 'permit' GROUP BY recipient, event_type").result_rows}
        table_sql = {(db, name): sql for db, name, sql in self.client.query(
            "SELECT database, name, create_table_query FROM system.tables WHERE engine LIKE '%MergeTree'").result_rows}
        result.retention_drops = retention_drops(permitted, result.rows, table_sql)
        result.dlq = self.dead_letters()
        detector = FraudDetector(self.settings, self.client)
        detector.detect()
        alerts = detector.alerts()
        detector.close()
        result.alerts = Counter(alert.kind for alert in alerts)
        result.scores = score(alerts, self.ground_truth, lambda value: token("fraud", value, keyring=self.keyring))
        # the public halves of the processor's and the operator's signing keys, as published
        self.publish_keys()
        # the lineage and catalogue of what was enforced, beside the data (`backbone catalog all`)
        from app.catalog import write_all

        result.catalog = write_all(self.charter, self.settings, self.data_dir / "catalog")
        result.lineage_events = self.data_dir / "lineage" / "openlineage.jsonl"
        result.audit = ClickHouseTrail(self.client, self.settings.clickhouse_database_prefix, self.charter.catalog).verify(
            public_key_map(read_published(self.data_dir / PUBLISHED_KEYS)))
        return result

    def quality_scorecards(self, timeout: float = 60.0) -> list[tuple[Any, ...]]:
        """Each provider's scorecards: the worker stops (handing its open hour's windows over) and the
        quality sink lands them."""
        assert self.settings is not None and self.worker is not None
        self.worker.stop()
        database, deadline = quality_database(self.settings), time.monotonic() + timeout
        while not (rows := landed_scorecards(self.client, database)) and time.monotonic() < deadline:
            time.sleep(0.5)
        return rows

    def publish_keys(self) -> int:
        """Write the processor's and the operator's public signing keys where verifiers read them
        (`BACKBONE_AUDIT_KEYS_FILE`): no role's keyring holds the other's. Again after operator
        actions: an operator's own key is made at their first action."""
        public = [*self.keyring.public_keys(), *self.keyrings["operator"].open().public_keys()]
        return write_published(self.data_dir / PUBLISHED_KEYS, public)

    def dead_letters(self) -> dict[str, int]:
        """DLQ entries by `stage: reason`, read from the DLQ topics themselves."""
        assert self.settings is not None
        return {f"{stage}: {reason}": n for (stage, reason), n in sorted(dlq.count(self.settings).items())}

    # tear-down ---------------------------------------------------------------------------------
    def stop(self) -> None:
        if self._sink_threads is not None:
            self._sink_threads.stop()
        if self.worker is not None:
            self.worker.stop()
        if self._served is not None:
            self._served.close()
            self._served = None
        if self.client is not None:
            self.client.close()
            self.client = None
        if self.stack is not None:
            self.stack.stop()
            self.stack = None
