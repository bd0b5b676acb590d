"""`backbone status`: what an operator sees of a running stack, and which part cannot be reached."""

from __future__ import annotations

import socket
import time

import pytest
from confluent_kafka import Consumer, Producer, TopicPartition

from app.status import collect
from backbone.kafka.topics import Topics, dlq_topic
from backbone.settings import Settings, load_settings
from tests.conftest import TEST_CONSUMER_CONFIG

pytestmark = pytest.mark.integration


def test_status_shows_topics_lag_subjects_and_dead_letters(registry_settings: Settings, unique: str) -> None:
    settings = registry_settings
    topic, group = f"status-{unique}", f"group-{unique}"
    Topics(settings).create(topic, partitions=2)
    Topics(settings).ensure(dlq_topic("processor"))
    producer = Producer(settings.producer_config())
    for i in range(10):
        producer.produce(topic, f"v{i}".encode(), key=f"k{i}".encode())
    producer.produce(dlq_topic("processor"), b"\x07junk", headers=[("error.reason", f"test_{unique}".encode()), ("error.stage", b"processor")])
    assert producer.flush(10) == 0
    consumer = Consumer(settings.consumer_config(group, **TEST_CONSUMER_CONFIG))
    consumer.commit(offsets=[TopicPartition(topic, 0, 0), TopicPartition(topic, 1, 0)], asynchronous=False)
    consumer.close()

    status = collect(settings, timeout=10)
    assert "kafka" not in status.unreachable and "schema registry" not in status.unreachable
    assert any(t.name == topic and t.partitions == 2 for t in status.topics)
    lag = next(g for g in status.groups if g.group == group)
    assert lag.committed == 0 and lag.lag > 0  # nothing consumed yet: every message is lag
    assert status.dlq[f"processor: test_{unique}"] == 1
    assert isinstance(status.subjects, list)


def test_status_names_each_part_it_cannot_reach_within_seconds(tmp_path) -> None:  # noqa: ANN001
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    settings = load_settings(
        kafka_bootstrap=f"127.0.0.1:{port}", schema_registry_url=f"http://127.0.0.1:{port}",
        clickhouse_dsn=f"http://default:s3cret@127.0.0.1:{port}/default", data_dir=tmp_path, kafka_timeout_s=2,
    )
    started = time.monotonic()
    status = collect(settings, timeout=2)
    assert time.monotonic() - started < 30
    assert set(status.unreachable) == {"kafka", "schema registry", "clickhouse"}
    assert f"127.0.0.1:{port}" in status.unreachable["kafka"]
    assert "s3cret" not in str(status.unreachable)
