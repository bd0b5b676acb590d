"""The audit trail as the topics hold it (`backbone audit verify --from-kafka`): the records' own
bytes, no recomputation, verified like the landed trail (`consumers.audit_trail`)."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterable, Mapping
from io import BytesIO

from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, KafkaException, Message, TopicPartition
from fastavro import parse_schema, schemaless_reader

from backbone.audit import log
from backbone.audit.batches import Unpacker
from backbone.audit.log import Report
from backbone.audit.operations import OPERATIONS_WRITER
from backbone.audit.timestamps import Stamp, Trust
from backbone.errors import kafka_unavailable
from backbone.events.catalog import AUDIT_TIMESTAMP, Catalog
from backbone.events.serde import HEADER_SIZE, Decoder, registry_client
from backbone.kafka.topics import AUDIT_TOPIC, CHECKPOINTS_TOPIC, OPERATIONS_CHECKPOINTS_TOPIC, OPERATIONS_TOPIC, TIMESTAMPS_TOPIC
from backbone.keys.keyring import PublicKey
from backbone.settings import Settings
from consumers.audit_trail import Trail, codecs, operations_codec, verify_trail


def read_messages(settings: Settings, topic: str, idle_s: float, timeout_s: float) -> Iterable[Message]:
    """Every message of `topic` from the beginning, until each partition reached its end and nothing
    more arrived for `idle_s` (watermarks may lag on some brokers: end is judged by reading); none
    when the topic does not exist; `KafkaUnavailableError` when the cluster does not answer."""
    consumer = Consumer(settings.consumer_config(None, **{"group.id": f"audit-verify-{uuid.uuid4().hex}",
                                                          "enable.partition.eof": True}))
    try:
        try:
            metadata = consumer.list_topics(topic, timeout=settings.kafka_timeout_s).topics.get(topic)
        except KafkaException as exc:
            raise kafka_unavailable(settings.kafka_bootstrap, settings.kafka_timeout_s, f"reading {topic}: {exc.args[0].str()}") from None
        partitions = sorted(metadata.partitions) if metadata is not None and metadata.error is None else []
        consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in partitions])
        ended: set[int] = set()
        deadline, last = time.monotonic() + timeout_s, time.monotonic()
        while partitions and time.monotonic() < deadline:
            messages = consumer.consume(5000, 0.2)
            for message in messages:
                error = message.error()
                if error is None:
                    last = time.monotonic()
                    yield message
                elif error.code() == KafkaError._PARTITION_EOF:
                    ended.add(message.partition())
                else:
                    raise log.AuditLogError(f"reading {topic}: {error.str()}")
            if len(ended) == len(partitions) and time.monotonic() - last > idle_s:
                return
    finally:
        consumer.close()


def _read_all(settings: Settings, topic: str, idle_s: float, timeout_s: float) -> Iterable[bytes]:
    return (message.value() or b"" for message in read_messages(settings, topic, idle_s, timeout_s))


def add_messages(trail: Trail, unpack: Unpacker, values: Iterable[bytes]) -> None:
    """The records of audit messages by their own bytes: one per message, or many since batching."""
    for message in values:
        for value, record in unpack(message):
            writer, sequence, index = record.get("writer", ""), record.get("checkpoint", 0), record.get("leaf", 0)
            content = log.content_of(value[HEADER_SIZE:], record) if "writer" in record else value[HEADER_SIZE:]
            trail.add((writer, sequence), index, content, len(record.get("decisions") or ()))
            if writer == OPERATIONS_WRITER:
                trail.actions[sequence] = record


def verify_kafka(settings: Settings, catalog: Catalog, keys: Mapping[str, PublicKey], *, idle_s: float = 1.0,
                 timeout_s: float = 600.0, trust: Trust | None = None) -> Report:
    """The trail as the topics hold it: the records' own bytes, no recomputation; and the
    checkpoints' timestamps on `audit.timestamps`."""
    codec, checkpoint_codec = codecs(catalog)
    decode = Decoder(registry_client(settings))
    trail = Trail()
    for topic in (CHECKPOINTS_TOPIC, OPERATIONS_CHECKPOINTS_TOPIC):
        for value in _read_all(settings, topic, idle_s, timeout_s):
            checkpoint = checkpoint_codec.decode(value[HEADER_SIZE:])
            trail.checkpoints[checkpoint.writer].append(checkpoint)
    unpack = Unpacker(decode.source.schema)
    for topic in (AUDIT_TOPIC, OPERATIONS_TOPIC):
        add_messages(trail, unpack, _read_all(settings, topic, idle_s, timeout_s))
    stamp_schema = parse_schema(catalog.internal_schema(AUDIT_TIMESTAMP))
    for value in _read_all(settings, TIMESTAMPS_TOPIC, idle_s, timeout_s):
        try:
            trail.stamps.append(Stamp.from_record(schemaless_reader(BytesIO(value[HEADER_SIZE:]), stamp_schema, None)))
        except Exception as exc:  # noqa: BLE001 - fastavro raises many types; the value holds nothing personal
            raise log.AuditLogError(f"{TIMESTAMPS_TOPIC} holds a record that is not a timestamp ({type(exc).__name__})") from None
    return verify_trail(trail, codec, checkpoint_codec, keys, operations=operations_codec(catalog), trust=trust)
