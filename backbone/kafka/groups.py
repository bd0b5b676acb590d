"""What the Kafka cluster holds now: topics with their end offsets, and each consumer group's
committed offsets and lag. One module for every reader of it: `backbone status`, the console,
the consumer-lag metric. Lag comes from watermarks, so it is approximate on brokers that report
them late (Tansu).
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass

from confluent_kafka import Consumer, ConsumerGroupTopicPartitions, TopicPartition
from confluent_kafka.admin import AdminClient

from backbone.errors import kafka_unavailable
from backbone.settings import Settings


@dataclass
class TopicStatus:
    name: str
    partitions: int
    end_offset: int  # sum of high watermarks: approximate on brokers that report them late


@dataclass
class GroupLag:
    group: str
    topics: int
    committed: int
    lag: int



def kafka_status(settings: Settings, timeout: float) -> tuple[list[TopicStatus], list[GroupLag]]:
    admin = AdminClient(settings.kafka_config())
    try:
        metadata = admin.list_topics(timeout=timeout)
    except Exception:
        raise kafka_unavailable(settings.kafka_bootstrap, timeout) from None
    consumer = Consumer(settings.consumer_config(f"status-{uuid.uuid4().hex}"))
    try:
        ends: dict[tuple[str, int], int] = {}
        topics = []
        for name in sorted(metadata.topics):
            if name.startswith("__"):
                continue
            total = 0
            for partition in metadata.topics[name].partitions:
                _, high = consumer.get_watermark_offsets(TopicPartition(name, partition), timeout=timeout, cached=False)
                ends[(name, partition)] = high
                total += high
            topics.append(TopicStatus(name, len(metadata.topics[name].partitions), total))
    finally:
        consumer.close()
    groups = []
    listed = admin.list_consumer_groups(request_timeout=timeout).result(timeout=timeout)
    for group in sorted(g.group_id for g in listed.valid):
        if group.startswith(("reader-", "status-", "watermark-")):
            continue  # partition readers, not consumer groups that make progress
        future = admin.list_consumer_group_offsets([ConsumerGroupTopicPartitions(group)], request_timeout=timeout)[group]
        offsets = future.result(timeout=timeout).topic_partitions or []
        committed = [tp for tp in offsets if tp.offset >= 0]
        lag = sum(max(0, ends.get((tp.topic, tp.partition), tp.offset) - tp.offset) for tp in committed)
        groups.append(GroupLag(group, len({tp.topic for tp in committed}), sum(tp.offset for tp in committed), lag))
    return topics, groups
