"""The sink lands exactly what was shared, in the agreed shape, and nothing personal.

Shared and audit messages are made the way the processor makes them: the real policy engine
decides and transforms synthetic agency events, the real serde encodes them with the recipient
schema registered in the real registry, and they go to the real broker; the sink lands them in chDB.
Each test renames the charter's recipients with a unique suffix, so topics and databases never mix.
"""

from __future__ import annotations

import re
import threading
import time
import uuid
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import pytest
from confluent_kafka import Consumer, Producer

from backbone.events.catalog import load_catalog
from backbone.events.serde import Encoder, encoder_for, registry_client
from backbone.kafka.topics import AUDIT_TOPIC, Topics, shared_topic
from backbone.keys.keyring import Keyring
from backbone.keys.pseudonym import token_function
from backbone.policy.agreements import Charter, load_agreements
from backbone.policy.decision import NoConsent
from backbone.policy.engine import PolicyEngine
from backbone.settings import PROJECT_ROOT, Settings
from consumers import ddl
from consumers.sink import DLQ_TOPIC, Sink, recipient_plan, sinks_for
from producers.synthetic import generate
from tests.keys import AutoKeyring

pytestmark = pytest.mark.integration
NOW = datetime(2025, 6, 1, tzinfo=UTC)
# Recent months: tables keep rows for the agreed retention counted from each event's time, so a
# fixed past start would age out of the shortest retention (365 days) as the calendar moves on.
SEED_EVENTS = dict(seed=3, population=200, events=3000, fraud_rate=0.05,
                   start=f"{date.today() - timedelta(days=150):%Y-%m}", periods=4)


# --- helpers shared with the other sink, fraud and audit tests ---------------------------------------
def renamed_charter(tmp_path: Path, suffix: str) -> tuple[Path, Charter, dict[str, str]]:
    """The repository's agreements with every recipient renamed `<recipient>_<suffix>`."""
    directory = tmp_path / "agreements"
    directory.mkdir()
    names: dict[str, str] = {}
    for path in sorted((PROJECT_ROOT / "agreements").glob("*.yaml")):
        text = path.read_text()
        match = re.search(r"^recipient:\s*(\S+)", text, re.M)
        if match:
            names[match.group(1)] = f"{match.group(1)}_{suffix}"
            text = re.sub(r"^recipient:\s*(\S+)", lambda m: f"recipient: {names[m.group(1)]}", text, flags=re.M)
        (directory / path.name).write_text(text)
    return directory, load_agreements(directory, load_catalog(PROJECT_ROOT / "schemas")), names


def sink_settings(registry_settings: Settings, agreements_dir: Path, suffix: str, **overrides: object) -> Settings:
    return registry_settings.model_copy(update={
        "agreements_dir": agreements_dir,
        "clickhouse_database_prefix": f"t{suffix}_",
        "fraud_recipient": f"fraud_{suffix}",
        "sink_batch_rows": 500,
        "sink_batch_seconds": 0.3,
        **overrides,
    })


@dataclass
class Published:
    """What was sent: released records per shared topic, raw personal values, audit records."""

    released: dict[str, list[dict]] = field(default_factory=lambda: defaultdict(list))
    personal_values: set[str] = field(default_factory=set)
    # personal values an `identified: true` agreement releases in clear, by recipient
    in_clear: dict[str, set[str]] = field(default_factory=lambda: defaultdict(set))
    audit: list[dict] = field(default_factory=list)
    events: list[tuple[str, dict]] = field(default_factory=list)


def publish(settings: Settings, charter: Charter, keyring: Keyring, events: list[tuple[str, dict]], *, audit: bool = False) -> Published:
    """Decide, transform and encode each event like the processor; produce shared (and audit) topics."""
    engine = PolicyEngine(charter, keyring)
    registry = registry_client(settings)
    topics = Topics(settings)
    producer = Producer(settings.producer_config())
    encoders: dict[tuple[str, int], Encoder] = {}
    oversight, _ = token_function(keyring, "oversight")
    audit_encoder = None
    if audit:
        import json

        topics.ensure(AUDIT_TOPIC, partitions=2)
        schema = json.loads((PROJECT_ROOT / "schemas" / "backbone.AuditEvent.avsc").read_text())
        audit_encoder = encoder_for(registry, f"{AUDIT_TOPIC}-value", schema)
    out = Published()
    for event_type, record in events:
        if event_type not in charter.catalog.events:
            continue
        out.events.append((event_type, record))
        schema = charter.catalog.events[event_type]
        for name in schema.tagged("PII"):
            if record.get(name):
                out.personal_values.add(str(record[name]))
        subject = record.get(schema.subject_field) if schema.subject_field else None
        decided: list[dict] = []
        for decision in engine.decide(record, NoConsent(), NOW):
            if decision.permitted:
                topic = shared_topic(decision.recipient, event_type)
                key = (topic, decision.agreement_version)
                if key not in encoders:
                    topics.ensure(topic, partitions=2)
                    avro = engine.recipient_schema(decision.agreement_id, event_type, decision.agreement_version)
                    encoders[key] = encoder_for(registry, f"{topic}-value", avro)
                producer.produce(topic, key=decision.key.encode() if decision.key else None, value=encoders[key](decision.record),
                                 headers=[("agreement", f"{decision.agreement_id}@{decision.agreement_version}".encode())])
                out.released[topic].append(decision.record)
                for name in schema.tagged("PII"):
                    if decision.record.get(name) is not None and decision.record[name] == record.get(name):
                        out.in_clear[decision.recipient].add(str(record[name]))
            if audit_encoder is not None:  # the decision as the audit.decisions view shows it
                decided.append({
                    "event_id": record["event_id"], "event_type": event_type, "provider": record["provider"],
                    "recipient": decision.recipient, "agreement_id": decision.agreement_id,
                    "agreement_version": decision.agreement_version, "purposes": list(decision.purposes),
                    "decision": "permit" if decision.permitted else "deny", "reason": decision.reason,
                    "released_fields": list(decision.released_fields), "key_ids": list(decision.key_ids),
                    "subject_token": oversight(subject) if subject else None, "decided_at": NOW,
                    "recipient_event_id": decision.record["event_id"] if decision.permitted else None,
                })
        if audit_encoder is not None:  # one audit record per event, as the processor writes it
            out.audit.extend(decided)
            producer.produce(AUDIT_TOPIC, key=record["event_id"].encode(), value=audit_encoder({
                "event_id": record["event_id"], "event_type": event_type, "provider": record["provider"],
                "subject_token": oversight(subject) if subject else None, "decided_at": NOW,
                "decisions": [{"recipient": row["recipient"], "agreement_id": row["agreement_id"],
                               "agreement_version": row["agreement_version"],
                               "outcome": "permit" if row["decision"] == "permit" else row["reason"],
                               "key_ids": row["key_ids"], "recipient_event_id": row["recipient_event_id"]} for row in decided]}))
        producer.poll(0)
    assert producer.flush(30) == 0
    return out


def synthetic_events(**overrides: object) -> tuple[list[tuple[str, dict]], list]:
    stream = generate(**{**SEED_EVENTS, **overrides})
    events = list(stream)
    return events, list(stream.ground_truth)


def normalise(value: object) -> object:
    """Values as both sides can hold them: ids as text, instants as epoch millis, dates as dates."""
    if isinstance(value, uuid.UUID):
        return str(value)
    if isinstance(value, datetime):
        return round((value if value.tzinfo else value.replace(tzinfo=UTC)).timestamp() * 1000)
    if isinstance(value, date):
        return value
    return value


# --- fixtures ----------------------------------------------------------------------------------
@dataclass
class Landed:
    settings: Settings
    charter: Charter
    names: dict[str, str]
    published: Published


@pytest.fixture(scope="module")
def landed(kafka_bootstrap: str, schema_registry_url: str, clickhouse_client, tmp_path_factory: pytest.TempPathFactory) -> Landed:  # noqa: ANN001
    """The seeded synthetic month range, shared to every recipient and landed by every sink once."""
    from backbone.settings import load_settings
    from tests.conftest import TEST_CONSUMER_CONFIG

    suffix = uuid.uuid4().hex[:8]
    tmp_path = tmp_path_factory.mktemp("sink")
    directory, charter, names = renamed_charter(tmp_path, suffix)
    base = load_settings(kafka_bootstrap=kafka_bootstrap, schema_registry_url=schema_registry_url, data_dir=tmp_path / "data",
                         consumer_session_timeout_ms=TEST_CONSUMER_CONFIG["session.timeout.ms"],
                         consumer_heartbeat_interval_ms=TEST_CONSUMER_CONFIG["heartbeat.interval.ms"])
    settings = sink_settings(base, directory, suffix)
    events, _ = synthetic_events()
    published = publish(settings, charter, AutoKeyring(), events, audit=True)
    sinks = sinks_for(settings, charter, clickhouse_client, registry_client(settings))
    threads = [threading.Thread(target=each.run_until_idle, kwargs={"idle_s": 1.5, "timeout_s": 60}) for each in sinks]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for each in sinks:
        each.close()
    return Landed(settings, charter, names, published)


def _rows(client, database: str, table: str) -> list[dict]:  # noqa: ANN001
    result = client.query(f"SELECT * FROM {ddl.qualified(database, table)} FINAL")
    return [dict(zip(result.column_names, row)) for row in result.result_rows]


def test_landed_rows_equal_what_was_shared(landed: Landed, clickhouse_client) -> None:  # noqa: ANN001
    prefix = landed.settings.clickhouse_database_prefix
    assert landed.published.released, "the seeded run shares something"
    for topic, records in landed.published.released.items():
        _, recipient, event_type = topic.split(".", 2)
        rows = _rows(clickhouse_client, ddl.database_name(prefix, recipient), ddl.table_name(event_type))
        landed_by_id = {str(row["event_id"]): row for row in rows}
        assert len(landed_by_id) == len(records) == len(rows), topic
        for record in records:
            row = landed_by_id[record["event_id"]]
            assert {k: normalise(row[k]) for k in record} == {k: normalise(v) for k, v in record.items()}, topic


def test_each_agreement_view_shows_exactly_its_released_fields(landed: Landed, clickhouse_client) -> None:  # noqa: ANN001
    engine = PolicyEngine(landed.charter, AutoKeyring())
    prefix = landed.settings.clickhouse_database_prefix
    for agreement_id in {a.id for a in landed.charter.agreements}:
        agreement = landed.charter.get(agreement_id)
        for event_type in agreement.event_types:
            view = ddl.view_name(agreement_id, event_type, agreement.event_types)
            result = clickhouse_client.query(f"DESCRIBE TABLE {ddl.qualified(ddl.database_name(prefix, agreement.recipient), view)}")
            assert tuple(row[0] for row in result.result_rows) == engine.released_fields(agreement_id, event_type), view


def test_no_personal_value_from_the_producers_reaches_any_database(landed: Landed, clickhouse_client) -> None:  # noqa: ANN001
    prefix = landed.settings.clickhouse_database_prefix
    databases = [ddl.database_name(prefix, r) for r in landed.names.values()] + [ddl.database_name(prefix, ddl.AUDIT_DATABASE)]
    tables = clickhouse_client.query(
        "SELECT database, name FROM system.tables WHERE database IN {dbs:Array(String)} AND engine NOT LIKE '%View%'",
        parameters={"dbs": databases},
    ).result_rows
    assert len(tables) >= 5
    personal = landed.published.personal_values
    assert len(personal) > 100
    in_clear = {ddl.database_name(prefix, r): values for r, values in landed.published.in_clear.items()}
    for database, table in tables:
        # only an agreement with `identified: true` and a legal basis may release a value in clear
        forbidden = personal - in_clear.get(database, set())
        result = clickhouse_client.query(f"SELECT * FROM {ddl.qualified(database, table)}")
        cells = {str(cell) for row in result.result_rows for cell in row}
        cells |= {str(item) for row in result.result_rows for cell in row if isinstance(cell, list | tuple) for item in cell}
        assert not (cells & forbidden), f"{database}.{table} holds a raw personal value"


def test_tables_deduplicate_on_event_id_and_expire_after_the_agreed_retention(landed: Landed, clickhouse_client) -> None:  # noqa: ANN001
    fraud = ddl.database_name(landed.settings.clickhouse_database_prefix, landed.names["fraud"])
    ddl_text = clickhouse_client.command(f"SHOW CREATE TABLE {ddl.qualified(fraud, 'tax_income_declared')}")
    # the fraud tables: by subject, then event id (copies of an event share the subject: consumers.fraud.layout)
    assert "ReplacingMergeTree" in ddl_text and "ORDER BY (national_id, event_id)" in ddl_text
    assert "TTL occurred_at + toIntervalDay(1825)" in ddl_text  # retention counts from the event's time


def test_audit_decisions_land_once_per_event_and_recipient(landed: Landed, clickhouse_client) -> None:  # noqa: ANN001
    audit = ddl.database_name(landed.settings.clickhouse_database_prefix, ddl.AUDIT_DATABASE)
    result = clickhouse_client.query(f"SELECT * FROM {ddl.qualified(audit, ddl.AUDIT_TABLE)}")  # a view over audit.events FINAL
    rows = [dict(zip(result.column_names, row)) for row in result.result_rows]
    ours = {(str(r["event_id"]), r["recipient"]) for r in rows if r["recipient"] in landed.names.values()}
    assert ours == {(a["event_id"], a["recipient"]) for a in landed.published.audit}
    mine = {a["event_id"] for a in landed.published.audit}
    per_event = [r for r in _rows(clickhouse_client, audit, ddl.AUDIT_EVENTS_TABLE) if str(r["event_id"]) in mine]
    assert len(per_event) == len(mine), "one audit record per raw event, every decision inside it"


def test_rows_clickhouse_rejects_go_to_the_sink_dlq_with_reason_and_original_bytes(
    registry_settings: Settings, clickhouse_client, tmp_path: Path, unique: str  # noqa: ANN001
) -> None:
    directory, charter, names = renamed_charter(tmp_path, unique)
    settings = sink_settings(registry_settings, directory, unique)
    events, _ = synthetic_events(events=60)
    good = publish(settings, charter, AutoKeyring(), events)
    topic = shared_topic(names["fraud"], "tax.income_declared")
    producer = Producer(settings.producer_config())
    # a valid header naming the audit schema, but bytes that are no such record; and no wire format at all
    audit_id = encoder_for(registry_client(settings), "audit.decisions-value",
                           __import__("json").loads((PROJECT_ROOT / "schemas/backbone.AuditEvent.avsc").read_text())).schema_id
    bad = [(b"k1", bytes([0]) + audit_id.to_bytes(4, "big") + b"\xff\xff\xff\xff\xff\xff"), (b"k2", b"plain text")]
    for key, value in bad:
        producer.produce(topic, key=key, value=value, headers=[("agreement.id", b"tax-to-fraud")])
    assert producer.flush(10) == 0
    sink = Sink(settings, recipient_plan(settings, charter, names["fraud"]), clickhouse_client, registry_client(settings))
    stats = sink.run_until_idle(idle_s=1.5, timeout_s=60)
    sink.close()
    assert stats.dead_lettered == 2
    assert stats.landed == sum(len(v) for t, v in good.released.items() if t.startswith(f"shared.{names['fraud']}."))

    reader = Consumer(settings.consumer_config(f"dlq-{unique}"))
    reader.subscribe([DLQ_TOPIC])
    found = {}
    deadline = time.monotonic() + 20
    while len(found) < 2 and time.monotonic() < deadline:
        message = reader.poll(0.5)
        if message is None or message.error():
            continue
        headers = dict(message.headers() or [])
        if headers.get("error.source_topic") == topic.encode():
            found[message.key()] = (message.value(), headers)
    reader.close()
    assert {key: value for key, (value, _) in found.items()} == dict(bad)
    for _, headers in found.values():
        assert headers["error.stage"] == b"sink"
        assert headers["agreement.id"] == b"tax-to-fraud", "the original headers are kept"
        assert int(headers["error.source_partition"]) >= 0 and int(headers["error.source_offset"]) >= 0
    # the reasons are codes of the one DLQ contract; ClickHouse's error code is the detail, never a value
    assert found[b"k1"][1]["error.reason"] == b"clickhouse_rejected"
    assert re.fullmatch(rb"code \d+( [A-Z_]+)?", found[b"k1"][1]["error.detail"])
    assert found[b"k2"][1]["error.reason"] == b"bad_magic_byte"
