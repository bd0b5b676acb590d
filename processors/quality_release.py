"""The pending topic's Kafka side (issue 32): where a worker's pending records of one window go, and
reading them back when the window closes, a chunk at a time (an hour of a busy stream never sits in
memory: only the chunk being released does).

All records of one worker's window share a key and so a partition, written in order; reading starts
at the first offset stamped at or after the window's start (`offsets_for_times`) and stops at the
end the partition had when the window closed, skipping other workers' windows. `listing` reads the
whole topic for `backbone quality pending`.
"""

from __future__ import annotations

import time
import zlib
from collections.abc import Iterator
from typing import Any

from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, KafkaException, Message, TopicPartition

from backbone.errors import BackboneError
from backbone.kafka.topics import QUALITY_PENDING_RETENTION_MS, QUALITY_PENDING_TOPIC
from backbone.quality.gating import MARKER_HEADERS, PendingWindow
from backbone.settings import Settings

Record = tuple[bytes | None, list[tuple[str, bytes]] | None]  # (value, headers)
CHUNK = 2000  # pending records released (decided, encoded, audited, sealed, acknowledged) at a time
# Records are stamped by the producer's clock when written; read from a minute before the window's start.
CLOCK_SLACK_MS = 60_000


def pending_topic_config() -> dict[str, str]:
    return {"retention.ms": str(QUALITY_PENDING_RETENTION_MS), "cleanup.policy": "delete"}


def reader(settings: Settings, group_id: str) -> Consumer:
    """A consumer that only reads assigned partitions (no group membership, no commits)."""
    return Consumer(settings.consumer_config(group_id, **{"enable.auto.commit": False, "enable.auto.offset.store": False,
                                                          "enable.partition.eof": True}))


class PendingTopic:
    """One worker's access to the pending topic: the partition of a window, and its records read back."""

    def __init__(self, settings: Settings, group_id: str) -> None:
        self.settings = settings
        self.group_id = group_id
        self._partitions: int | None = None
        self._consumer: Consumer | None = None

    def partition(self, client: Any, key: bytes) -> int:
        """The partition of a window's records (every record of a window in one, in order)."""
        if self._partitions is None:
            metadata = client.list_topics(QUALITY_PENDING_TOPIC, timeout=self.settings.kafka_timeout_s)
            topic = metadata.topics.get(QUALITY_PENDING_TOPIC)
            if topic is None or not topic.partitions:
                raise BackboneError(f"topic {QUALITY_PENDING_TOPIC} has no partitions; the processor creates it at start-up")
            self._partitions = len(topic.partitions)
        return zlib.crc32(key) % self._partitions

    def read(self, client: Any, window: PendingWindow, chunk: int = CHUNK) -> Iterator[list[Record]]:
        """The window's pending records, `chunk` at a time, in the order they were written."""
        key = window.key
        partition = self.partition(client, key)
        consumer = self._consumer = self._consumer or reader(self.settings, self.group_id)
        since = TopicPartition(QUALITY_PENDING_TOPIC, partition, window.start_ms - CLOCK_SLACK_MS)
        start = consumer.offsets_for_times([since], timeout=self.settings.kafka_timeout_s)[0].offset
        # -1: nothing stamped since then, by the broker's index; read it all rather than trust that
        consumer.assign([TopicPartition(QUALITY_PENDING_TOPIC, partition, start if start >= 0 else OFFSET_BEGINNING)])
        try:
            found = []
            for message in _to_end(consumer, self.settings.kafka_timeout_s, partition):
                headers = message.headers()
                if message.key() == key and not any(name in MARKER_HEADERS for name, _ in headers or ()):
                    found.append((message.value(), headers))
                    if len(found) >= chunk:
                        yield found
                        found = []
            if found:
                yield found
        finally:
            consumer.unassign()

    def close(self) -> None:
        if self._consumer is not None:
            self._consumer.close()
            self._consumer = None


def _to_end(consumer: Consumer, timeout: float, partition: int) -> Iterator[Message]:
    """The assigned partition's records up to its end (end-of-partition: some brokers report the high
    watermark late, the end of a fetch is exact)."""
    deadline = time.monotonic() + timeout
    while True:
        # A short wait per call: consume() waits its whole timeout unless all 500 arrive.
        messages = consumer.consume(500, 0.1)
        if messages:
            deadline = time.monotonic() + timeout
        elif time.monotonic() > deadline:
            raise BackboneError(f"{QUALITY_PENDING_TOPIC} partition {partition} gave nothing in {timeout:g}s before its end; "
                                "its records stay pending (is Kafka up?)")
        for message in messages:
            error = message.error()
            if error is None:
                yield message
            elif error.code() == KafkaError._PARTITION_EOF:
                return
            else:
                raise BackboneError(f"reading {QUALITY_PENDING_TOPIC} partition {partition}: {error.str()}")


def listing(settings: Settings, group_id: str) -> list[tuple[bytes | None, list[tuple[str, bytes]] | None]]:
    """(key, headers) of every record the pending topic holds (values are not kept: raw events)."""
    consumer = reader(settings, group_id)
    timeout = settings.kafka_timeout_s
    try:
        try:
            metadata = consumer.list_topics(QUALITY_PENDING_TOPIC, timeout=timeout)
        except KafkaException as exc:
            raise BackboneError(f"Kafka at {settings.kafka_bootstrap} did not answer ({exc.args[0].str()}); is the stack up?") from None
        topic = metadata.topics.get(QUALITY_PENDING_TOPIC)
        if topic is None or topic.error is not None:
            return []
        found = []
        for partition in sorted(topic.partitions):
            consumer.assign([TopicPartition(QUALITY_PENDING_TOPIC, partition, OFFSET_BEGINNING)])
            found += [(message.key(), message.headers()) for message in _to_end(consumer, timeout, partition)]
            consumer.unassign()
        return found
    finally:
        consumer.close()
