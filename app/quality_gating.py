"""Fraud precision and recall with the quality gate on and off, under planted defects (issue 32).

The same seeded synthetic stream, with defects planted at their usual rates in every hour and a
burst in one (`BURST`: 30% of the income declarations with a negative income), is routed hour by
hour through the processor's own router with its quality monitor, under the repository's
agreements twice: once as they are with the fraud recipient's agreements requiring quality
(`BARS`, records held on a breach: the gate on) and once with no bar (the gate off). The fraud
team's shared records are decoded and landed in its tables (the sink's DDL), the fraud rules run
(`FraudDetector`, their SQL) and the alerts are scored against the generator's ground truth.

A gated agreement's records wait for their own window (the processor keeps them in `quality.pending`;
here, in memory): when its hour closes they are released, or held if the window is below the bar.
The burst hour's income declarations are held, the other hours' released: what the figures measure.
"""

from __future__ import annotations

import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from itertools import islice
from typing import Any

from clickhouse_connect.driver.client import Client

from app.scoring import Score, score
from backbone.events.serde import Decoder, LocalSchemas, encoder_for
from backbone.kafka.topics import QUALITY_BREACHES_TOPIC, QUALITY_PENDING_TOPIC, raw_topic, shared_topic
from backbone.keys.keyring import Keyring
from backbone.keys.pseudonym import token
from backbone.policy.agreements import Charter
from backbone.policy.decision import NoConsent
from backbone.policy.engine import PolicyEngine
from backbone.quality.checks import QualityMonitor
from backbone.quality.contract import load_quality, parse_threshold
from backbone.settings import Settings
from consumers import ddl
from consumers.fraud import FraudDetector
from consumers.plans import recipient_plan
from processors.router import Output, Router
from producers.synthetic import generate
from producers.synthetic.defects import Defects, plant

BARS = {"completeness": ">= 98", "validity": ">= 99"}
BURST = Defects(invalid=0.3)  # tax.income_declared: validity 100 - 30/5 = 94, below 99
START = datetime(2026, 12, 7, 6, 30, tzinfo=UTC)


@dataclass
class GatingRun:
    gated: bool
    shared: Counter[str] = field(default_factory=Counter)   # records the fraud team received, by event type
    held: int = 0                                           # permits their window's verdict turned into quality_breach
    breaches: int = 0                                       # breach events the providers got
    scores: list[Score] = field(default_factory=list)

    @property
    def alerts(self) -> int:
        return sum(s.true_positives + s.false_positives for s in self.scores)

    @property
    def precision(self) -> float:
        found = self.alerts
        return sum(s.true_positives for s in self.scores) / found if found else 1.0

    @property
    def recall(self) -> float:
        planted = sum(s.true_positives + s.false_negatives for s in self.scores)
        return sum(s.true_positives for s in self.scores) / planted if planted else 1.0


def gated_charter(charter: Charter, recipient: str, gated: bool) -> Charter:
    """The charter with the recipient's agreements requiring `BARS` (held on a breach) or no bar."""
    bars = {name: parse_threshold(text) for name, text in BARS.items()} if gated else {}
    agreements = tuple(a.model_copy(update={"require_quality": bars, "on_quality_breach": "hold"}) if a.recipient == recipient
                       else a for a in charter.agreements)
    return Charter(charter.catalog, agreements, charter.sources)


def hourly(seed: int, events: int, hours: int, burst_hour: int) -> tuple[Iterator[tuple[datetime, str, dict]], Any]:
    """The seeded stream cut into `hours` hours from `START`, defects planted (the burst in one)."""
    stream = generate(seed=seed, population=max(200, events // 4), events=events)
    per_hour = max(1, events // hours)

    def cut() -> Iterator[tuple[datetime, str, dict]]:
        source = iter(stream)
        for hour in range(hours):
            now = START + timedelta(hours=hour)
            chunk = islice(source, None if hour == hours - 1 else per_hour)
            for event_type, record in plant(chunk, BURST if hour == burst_hour else Defects(), lambda now=now: now):
                yield now, event_type, record
    return cut(), stream


def run(client: Client, settings: Settings, charter: Charter, gated: bool, *, seed: int = 7, events: int = 12_000,
        hours: int = 4, burst_hour: int = 1) -> GatingRun:
    """One run of the stream through the router and the fraud rules, the gate on or off."""
    recipient = settings.fraud_recipient
    charter = gated_charter(charter, recipient, gated)
    keyring = Keyring.for_charter(charter)
    router = Router(charter.catalog, PolicyEngine(charter, keyring), LocalSchemas(), keyring)
    router.quality = QualityMonitor(load_quality(settings.schemas_dir, charter.catalog).values())
    encoders = {t: encoder_for(router.schemas, f"{raw_topic(t)}-value", charter.catalog.events[t].avro)
                for t in charter.catalog.raw_event_types}
    wanted = {shared_topic(recipient, t): t for t in charter.catalog.events}
    decoder, found = Decoder(router.schemas), GatingRun(gated)
    rows: dict[str, list[dict]] = {}
    stream, source = hourly(seed, events, hours, burst_hour)
    pending: dict[bytes | None, list[tuple[bytes, Any]]] = {}  # the pending topic, in memory: window key -> records

    def deliver(outputs: list[Output]) -> None:
        for output in outputs:
            if output.topic in wanted:
                rows.setdefault(wanted[output.topic], []).append(decoder(output.value).record)
            elif output.topic == QUALITY_PENDING_TOPIC:
                pending.setdefault(output.key, []).append((output.value, output.headers))
            elif output.topic == QUALITY_BREACHES_TOPIC:
                found.breaches += 1

    def close(now: datetime, everything: bool = False) -> None:  # as the data plane does when an hour ends
        deliver(router.quality_outputs(now, everything=everything))
        for window in router.gate.due():
            outcomes: Counter[str] = Counter()
            deliver(router.gate.release(window, pending.pop(window.key, []), NoConsent(), now, outcomes))
            router.gate.finish(window, outcomes)

    last = None
    for now, event_type, record in stream:
        if event_type not in encoders:
            continue
        if now != last:
            close(now)
            last = now
        deliver(router.route(raw_topic(event_type), b"k", encoders[event_type](record), None, NoConsent(), now))
    if last is not None:
        close(last + timedelta(hours=1), everything=True)
    found.held = router.counts["quality.held"]
    found.shared = Counter({t: len(r) for t, r in rows.items()})
    prefix = f"g{uuid.uuid4().hex[:8]}_"
    scoped = settings.model_copy(update={"clickhouse_database_prefix": prefix})
    alerts = _detect(client, scoped, charter, rows)
    found.scores = score(alerts, source.ground_truth, lambda value: token("fraud", value, keyring=keyring))
    return found


def _detect(client: Client, settings: Settings, charter: Charter, rows: dict[str, list[dict]]) -> list[Any]:
    plan = recipient_plan(settings, charter, settings.fraud_recipient)
    database = ddl.database_name(settings.clickhouse_database_prefix, settings.fraud_recipient)
    client.command(ddl.create_database_sql(database))
    try:
        by_table = {destination.table: (destination, columns) for destination, columns in plan.tables.items()}
        for event_type, records in rows.items():
            destination, columns = by_table[ddl.table_name(event_type)]
            for statement in ddl.table_sql(database, destination.table, columns, destination.order_by, None,
                                           projections=destination.projections):
                client.command(statement)
            names = [column.name for column in columns]
            client.insert(ddl.qualified(database, destination.table), [[r.get(n) for n in names] for r in records],
                          column_names=names)
        for destination, columns in plan.tables.items():  # a table no record reached is still there, empty
            for statement in ddl.table_sql(database, destination.table, columns, destination.order_by, None,
                                           projections=destination.projections):
                client.command(statement)
        detector = FraudDetector(settings, client, leads=lambda: False)
        detector.detect()
        alerts = detector.alerts()
        detector.close()
        return alerts
    finally:
        client.command(f"DROP DATABASE IF EXISTS {database} SYNC")
