"""The processor's side of anchoring the operators' trail (`backbone.audit.anchors`): every worker
reads `audit.operations.checkpoints` (one partition: the operators' `operations` chain) from the
beginning and then as it grows, and keeps the newest checkpoint read there; each batch checkpoint
the worker seals names it (sequence and hash), signed with the processors' key, which operators do
not hold. So an operator who rewrites their chain later (an action deleted, the rest re-sealed with
operator keys) cannot make it match what the processors saw.

The head is kept as one tuple, replaced whole by the reader thread and read by the data plane. A
record that is not a checkpoint is skipped with a warning: verification names what the topic holds.
Reading costs nothing per event; the topic holds one small record per operator action.
"""

from __future__ import annotations

import logging

from confluent_kafka import Message

from backbone.audit.anchors import OPERATIONS_WRITER
from backbone.audit.log import AuditLogError, CheckpointCodec
from backbone.events.catalog import AUDIT_CHECKPOINT, Catalog
from backbone.events.serde import HEADER_SIZE, MAGIC
from backbone.kafka.compacted import CompactedTopicReader
from backbone.kafka.topics import OPERATIONS_CHECKPOINTS_TOPIC, Topics
from backbone.settings import Settings

log = logging.getLogger(__name__)


class OperationsHead:
    """The newest `operations` checkpoint read: `()` gives (sequence, hash), or None before any."""

    def __init__(self, codec: CheckpointCodec) -> None:
        self._codec = codec
        self.head: tuple[int, str] | None = None

    def apply_message(self, message: Message) -> None:
        value = message.value() or b""
        try:
            if value[:1] != bytes([MAGIC]):
                raise AuditLogError("no schema header")
            checkpoint = self._codec.decode(value[HEADER_SIZE:])
        except AuditLogError:
            log.warning("%s[%d]@%d is not a checkpoint; the operations head stays at %s", message.topic(), message.partition(),
                        message.offset(), self.head[0] if self.head else "(none)")
            return
        if checkpoint.writer == OPERATIONS_WRITER:
            self.head = (checkpoint.sequence, self._codec.hash(checkpoint))

    def __call__(self) -> tuple[int, str] | None:
        return self.head


def operations_head_reader(settings: Settings, catalog: Catalog) -> tuple[CompactedTopicReader, OperationsHead]:
    """A reader of `audit.operations.checkpoints` (created with its one partition if missing) and the head it keeps."""
    Topics(settings).ensure(OPERATIONS_CHECKPOINTS_TOPIC, partitions=1)
    head = OperationsHead(CheckpointCodec(catalog.internal_schema(AUDIT_CHECKPOINT)))
    return CompactedTopicReader(settings, OPERATIONS_CHECKPOINTS_TOPIC, head.apply_message, "operations-head"), head
