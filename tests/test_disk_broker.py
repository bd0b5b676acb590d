"""The disk broker (`backbone.broker`, BACKBONE_EMBEDDED_BROKER=disk): the embedded broker that keeps
messages in segment files and applies retention, so a stack can run for days. The clients the backbone
uses (confluent-kafka/librdkafka, aiokafka) against one broker for the module; the log, retention,
idempotence and recovery on the broker's own parts directly."""

from __future__ import annotations

import asyncio
import os
import struct
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from confluent_kafka import Consumer, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic
from hypothesis import given
from hypothesis import strategies as st
from kio.schema.errors import ErrorCode

from backbone.broker.data import DataApis
from backbone.broker.log import PartitionLog
from backbone.broker.state import BrokerState
from backbone.broker.wire import encode_response, read_request
from backbone.errors import EmbeddedError, NotPrivateError
from backbone.stack.embedded import EmbeddedBroker
from backbone.stack.memory import broker_says
from tests.conftest import TEST_CONSUMER_CONFIG

PROJECT_ROOT = Path(__file__).resolve().parents[1]


def batch(records: int = 1, timestamp_ms: int | None = None, producer_id: int = -1, sequence: int = -1, payload: bytes = b"x") -> bytes:
    """A v2 record batch header and an opaque body (the broker never looks inside records)."""
    ts = int(time.time() * 1000) if timestamp_ms is None else timestamp_ms
    body = struct.pack(">ibIhiqqqhii", 0, 2, 0, 0, records - 1, ts, ts, producer_id, 0, sequence, records) + payload
    return struct.pack(">qi", 0, len(body)) + body


@pytest.fixture(scope="module")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedBroker]:
    with EmbeddedBroker(tmp_path_factory.mktemp("disk"), engine="disk") as running:
        yield running


def _topic(bootstrap: str, partitions: int = 3, **config: str) -> str:
    name = f"disk-{uuid.uuid4().hex[:8]}"
    admin = AdminClient({"bootstrap.servers": bootstrap})
    admin.create_topics([NewTopic(name, partitions, 1, config=config)])[name].result(10)
    return name


def _consume(consumer: Consumer, count: int, timeout_s: float = 20.0) -> list:
    got, deadline = [], time.monotonic() + timeout_s
    while len(got) < count and time.monotonic() < deadline:
        message = consumer.poll(0.5)
        if message is not None and not message.error():
            got.append(message)
    return got


def test_confluent_kafka_produces_idempotently_and_a_group_consumes_and_commits(broker: EmbeddedBroker) -> None:
    topic = _topic(broker.bootstrap)
    producer = Producer({"bootstrap.servers": broker.bootstrap, "enable.idempotence": True, "acks": "all", "compression.type": "lz4"})
    for i in range(300):
        producer.produce(topic, key=f"k{i % 7}".encode(), value=f"v{i}".encode())
    assert producer.flush(10) == 0
    config = {"bootstrap.servers": broker.bootstrap, "group.id": f"g-{topic}", "auto.offset.reset": "earliest",
              "enable.auto.commit": False, **TEST_CONSUMER_CONFIG}
    consumer = Consumer(config)
    consumer.subscribe([topic])
    got = _consume(consumer, 300)
    consumer.commit(asynchronous=False)
    committed = consumer.committed([TopicPartition(topic, p) for p in range(3)], timeout=10)
    consumer.close()
    assert sorted(m.value() for m in got) == sorted(f"v{i}".encode() for i in range(300))
    for key in {m.key() for m in got}:  # per key, in the order produced
        values = [int(m.value()[1:]) for m in got if m.key() == key]
        assert values == sorted(values)
    assert sum(tp.offset for tp in committed) == 300


def test_aiokafka_produces_and_consumes(broker: EmbeddedBroker) -> None:
    from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

    topic = _topic(broker.bootstrap, partitions=2)

    async def run() -> list[bytes]:
        producer = AIOKafkaProducer(bootstrap_servers=broker.bootstrap, enable_idempotence=True)
        await producer.start()
        try:
            for i in range(50):
                await producer.send(topic, f"a{i}".encode(), key=b"k")
        finally:
            await producer.stop()
        consumer = AIOKafkaConsumer(topic, bootstrap_servers=broker.bootstrap, group_id=f"a-{topic}", auto_offset_reset="earliest")
        await consumer.start()
        got: list[bytes] = []
        try:
            while len(got) < 50:
                for records in (await consumer.getmany(timeout_ms=1000)).values():
                    got += [r.value for r in records]
        finally:
            await consumer.stop()
        return got

    assert asyncio.run(asyncio.wait_for(run(), 30)) == [f"a{i}".encode() for i in range(50)]


def test_a_group_of_two_rebalances_the_partitions_between_them(broker: EmbeddedBroker) -> None:
    topic = _topic(broker.bootstrap, partitions=4)
    config = {"bootstrap.servers": broker.bootstrap, "group.id": f"two-{topic}", "auto.offset.reset": "earliest", **TEST_CONSUMER_CONFIG}
    first, second = Consumer(config), Consumer(config)
    try:
        first.subscribe([topic])
        deadline = time.monotonic() + 20
        while not first.assignment() and time.monotonic() < deadline:
            first.poll(0.2)
        assert len(first.assignment()) == 4
        second.subscribe([topic])
        while time.monotonic() < deadline:
            first.poll(0.1)
            second.poll(0.1)
            if len(first.assignment()) == 2 and len(second.assignment()) == 2:
                break
        owned = [{tp.partition for tp in c.assignment()} for c in (first, second)]
        assert owned[0] | owned[1] == {0, 1, 2, 3} and not owned[0] & owned[1] and all(owned)
    finally:
        second.close()
        first.close()


def test_the_backbones_topic_administration_works_on_it(broker: EmbeddedBroker, tmp_path: Path) -> None:
    """`Topics` (create, reconcile by IncrementalAlterConfigs, describe, delete) as the pipeline uses it,
    DeleteRecords, and the group listing `backbone status` reads."""
    from confluent_kafka import ConsumerGroupTopicPartitions

    from backbone.kafka.topics import Topics
    from backbone.settings import load_settings

    topics = Topics(load_settings(kafka_bootstrap=broker.bootstrap, data_dir=tmp_path))
    name = f"admin-{uuid.uuid4().hex[:8]}"
    topics.create(name, partitions=2, config={"retention.ms": "1000", "cleanup.policy": "delete"})
    assert topics.reconcile(name, {"retention.ms": "2000", "cleanup.policy": "delete"}) == ["retention.ms"]
    described = topics.describe(name)
    assert described.partitions == 2 and described.config["retention.ms"] == "2000"
    producer = Producer({"bootstrap.servers": broker.bootstrap})
    for i in range(10):
        producer.produce(name, value=b"d", partition=0)
    producer.flush(10)
    admin = AdminClient({"bootstrap.servers": broker.bootstrap})
    deleted = admin.delete_records([TopicPartition(name, 0, 4)])
    assert next(iter(deleted.values())).result(10).low_watermark == 4
    consumer = Consumer({"bootstrap.servers": broker.bootstrap, "group.id": f"lister-{name}", "enable.auto.commit": False})
    assert consumer.get_watermark_offsets(TopicPartition(name, 0), timeout=10) == (4, 10)
    consumer.commit(offsets=[TopicPartition(name, 0, 7)], asynchronous=False)
    consumer.close()
    groups = {g.group_id for g in admin.list_consumer_groups().result(10).valid}
    offsets = admin.list_consumer_group_offsets([ConsumerGroupTopicPartitions(f"lister-{name}")])[f"lister-{name}"].result(10)
    assert f"lister-{name}" in groups and [(tp.partition, tp.offset) for tp in offsets.topic_partitions] == [(0, 7)]
    topics.delete(name)
    assert not topics.exists(name)


def test_a_restart_keeps_messages_committed_offsets_and_topic_configs(tmp_path: Path) -> None:
    with EmbeddedBroker(tmp_path, engine="disk") as broker:
        topic = _topic(broker.bootstrap, partitions=1, **{"retention.ms": "123456789"})
        producer = Producer({"bootstrap.servers": broker.bootstrap, "enable.idempotence": True})
        for i in range(20):
            producer.produce(topic, value=f"m{i}".encode())
        producer.flush(10)
        group = {"bootstrap.servers": broker.bootstrap, "group.id": "keeps", "auto.offset.reset": "earliest",
                 "enable.auto.commit": False, **TEST_CONSUMER_CONFIG}
        consumer = Consumer(group)
        consumer.subscribe([topic])
        assert len(_consume(consumer, 12)) >= 12
        consumer.commit(offsets=[TopicPartition(topic, 0, 12)], asynchronous=False)
        consumer.close()
        broker.stop()
        broker.start()  # same data dir, same port
        producer = Producer({"bootstrap.servers": broker.bootstrap, "enable.idempotence": True})
        producer.produce(topic, value=b"after")
        producer.flush(10)
        consumer = Consumer({**group, "bootstrap.servers": broker.bootstrap})
        consumer.subscribe([topic])
        rest = _consume(consumer, 9)
        consumer.close()
        admin = AdminClient({"bootstrap.servers": broker.bootstrap})
        from confluent_kafka.admin import ConfigResource

        resource = ConfigResource("topic", topic)
        configs = admin.describe_configs([resource])[resource].result(10)
    assert [m.value() for m in rest] == [f"m{i}".encode() for i in range(12, 20)] + [b"after"]
    assert [m.offset() for m in rest] == list(range(12, 21))
    assert configs["retention.ms"].value == "123456789"


def test_retention_deletes_old_segments_but_not_those_of_compacted_topics(tmp_path: Path) -> None:
    state = BrokerState(tmp_path)
    old = int((time.time() - 3 * 86400) * 1000)  # records stamped three days ago
    events = state.create_topic("raw.events", 1, {"retention.ms": str(86_400_000), "segment.bytes": "200"})
    consent = state.create_topic("consent.changes", 1, {"cleanup.policy": "compact", "segment.bytes": "200"})
    for topic in (events, consent):
        for _ in range(10):
            topic.logs[0].append(batch(2, timestamp_ms=old, payload=b"p" * 100))
        topic.logs[0].append(batch(1))  # a fresh record in the active segment
    before = len(events.logs[0].segments)
    assert state.enforce_retention()[0] == before - 1
    log = events.logs[0]
    assert len(log.segments) == 1 and log.log_start == 20 and log.end == 21
    assert log.read(0, 1 << 20) == b"" and log.read(20, 1 << 20)  # below the start: gone; the fresh one: there
    assert len(list((tmp_path / "topics").glob(f"{'raw.events'.encode().hex()}-0/*.log"))) == 1
    assert consent.logs[0].log_start == 0 and consent.logs[0].read(0, 1 << 20)  # compacted: never deleted by age


def test_compaction_keeps_the_latest_record_of_each_key_and_drops_expired_tombstones(broker: EmbeddedBroker, tmp_path: Path) -> None:
    """Batches as librdkafka writes them (lz4, idempotent), compacted by the broker's cleaner: the
    erased person's earlier record and, a day on, the tombstone itself leave; offsets stay."""
    topic = _topic(broker.bootstrap, partitions=1, **{"cleanup.policy": "compact"})
    producer = Producer({"bootstrap.servers": broker.bootstrap, "enable.idempotence": True, "compression.type": "lz4", "linger.ms": 0})
    for key, value in [(b"erased", b"raw id 123"), (b"kept", b"v1"), (b"kept", b"v2"), (b"erased", None), (b"other", b"x")]:
        producer.produce(topic, key=key, value=value)
        producer.flush(10)
    source = next(p for p in (broker.storage_dir / "topics").iterdir() if p.name.startswith(topic.encode().hex()))
    copy = tmp_path / "p"
    copy.mkdir()
    for segment in source.glob("*.log"):
        copy.joinpath(segment.name).write_bytes(segment.read_bytes())
    log = PartitionLog(copy)
    log.segments[-1].size  # the copy is one segment: roll it, so all five are in a segment the cleaner may clean
    log._roll(log.end)
    from backbone.broker.compaction import compact, records_of

    def kept() -> list[tuple[int, bytes | None, bool]]:
        return [(o, k, t) for s in log.segments for b in _batches(log, s) for o, k, t, _ in records_of(b) or []]

    log.read(0, 1)  # a consumer read the first batch: the log remembers where the next starts
    assert compact(log, delete_retention_ms=86_400_000) == 2
    assert kept() == [(2, b"kept", False), (3, b"erased", True), (4, b"other", False)]
    assert struct.unpack_from(">q", log.read(1, 1 << 20))[0] == 2  # that position moved with the rewrite
    assert compact(log, delete_retention_ms=86_400_000, now=time.time() + 2 * 86400) == 1
    assert kept() == [(2, b"kept", False), (4, b"other", False)]
    reopened = PartitionLog(copy)  # what is on disk reads back, offsets unchanged
    assert struct.unpack_from(">q", reopened.read(0, 1 << 20))[0] == 2 and reopened.end == 5


def _batches(log: PartitionLog, segment) -> list[bytes]:  # noqa: ANN001 - a log.Segment
    from backbone.broker.compaction import batches_of

    return list(batches_of(segment.path, segment.size))


def test_the_brokers_default_retention_applies_to_topics_without_their_own(tmp_path: Path) -> None:
    state = BrokerState(tmp_path, retention_ms=3_600_000)  # BACKBONE_EMBEDDED_BROKER_RETENTION_HOURS=1
    assert state.create_topic("raw.a", 1, {}).retention() == (3_600_000, -1)
    assert state.create_topic("shared.b", 1, {"retention.ms": "5"}).retention() == (5, -1)
    assert BrokerState(tmp_path).topics["raw.a"].retention()[0] == 7 * 86_400_000  # a broker started without it: a week


def test_retention_by_bytes_keeps_the_newest(tmp_path: Path) -> None:
    log = PartitionLog(tmp_path / "p", segment_bytes=300)
    for _ in range(20):
        log.append(batch(1, payload=b"q" * 100))
    log.enforce_retention(-1, 700)
    assert log.size <= 700 + 300 and log.end == 20 and log.log_start > 0


def test_a_segment_rolls_after_segment_ms_even_under_steady_writes(tmp_path: Path) -> None:
    """Compaction cleans only rolled segments: an eagerly compacted topic written every second must
    still roll hourly (segment.ms counts from the segment's start, not from the last write)."""
    log = PartitionLog(tmp_path / "p", segment_ms=3_600_000)
    log.append(batch(1))
    log.segments[-1].created -= 3601  # an hour of steady writes later
    log.append(batch(1))
    assert [s.base for s in log.segments] == [0, 1]


def test_delete_records_moves_the_start_offset(tmp_path: Path) -> None:
    log = PartitionLog(tmp_path / "p", segment_bytes=250)
    for _ in range(10):
        log.append(batch(1, payload=b"r" * 100))
    assert log.delete_before(6) == 6
    assert log.read(5, 1 << 20) == b""
    assert struct.unpack_from(">q", log.read(6, 1 << 20))[0] == 6
    assert PartitionLog(tmp_path / "p").log_start == 6  # persisted


@given(counts=st.lists(st.integers(1, 5), min_size=1, max_size=40), segment=st.integers(100, 600), data=st.data())
def test_a_read_starts_at_the_batch_holding_the_offset(tmp_path_factory: pytest.TempPathFactory, counts: list[int], segment: int,
                                                       data: st.DataObject) -> None:
    log = PartitionLog(tmp_path_factory.mktemp("log"), segment_bytes=segment)
    for count in counts:
        log.append(batch(count, payload=b"z" * 40))
    offset = data.draw(st.integers(0, log.end - 1))
    read = log.read(offset, data.draw(st.integers(1, 5000)))
    base, length = struct.unpack_from(">qi", read)
    (delta,) = struct.unpack_from(">i", read, 23)
    assert base <= offset <= base + delta and len(read) >= length + 12
    reopened = PartitionLog(log.directory, segment_bytes=segment)  # rebuilt from the files alone
    assert reopened.end == log.end == sum(counts) and reopened.read(offset, 5000)[:12] == read[:12]


@given(counts=st.lists(st.integers(1, 5), min_size=1, max_size=30), segment=st.integers(100, 600), budget=st.integers(1, 700))
def test_a_consumer_reading_on_gets_every_batch_once_in_order(tmp_path_factory: pytest.TempPathFactory, counts: list[int],
                                                               segment: int, budget: int) -> None:
    """Each read continues where the last ended (the log remembers the position), across segments and
    while batches are appended between reads, as a consumer's fetches do."""
    log = PartitionLog(tmp_path_factory.mktemp("log"), segment_bytes=segment)
    written, seen, offset = [], [], 0
    for count in counts:
        written.append(log.append(batch(count, payload=b"y" * 30))[0])
        while offset < log.end:
            chunk = log.read(offset, budget)
            position = 0
            while position < len(chunk):
                base, length = struct.unpack_from(">qi", chunk, position)
                (delta,) = struct.unpack_from(">i", chunk, position + 23)
                seen.append(base)
                offset = base + delta + 1
                position += 12 + length
    assert seen == written


def test_a_torn_batch_at_the_end_is_cut_when_the_log_opens(tmp_path: Path) -> None:
    log = PartitionLog(tmp_path / "p")
    log.append(batch(3))
    log.close()
    segment = next((tmp_path / "p").glob("*.log"))
    size = segment.stat().st_size
    with open(segment, "ab") as file:
        file.write(batch(2)[:30])  # a crash mid-write
    reopened = PartitionLog(tmp_path / "p")
    assert reopened.end == 3 and segment.stat().st_size == size
    assert reopened.append(batch(1))[0] == 3


def test_a_retried_batch_is_written_once_and_a_gap_is_refused(tmp_path: Path) -> None:
    async def run() -> None:
        apis = DataApis(BrokerState(tmp_path))
        apis.state.create_topic("t", 1, {})
        log = apis.state.topics["t"].logs[0]
        topic = apis.state.topics["t"]
        first = apis._produce_partition(topic, "t", 0, batch(2, producer_id=7, sequence=0))
        again = apis._produce_partition(topic, "t", 0, batch(2, producer_id=7, sequence=0))  # the retry after a lost answer
        assert first["error_code"] == again["error_code"] == 0 and again["base_offset"] == first["base_offset"] == 0
        assert log.end == 2
        gap = apis._produce_partition(topic, "t", 0, batch(1, producer_id=7, sequence=5))
        assert gap["error_code"] == ErrorCode.out_of_order_sequence_number and log.end == 2
        assert apis._produce_partition(topic, "t", 0, batch(1, producer_id=7, sequence=2))["base_offset"] == 2

    asyncio.run(run())


def test_an_api_version_the_broker_lacks_gets_unsupported_version_and_the_list() -> None:
    frame = struct.pack(">hhih", 18, 99, 5, 0)
    api_key, version, correlation, request = read_request(frame)
    assert (api_key, version, correlation, request) == (18, 99, 5, None)
    answer = encode_response(18, 0, 5, {"error_code": ErrorCode.unsupported_version, "api_keys": [], "throttle_time": 0})
    assert struct.unpack_from(">iih", answer) == (len(answer) - 4, 5, ErrorCode.unsupported_version)


def test_the_engine_is_chosen_by_setting_and_said_at_start(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("BACKBONE_EMBEDDED_BROKER", "disk")
    assert EmbeddedBroker(tmp_path).engine == "disk"
    monkeypatch.setenv("BACKBONE_EMBEDDED_BROKER", "kafka")
    with pytest.raises(EmbeddedError, match="BACKBONE_EMBEDDED_BROKER='kafka'.*tansu.*disk"):
        EmbeddedBroker(tmp_path)
    assert "retention.ms" in broker_says("disk") and "compacted topics" in broker_says("disk") and "survive a restart" in broker_says("disk")
    assert "Tansu" in broker_says("tansu") and "until the stack stops" in broker_says("tansu")


def test_the_processor_works_on_the_disk_broker() -> None:  # a pytest of its own with a stack and a worker: ~12 s
    """A representative integration module, tests/test_processor.py (decisions, audit, consent, DLQ),
    with its session broker the disk broker: its decisions-and-audit test, in a pytest of its own."""
    env = {**os.environ, "BACKBONE_EMBEDDED_BROKER": "disk", "BACKBONE_TEST_DOCKER": "0"}
    for name in ("BACKBONE_KAFKA_BOOTSTRAP", "BACKBONE_SCHEMA_REGISTRY_URL", "BACKBONE_SCHEMA_REGISTRY_USER", "BACKBONE_SCHEMA_REGISTRY_PASSWORD"):
        env.pop(name, None)  # the session's broker and registry are the inner pytest's own, on the disk broker
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-n", "0", "-p", "no:cacheprovider", "-q", "tests/test_processor.py",
         "-k", "each_decision_and_reason_code"],
        cwd=PROJECT_ROOT, env=env, capture_output=True, text=True, timeout=300, check=False)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-2000:]
    assert "1 passed" in result.stdout


def test_another_account_on_the_host_cannot_read_what_the_broker_keeps(tmp_path: Path) -> None:
    """Segments hold raw events (personal data): the broker refuses a data directory its group or
    others may use, and its process writes every file and directory its user's only, whatever umask
    started it (here the usual 022)."""
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o755)
    with pytest.raises(NotPrivateError, match="disk broker's data directory"):
        BrokerState(shared)
    (tmp_path / "own").mkdir(mode=0o700)
    previous = os.umask(0o022)
    try:
        running = EmbeddedBroker(tmp_path / "own", engine="disk").__enter__()
    finally:
        os.umask(previous)
    try:
        name = _topic(running.bootstrap, partitions=1)
        producer = Producer({"bootstrap.servers": running.bootstrap})
        producer.produce(name, b"a raw event", b"k")
        assert producer.flush(10) == 0
        kept = [running.storage_dir, *running.storage_dir.rglob("*")]
        assert any(path.is_file() and path.stat().st_size for path in kept)
        assert [str(path) for path in kept if path.stat().st_mode & 0o077] == []
    finally:
        running.__exit__(None, None, None)
