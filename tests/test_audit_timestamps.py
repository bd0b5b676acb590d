"""RFC 3161 timestamps on the real pipeline: a processor worker with BACKBONE_AUDIT_TSA_URL naming a
real TSA on 127.0.0.1 (`tests.tsa`) has its newest checkpoint timestamped every interval; the TSA
goes down mid-run and deciding goes on, and once it is back the later checkpoints are timestamped;
the audit sinks land the timestamps and `audit verify` checks them from ClickHouse and Kafka;
edits to a landed timestamp in a copy of the audit database are named."""

from __future__ import annotations

import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from io import BytesIO

import pytest
from fastavro import parse_schema, schemaless_reader

from app.local import worker_environment
from backbone.audit import log
from backbone.audit.timestamps import Trust
from backbone.events.catalog import AUDIT_CHECKPOINT, AUDIT_TIMESTAMP, Catalog, load_catalog
from backbone.events.serde import registry_client
from backbone.kafka.topics import AUDIT_TOPIC, CHECKPOINTS_TOPIC, TIMESTAMPS_TOPIC
from backbone.keys.keyring import Keyring
from backbone.settings import PROJECT_ROOT, Settings
from consumers.audit_kafka import verify_kafka
from consumers.audit_trail import ClickHouseTrail
from consumers.sink import Sink, audit_plan, checkpoints_plan, operations_plan, timestamps_plan
from tests.pipeline import AuditRecords, Worker, land, private_stack, read_topic
from tests.test_processor_workers import produce_synthetic
from tests.tsa import LocalTsa

pytestmark = pytest.mark.integration
MUTATE = {"mutations_sync": 2}
INTERVAL_S = 0.3


@dataclass
class Run:
    settings: Settings
    catalog: Catalog
    keys: dict
    tsa: LocalTsa
    other_tsa: LocalTsa
    outage: tuple[int, int]  # the newest checkpoint sequence when the TSA went down, and when it came back


def _highest(settings: Settings, topic: str) -> int:
    """The highest sequence of the worker's writer named on `topic` (checkpoints or timestamps)."""
    catalog = load_catalog(settings.schemas_dir)
    schema = parse_schema(catalog.internal_schema(AUDIT_CHECKPOINT if topic == CHECKPOINTS_TOPIC else AUDIT_TIMESTAMP))
    messages = read_topic(settings, topic, lambda m: False, timeout=1.0)
    return max((schemaless_reader(BytesIO(m.value()[5:]), schema, None)["sequence"] for m in messages
                if m.key() != b"operations"), default=-1)


def _wait_for_stamp(settings: Settings, at_least: int, timeout: float = 30.0) -> int:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        highest = _highest(settings, TIMESTAMPS_TOPIC)
        if highest >= at_least:
            return highest
    raise AssertionError(f"no timestamp of checkpoint {at_least} or later within {timeout:g}s")


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory, clickhouse_dsn: str, clickhouse_client) -> Iterator[Run]:  # noqa: ANN001
    directory = tmp_path_factory.mktemp("audit-timestamps")
    tsa, other_tsa = LocalTsa(directory / "tsa").start(), LocalTsa(directory / "other", "other")
    with private_stack(directory / "stack", partitions=1) as base:
        settings = base.model_copy(update={"clickhouse_dsn": clickhouse_dsn, "clickhouse_database_prefix": f"t{uuid.uuid4().hex[:8]}_",
                                           "sink_batch_rows": 500, "sink_batch_seconds": 0.3})
        # quality rules off: a clean stop seals the open hour's quality windows in one more checkpoint,
        # after the last timestamp (that final checkpoint is signed, not timestamped; see the notes)
        worker = Worker(settings, "worker", audit_tsa_url=tsa.url, audit_tsa_interval_s=str(INTERVAL_S),
                        audit_tsa_timeout_s="2", audit_tsa_cert_file=str(tsa.root_file), quality_rules="false").start()
        sent = 0
        try:
            def wave(seed: int) -> int:
                nonlocal sent
                sent += len(produce_synthetic(settings, events=100, seed=seed))
                records = AuditRecords(settings)
                audited = read_topic(settings, AUDIT_TOPIC, lambda m, n=sent: len(records.event_ids(m)) >= n, timeout=60)
                assert len(records.event_ids(audited)) == sent  # deciding never waits for the TSA
                return _highest(settings, CHECKPOINTS_TOPIC)

            _wait_for_stamp(settings, wave(0))
            tsa.stop()
            down = tsa.requests
            before = wave(1)
            wave(2)
            time.sleep(INTERVAL_S * 4)
            assert tsa.requests == down  # the TSA was down: nothing reached it
            tsa.start()
            after = wave(3)
            _wait_for_stamp(settings, after)
        finally:
            worker.stop()
        catalog = load_catalog(settings.schemas_dir)
        land([Sink(settings, plan, clickhouse_client, registry_client(settings))
              for plan in (audit_plan(settings, catalog), operations_plan(settings, catalog), checkpoints_plan(settings, catalog),
                           timestamps_plan(settings, catalog))], idle_s=1.0)
        yield Run(settings, catalog, log.public_key_map(Keyring.open(settings).public_keys()), tsa, other_tsa, (before, after))
    tsa.stop()


def trail_of(client, run: Run, prefix: str | None = None) -> ClickHouseTrail:  # noqa: ANN001
    return ClickHouseTrail(client, prefix if prefix is not None else run.settings.clickhouse_database_prefix, run.catalog)


def test_the_landed_timestamps_verify_and_cover_the_whole_chain(run: Run, clickhouse_client) -> None:  # noqa: ANN001
    report = trail_of(clickhouse_client, run).verify(run.keys, trust=Trust.load(run.tsa.root_file))
    assert report.ok, [str(f) for f in report.failures]
    audit = f"{run.settings.clickhouse_database_prefix}audit"
    worker_checkpoints = clickhouse_client.query(f"SELECT uniqExact(writer, sequence) FROM {audit}.checkpoints "
                                                 "WHERE writer != 'operations'").result_rows[0][0]
    assert report.timestamps >= 2
    assert report.timestamped == worker_checkpoints  # the newest checkpoint was timestamped: it vouches for all before it
    assert report.timestamped_until is not None and abs(time.time() - report.timestamped_until.timestamp()) < 300


def test_checkpoints_sealed_while_the_tsa_was_down_are_covered_once_it_is_back(run: Run, clickhouse_client) -> None:  # noqa: ANN001
    before, after = run.outage
    audit = f"{run.settings.clickhouse_database_prefix}audit"
    stamped = {int(s) for (s,) in clickhouse_client.query(f"SELECT sequence FROM {audit}.timestamps").result_rows}
    # checkpoints before+1 .. after were sealed while the TSA was down or just back: the timestamp of
    # a later one vouches for them (the chain), so nothing sealed during the outage is left out
    assert after > before and max(stamped) >= after


def test_without_the_tsa_certificates_the_timestamps_are_unchecked_and_another_tsa_root_fails(run: Run, clickhouse_client) -> None:  # noqa: ANN001
    unchecked = trail_of(clickhouse_client, run).verify(run.keys)
    assert unchecked.ok and unchecked.timestamps == 0 and unchecked.timestamps_unchecked >= 2
    other = trail_of(clickhouse_client, run).verify(run.keys, trust=Trust.load(run.other_tsa.root_file))
    assert not other.ok and {f.kind for f in other.failures} == {log.BAD_TIMESTAMP}


def test_the_topics_verify_the_timestamps_as_the_database_does(run: Run, clickhouse_client) -> None:  # noqa: ANN001
    trust = Trust.load(run.tsa.root_file)
    from_kafka = verify_kafka(run.settings, run.catalog, run.keys, trust=trust, idle_s=0.5)
    from_clickhouse = trail_of(clickhouse_client, run).verify(run.keys, trust=trust)
    assert from_kafka.ok, [str(f) for f in from_kafka.failures]
    assert from_kafka.timestamped == from_clickhouse.timestamped and from_kafka.timestamps >= from_clickhouse.timestamps >= 2


def _copy(client, run: Run) -> tuple[str, str]:  # noqa: ANN001
    prefix = f"t{uuid.uuid4().hex[:8]}_"
    source, copy = f"{run.settings.clickhouse_database_prefix}audit", f"{prefix}audit"
    client.command(f"CREATE DATABASE {copy}")
    for table in ("events", "operations", "checkpoints", "timestamps"):
        client.command(f"CREATE TABLE {copy}.{table} AS {source}.{table}")
        client.command(f"INSERT INTO {copy}.{table} SELECT * FROM {source}.{table}")
    return prefix, copy


@pytest.mark.parametrize("what", ["hash", "token"])
def test_an_edited_landed_timestamp_is_named(run: Run, clickhouse_client, what: str) -> None:  # noqa: ANN001
    prefix, database = _copy(clickhouse_client, run)
    writer, sequence = clickhouse_client.query(f"SELECT writer, sequence FROM {database}.timestamps "
                                               "ORDER BY sequence LIMIT 1").result_rows[0]
    other = f"SELECT any({{column}}) FROM {database}.timestamps WHERE sequence != {sequence}"
    column = "checkpoint" if what == "hash" else "token"
    value = clickhouse_client.query(other.format(column=column)).result_rows[0][0]
    clickhouse_client.command(f"ALTER TABLE {database}.timestamps UPDATE {column} = '{value}' WHERE sequence = {sequence}",
                              settings=MUTATE)
    report = trail_of(clickhouse_client, run, prefix).verify(run.keys, trust=Trust.load(run.tsa.root_file))
    assert not report.ok
    assert (log.BAD_TIMESTAMP, writer, sequence) in {(f.kind, f.writer, f.sequence) for f in report.failures}, \
        [str(f) for f in report.failures]


def _backbone(settings: Settings, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", "from app.cli import main; main()", *args], capture_output=True, text=True,
                          env={**worker_environment(settings), "COLUMNS": "200"}, timeout=180, cwd=PROJECT_ROOT)


def test_audit_verify_with_the_tsa_certificate_reports_the_timestamps(run: Run) -> None:
    # (--from-kafka: this test process holds the chDB directory; the text is the same from ClickHouse)
    result = _backbone(run.settings, "audit", "verify", "--from-kafka", "--tsa-cert", str(run.tsa.root_file))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "audit trail verified" in result.stdout and "checkpoints timestamped by TSA" in result.stdout
    unchecked = _backbone(run.settings, "audit", "verify", "--from-kafka")
    assert unchecked.returncode == 0 and "timestamps unchecked: give --tsa-cert FILE" in unchecked.stdout
    refused = _backbone(run.settings, "audit", "verify", "--from-kafka", "--tsa-cert", str(run.tsa.root_file.with_name("absent.pem")))
    assert refused.returncode == 1 and "Traceback" not in refused.stderr and "not a readable PEM" in refused.stderr
