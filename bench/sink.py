"""Sink benchmark: rows/s landed by the sink on chDB beside a bare clickhouse-connect insert of the
same rows in the same run, and the time from a planted fraud event's production to its alert.

    python -m bench.sink [--rows 200000] [--alerts 20]

Starts its own embedded broker and registry and a fresh chDB directory (or uses
BACKBONE_KAFKA_BOOTSTRAP / BACKBONE_SCHEMA_REGISTRY_URL when set).
"""

from __future__ import annotations

import argparse
import io
import json
import os
import statistics
import tempfile
import threading
import time
import uuid
from pathlib import Path

from confluent_kafka import Consumer, Producer
from fastavro import parse_schema, schemaless_reader

from backbone.clickhouse.client import make_client
from backbone.events.catalog import load_catalog
from backbone.events.serde import encoder_for, registry_client
from backbone.kafka.topics import ALERTS_TOPIC, Topics, shared_topic
from backbone.keys.keyring import Keyring
from backbone.policy.agreements import load_agreements
from backbone.policy.decision import NoConsent
from backbone.policy.engine import PolicyEngine
from backbone.settings import PROJECT_ROOT, load_settings
from consumers import ddl
from consumers.fraud import FraudDetector
from consumers.sink import Sink, recipient_plan
from consumers.typemap import table_columns
from producers.synthetic import generate

EVENT = "tax.income_declared"


def _released(engine: PolicyEngine, rows: int) -> list[dict]:
    """`rows` income declarations as released to the fraud team (real policy engine)."""
    out: list[dict] = []
    seed = 0
    now = time.time()
    from datetime import UTC, datetime

    moment = datetime.fromtimestamp(now, UTC)
    while len(out) < rows:
        for event_type, record in generate(seed=seed, population=5_000, events=rows * 2, agencies=("tax",)):
            if event_type != EVENT:
                continue
            for decision in engine.decide(record, NoConsent(), moment):
                if decision.permitted and decision.recipient == "fraud":
                    out.append(decision.record)
            if len(out) >= rows:
                break
        seed += 1
    return out[:rows]


def throughput(settings, engine, client, rows: int) -> tuple[float, float]:  # noqa: ANN001
    registry = registry_client(settings)
    topic = shared_topic("fraud", EVENT)
    Topics(settings).ensure(topic)
    agreement = next(a for a in engine.charter.agreements if a.recipient == "fraud" and EVENT in a.event_types and a.in_force_at(__import__("datetime").datetime.now(__import__("datetime").UTC)))
    avro = engine.recipient_schema(agreement.id, EVENT, agreement.version)
    encode = encoder_for(registry, f"{topic}-value", avro)
    records = _released(engine, rows)
    values = [encode(record) for record in records]
    producer = Producer(settings.producer_config())
    for value in values:
        producer.produce(topic, key=uuid.uuid4().bytes, value=value)
        producer.poll(0)
    producer.flush(60)

    # bare clickhouse-connect insert of the same rows (decoded beforehand, not timed)
    parsed = parse_schema(json.loads(json.dumps(avro)))
    names = [field["name"] for field in avro["fields"]]
    decoded = []
    for value in values:
        buffer = io.BytesIO(value)
        buffer.seek(5)
        record = schemaless_reader(buffer, parsed, None)
        decoded.append([record[name] for name in names])
    database = ddl.database_name(settings.clickhouse_database_prefix, "bare")
    client.command(ddl.create_database_sql(database))
    client.command(ddl.create_table_sql(database, "t", table_columns(avro), ("event_id",), None))
    started = time.perf_counter()
    for offset in range(0, len(decoded), settings.sink_batch_rows):
        client.insert(ddl.qualified(database, "t"), decoded[offset:offset + settings.sink_batch_rows], column_names=names)
    bare = rows / (time.perf_counter() - started)

    charter = engine.charter
    sink = Sink(settings, recipient_plan(settings, charter, "fraud"), client, registry)
    consumer = sink._open()  # noqa: SLF001 - the benchmark times landing, not the group join
    while not consumer.assignment():
        consumer.poll(0.1)
    started = time.perf_counter()
    while sink.stats.landed < rows:
        sink.poll(0.5)
        if time.perf_counter() - started > 300:
            break
    sink.flush()
    landed = sink.stats.landed / (time.perf_counter() - started)
    sink.close()
    return bare, landed


def alert_latency(settings, engine, client, count: int) -> list[float]:  # noqa: ANN001
    """Plant claims after death one at a time; seconds from producing the claim to reading its alert."""
    from datetime import UTC, date, datetime

    registry = registry_client(settings)
    detector = FraudDetector(settings, client, registry)
    sink = Sink(settings, recipient_plan(settings, engine.charter, "fraud"), client, registry,
                after_batch=detector.after_batch, batch_seconds=0.1)
    stop = threading.Event()
    runner = threading.Thread(target=sink.run, args=(stop,), daemon=True)
    runner.start()
    reader = Consumer(settings.consumer_config(f"bench-alerts-{uuid.uuid4().hex[:6]}", **{"auto.offset.reset": "latest"}))
    reader.subscribe([ALERTS_TOPIC])
    Topics(settings).ensure(ALERTS_TOPIC)
    producer = Producer(settings.producer_config(**{"linger.ms": 0}))
    encoders = {}
    template = {}
    for event_type, record in generate(seed=1, population=300, events=3000, agencies=("welfare", "registry")):
        template.setdefault(event_type, record)
    now = datetime.now(UTC)
    keyring = Keyring.for_charter(engine.charter)
    from backbone.keys.pseudonym import token_function

    pseudonymise, _ = token_function(keyring, "fraud")
    engine = PolicyEngine(engine.charter, keyring)

    def send(record: dict) -> None:
        for decision in engine.decide(record, NoConsent(), now):
            if decision.permitted and decision.recipient == "fraud":
                topic = shared_topic("fraud", record["event_type"])
                if topic not in encoders:
                    Topics(settings).ensure(topic)
                    encoders[topic] = encoder_for(registry, f"{topic}-value", engine.recipient_schema(decision.agreement_id, record["event_type"], decision.agreement_version))
                producer.produce(topic, key=uuid.uuid4().bytes, value=encoders[topic](decision.record))
        producer.flush(10)

    # warm up: the group join and the first rule run
    time.sleep(8)
    latencies = []
    for index in range(-1, count):  # index -1 warms up: topics created, subscription sees them
        national_id = f"9{index + 1:08d}"
        death = dict(template["registry.death_registered"], event_id=str(uuid.uuid4()), national_id=national_id, date_of_death=date(2024, 1, 15))
        claim = dict(template["welfare.benefit_claimed"], event_id=str(uuid.uuid4()), national_id=national_id, period="2024-03",
                     bank_account=f"NL00BENCH{index + 1:010d}")
        send(death)
        time.sleep(0.3)
        subject = pseudonymise(national_id)
        started = time.perf_counter()
        send(claim)
        deadline = started + 30
        while time.perf_counter() < deadline:
            message = reader.poll(0.05)
            if message is not None and not message.error() and message.key() == subject.encode():
                if index >= 0:
                    latencies.append(time.perf_counter() - started)
                break
    stop.set()
    runner.join(30)
    reader.close()
    return latencies


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=200_000)
    parser.add_argument("--alerts", type=int, default=20)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-sink-"))
    stack = None
    if not os.environ.get("BACKBONE_KAFKA_BOOTSTRAP"):
        from backbone.stack.embedded import EmbeddedStack

        stack = EmbeddedStack(work / "stack").start()
        os.environ.update(stack.environment())
    try:
        settings = load_settings(data_dir=work, clickhouse_dsn=f"chdb://{work / 'ch'}",
                                 clickhouse_database_prefix=f"bench{uuid.uuid4().hex[:6]}_",
                                 consumer_session_timeout_ms=6000, consumer_heartbeat_interval_ms=500)
        charter = load_agreements(PROJECT_ROOT / "agreements", load_catalog(PROJECT_ROOT / "schemas"))
        engine = PolicyEngine(charter, Keyring.for_charter(charter))
        client = make_client(settings.clickhouse_dsn)
        bare, landed = throughput(settings, engine, client, args.rows)
        print(f"bare clickhouse-connect insert: {bare:,.0f} rows/s")
        print(f"sink (consume + land + commit): {landed:,.0f} rows/s  ({landed / bare:.0%} of bare; target >= 70%)")
        latencies = sorted(alert_latency(settings, engine, client, args.alerts))
        if latencies:
            p99 = latencies[min(len(latencies) - 1, round(0.99 * (len(latencies) - 1)))]
            print(f"fraud alert latency over {len(latencies)}/{args.alerts} planted claims: p50 {statistics.median(latencies) * 1000:,.0f} ms, p99 {p99 * 1000:,.0f} ms")
        else:
            print("fraud alert latency: no alert arrived")
        client.close()
    finally:
        if stack is not None:
            stack.stop()


if __name__ == "__main__":
    main()
