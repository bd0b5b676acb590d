"""Test support for the real pipeline: reading topics back. The stack, keyring and workers come
from `app.local`, the same code the demo and the benchmarks run. No part is faked."""

from __future__ import annotations

import time
from collections.abc import Callable

from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, Message, TopicPartition

from app.local import ProcessorWorker as Worker
from app.local import embedded_settings as private_stack
from backbone.audit.batches import Unpacker
from backbone.events.serde import Decoder, registry_client
from backbone.settings import Settings
from consumers.batching import BatchingSink, SinkThreads

__all__ = ["AuditRecords", "Worker", "header", "land", "private_stack", "read_topic"]


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
