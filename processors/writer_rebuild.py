"""A processor writer's chain state rebuilt from `audit.checkpoints`, for a worker with a stable
writer id (`BACKBONE_AUDIT_WRITER`, e.g. a StatefulSet's pod name) that starts without its state
(a rescheduled pod on a fresh volume). Its newest checkpoint on Kafka, signed by this deployment's
processor key, becomes its state, marked not clean: the worker publishes it again and names it
`interrupted` in its next checkpoint, so a batch cut short by the loss of the old pod is a warning,
not a `missing_record` tamper alarm.

Sound because a worker with a stable id has each checkpoint acknowledged by the broker before it
produces any record the checkpoint seals (`processors.dataplane`): no record on Kafka names a
sequence later than the newest checkpoint there, so the rebuilt chain never uses a sequence twice.
"""

from __future__ import annotations

import base64
import logging
import time
from collections.abc import Mapping

from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaException, TopicPartition

from backbone.audit.log import AuditLogError, Checkpoint, CheckpointCodec
from backbone.errors import kafka_unavailable
from backbone.events.serde import HEADER_SIZE
from backbone.kafka.topics import CHECKPOINTS_TOPIC
from backbone.keys.keyring import PublicKey
from backbone.settings import Settings

log = logging.getLogger(__name__)

READ_WAIT_S = 0.2


def newest_checkpoint(settings: Settings, writer: str, codec: CheckpointCodec, keys: Mapping[str, PublicKey]) -> Checkpoint | None:
    """The highest checkpoint of `writer` on `audit.checkpoints` signed under `keys`, read up to each
    partition's end as it was at the start; None when the writer has none."""
    consumer = Consumer(settings.consumer_config(None, **{"group.id": f"writer-rebuild-{writer}", "enable.auto.commit": False}))
    try:
        metadata = consumer.list_topics(CHECKPOINTS_TOPIC, timeout=settings.kafka_timeout_s).topics.get(CHECKPOINTS_TOPIC)
        partitions = sorted(metadata.partitions) if metadata is not None and metadata.error is None else []
        ends = {p: consumer.get_watermark_offsets(TopicPartition(CHECKPOINTS_TOPIC, p), timeout=settings.kafka_timeout_s)[1]
                for p in partitions}
        remaining = {p for p, end in ends.items() if end > 0}
        consumer.assign([TopicPartition(CHECKPOINTS_TOPIC, p, OFFSET_BEGINNING) for p in sorted(remaining)])
        newest: Checkpoint | None = None
        wanted = writer.encode()
        quiet_since = time.monotonic()
        while remaining:
            # a short wait per call: consume() waits its whole timeout unless all 5000 arrive, and the
            # topic's end is known, so the last call need not wait
            messages = consumer.consume(5000, READ_WAIT_S)
            if messages:
                quiet_since = time.monotonic()
            elif time.monotonic() - quiet_since > settings.kafka_timeout_s:
                raise AuditLogError(f"{CHECKPOINTS_TOPIC} stopped answering while the audit writer {writer} rebuilt its "
                                    "state; start the worker again")
            for message in messages:
                if message.error() is not None:
                    raise AuditLogError(f"reading {CHECKPOINTS_TOPIC}: {message.error().str()}")
                if message.offset() + 1 >= ends[message.partition()]:
                    remaining.discard(message.partition())
                if message.key() != wanted:
                    continue
                try:
                    checkpoint = codec.decode((message.value() or b"")[HEADER_SIZE:])
                except AuditLogError:
                    continue
                if checkpoint.writer == writer and not codec.signature_problem(checkpoint, keys) and (
                        newest is None or checkpoint.sequence > newest.sequence):
                    newest = checkpoint
        return newest
    except KafkaException as exc:
        raise kafka_unavailable(settings.kafka_bootstrap, settings.kafka_timeout_s,
                                f"rebuilding the audit writer state from {CHECKPOINTS_TOPIC}: {exc.args[0].str()}") from None
    finally:
        consumer.close()


def rebuilt_state(settings: Settings, writer: str, codec: CheckpointCodec, keys: Mapping[str, PublicKey]) -> dict | None:
    """The writer state (as `processors.checkpoints.WriterSlot` keeps it) from the newest checkpoint on
    Kafka, not clean: the batch it sealed may have been cut short. None when there is none."""
    newest = newest_checkpoint(settings, writer, codec, keys)
    if newest is None:
        return None
    log.warning("audit writer %s: no state in the data directory; rebuilt from %s at checkpoint %d", writer,
                CHECKPOINTS_TOPIC, newest.sequence)
    return {"writer": writer, "sequence": newest.sequence, "checkpoint": base64.b64encode(codec.encode(newest)).decode(),
            "clean": False, "rebuilt": True}
