"""Test support for the real pipeline: reading topics back, landing them, and one pipeline run
decided, audited and landed that several test modules read (`landed_pipeline`, the session's
`landed_pipeline` fixture). The stack, keyring and workers come from `app.local`, the same code the
demo and the benchmarks run. No part is faked."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, Message, TopicPartition

from app.local import ProcessorWorker as Worker
from app.local import embedded_settings as private_stack
from backbone.audit import operations
from backbone.audit.batches import Unpacker
from backbone.events.catalog import Catalog
from backbone.events.serde import Decoder, registry_client
from backbone.kafka.topics import AUDIT_TOPIC
from backbone.settings import PROJECT_ROOT, Settings
from consumers.batching import BatchingSink, SinkThreads

__all__ = ["OPERATOR_ACTIONS", "AuditRecords", "Landed", "Worker", "header", "land", "landed_pipeline", "private_stack", "read_all",
           "read_topic"]


class AuditRecords:
    """The audit records in messages of `audit.decisions` (each holds one or many: `backbone.audit.batches`)."""

    def __init__(self, settings: Settings) -> None:
        self._unpack = Unpacker(Decoder(registry_client(settings)).source.schema)

    def __call__(self, messages: list[Message]) -> list[dict]:
        return [record for message in messages for record in self._unpack.records(message.value() or b"")]

    def event_ids(self, messages: list[Message]) -> set[str]:
        return {str(record["event_id"]) for record in self(messages)}


def read_topic(settings: Settings, topic: str, until: Callable[[list[Message]], bool], timeout: float = 60.0) -> list[Message]:
    """Every message of `topic` from the beginning, read until `until(messages)` holds or `timeout`."""
    consumer = Consumer(settings.consumer_config(None, **{"group.id": f"reader-{time.monotonic_ns()}"}))
    try:
        metadata = consumer.list_topics(topic, timeout=10)
        partitions = sorted(metadata.topics[topic].partitions) if topic in metadata.topics else []
        consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in partitions])
        messages: list[Message] = []
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for message in consumer.consume(1000, 0.3):
                if message.error() is None:
                    messages.append(message)
                elif message.error().code() != KafkaError._PARTITION_EOF:
                    raise AssertionError(message.error().str())
            if until(messages):
                return messages
        return messages
    finally:
        consumer.close()


def read_all(settings: Settings, topic: str, timeout: float = 60.0) -> list[Message]:
    """Every message `topic` holds now, from the beginning to the end of each partition (the broker's
    end-of-partition), for topics no one writes to any more: it returns as soon as it read them all,
    where `read_topic` with an `until` that never holds waits its whole timeout. Fails after `timeout`."""
    consumer = Consumer(settings.consumer_config(None, **{"group.id": f"reader-{time.monotonic_ns()}", "enable.partition.eof": True}))
    try:
        metadata = consumer.list_topics(topic, timeout=10)
        partitions = set(metadata.topics[topic].partitions) if topic in metadata.topics else set()
        consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in partitions])
        messages: list[Message] = []
        ended: set[int] = set()
        deadline = time.monotonic() + timeout
        while ended != partitions:
            assert time.monotonic() < deadline, f"{topic}: the end of partitions {sorted(partitions - ended)} not reached in {timeout:g} s"
            for message in consumer.consume(1000, 0.3):
                if message.error() is None:
                    messages.append(message)
                elif message.error().code() == KafkaError._PARTITION_EOF:
                    ended.add(message.partition())
                else:
                    raise AssertionError(message.error().str())
        return messages
    finally:
        consumer.close()


def header(message: Message, name: str) -> str | None:
    for key, value in message.headers() or []:
        if key == name:
            return value.decode() if value is not None else None
    return None


def land(sinks: list[BatchingSink], idle_s: float = 1.5) -> None:
    """Land what the topics hold with every sink at once, each on a thread (`SinkThreads`, as `backbone
    sink` runs them) until it read nothing for `idle_s`, then closed; raises the first sink's failure.
    At once, not one after another: each sink's group join (seconds on Tansu) and idle wait overlap."""
    threads = SinkThreads(sinks, idle_s=idle_s).start()
    threads.join(150.0)  # each sink's run_until_idle gives up after 120 s
    threads.check()
    assert not threads.alive(), "a sink was still landing after 150 s"


# Operator actions as the commands record them (no personal data; several details, in order).
OPERATOR_ACTIONS = (
    operations.OperatorAction("reidentify", "oversight-1", "tax key for fraud.bank_account", "revealed", "case 17",
                              {"token_sha256": "ab" * 32, "domain": "fraud"}),
    operations.OperatorAction("agreement_status", "operator-1", "tax-to-fraud@2", "done", None, {"status": "suspended"}),
    operations.OperatorAction("erase", "oversight-1", "subject token", "done", "request 9",
                              {"recipients": "fraud,research", "rows_deleted": "12", "dlq_keys": "1"}),
)


@dataclass(frozen=True)
class Landed:
    """A pipeline run decided, audited and landed (`landed_pipeline`)."""

    settings: Settings  # the processors' (their data directory holds the writer's state) and the sinks'
    catalog: Catalog
    keys: dict  # the audit public keys (`backbone.audit.log.public_key_map`)
    events: int  # events produced, each decided and audited
    actions: int  # operator actions recorded (`OPERATOR_ACTIONS`)
    recipients: list[str]  # whose databases landed beside the audit database
    writer: str  # the processor worker's writer id (one chain, across its crash)


def gated_agreements(directory: Path) -> Path:
    """The repository's agreements, welfare-to-fraud requiring quality (a bar synthetic claims meet):
    its records wait for their window, released as a worker stops cleanly, and the killed worker's stay held."""
    directory.mkdir(parents=True, exist_ok=True)
    for path in (PROJECT_ROOT / "agreements").glob("*.yaml"):
        (directory / path.name).write_text(path.read_text())
    gated = directory / "welfare_to_fraud.yaml"
    gated.write_text(gated.read_text() + '\nrequire_quality: {completeness: ">= 50"}\n')
    return directory


@contextmanager
def landed_pipeline(directory: Path, clickhouse_dsn: str, client) -> Iterator[Landed]:  # noqa: ANN001 - clickhouse_connect Client
    """A private stack and a processor worker, SIGKILLed right after a wave of events was produced (so
    most likely mid-batch) and restarted; four waves of 300 events decided and audited, then the
    operator actions recorded and everything (audit, operator actions, checkpoints, recipients)
    landed in the session's chDB under a prefix of its own. Readers must not change it: tests that
    tamper copy the landed databases first."""
    from backbone.audit import log
    from backbone.events.catalog import load_catalog
    from backbone.keys.keyring import Keyring
    from backbone.policy.agreements import load_agreements
    from consumers.plans import recipient_plan
    from consumers.sink import Sink, audit_plan, checkpoints_plan, operations_plan
    from tests.test_processor_workers import produce_synthetic

    with private_stack(directory, partitions=3) as base:
        settings = base.model_copy(update={"clickhouse_dsn": clickhouse_dsn, "clickhouse_database_prefix": f"t{uuid.uuid4().hex[:8]}_",
                                           "sink_batch_rows": 500, "sink_batch_seconds": 0.3,
                                           "agreements_dir": gated_agreements(directory / "gated")})
        sent = 0
        worker = Worker(settings, "worker").start()
        try:
            for wave in range(4):  # waves apart: several checkpoints
                sent += len(produce_synthetic(settings, events=300, seed=wave))
                if wave == 1:  # a crash while deciding: the writer takes its chain up again after it
                    worker.kill()
                    worker = Worker(settings, "worker").start()
                records = AuditRecords(settings)
                audited = read_topic(settings, AUDIT_TOPIC, lambda m, n=sent: len(records.event_ids(m)) >= n, timeout=120)
                assert len(records.event_ids(audited)) == sent
        finally:
            worker.stop()
        for action in OPERATOR_ACTIONS:
            operations.record(settings, action)
        catalog = load_catalog(settings.schemas_dir)
        charter = load_agreements(settings.agreements_dir, catalog)
        recipients = sorted({a.recipient for a in charter.agreements})
        plans = [audit_plan(settings, catalog), operations_plan(settings, catalog), checkpoints_plan(settings, catalog),
                 *(recipient_plan(settings, charter, recipient) for recipient in recipients)]
        land([Sink(settings, plan, client, registry_client(settings)) for plan in plans])
        audit = f"{settings.clickhouse_database_prefix}audit"
        writers = [w for (w,) in client.query(f"SELECT DISTINCT writer FROM {audit}.checkpoints").result_rows
                   if w != operations.OPERATIONS_WRITER]
        assert len(writers) == 1, writers
        yield Landed(settings, catalog, log.public_key_map(Keyring.open(settings).public_keys()), sent, len(OPERATOR_ACTIONS),
                     recipients, writers[0])
