"""The operator's audit trail: every control-plane action (re-identification, agreement status
change, erasure, DLQ replay) is a record on `audit.operations`, landed beside the decisions in the
audit database, and sealed in the verifiable log like the decisions are.

`record()` publishes synchronously and raises when the cluster does not acknowledge it, so an
action that must be accounted for (a re-identification) can refuse to complete without its record.
Actions name their actor by `BACKBONE_IDENTITY`, never by `$USER`, and carry no personal data:
a token appears only as its SHA-256.

Sealing: each action is a one-leaf Merkle batch of the `operations` chain, signed by its actor's
own signing key (`backbone.keys.keyring.operator_signer`: created in the keyring on the actor's first
action when `backbone keys operator add` did not) and published to
`audit.operations.checkpoints` (one partition: its last record is the head of the chain). The
record carries its position (writer `operations`, checkpoint, leaf 0) like a decision record, so
`backbone audit verify` checks actions with the same code: a deleted, edited or forged action, a
gap or a fork in the chain is named. Actions recorded on one host are serialised by a lock in the
data directory; two hosts recording at the same instant would fork the chain, which verification
reports (`fork`) rather than hides. Every processor worker anchors the chain's head in its own
signed checkpoints (`backbone.audit.anchors`, `processors.anchors`), out of the operators' reach.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime

from confluent_kafka import Consumer, KafkaError, KafkaException, Message, Producer, TopicPartition

from backbone.audit.anchors import OPERATIONS_WRITER  # noqa: F401 - the chain that seals operator actions (processors': `w<hex>`)
from backbone.audit.log import AuditLogError, Checkpoint, CheckpointCodec, RecordCodec, leaf_hash
from backbone.errors import BackboneError, KafkaUnavailableError, KeyringError, kafka_unavailable
from backbone.events.catalog import AUDIT_CHECKPOINT, OPERATOR_ACTION, load_catalog
from backbone.events.serde import HEADER_SIZE, MAGIC, encoder_for, register, registry_client
from backbone.files.private import private_directory
from backbone.kafka.topics import OPERATIONS_CHECKPOINTS_TOPIC, OPERATIONS_TOPIC, Topics, operations_topic_config
from backbone.keys.keyring import Keyring, ensure_signer, operator_signer
from backbone.keys.master import master_key_from_settings
from backbone.settings import Settings

ACTIONS = ("reidentify", "agreement_status", "agreement_apply", "erase", "dlq_replay", "notice_release", "grievance",
           "dp_release")
IDENTITY_HELP = "set BACKBONE_IDENTITY to your operator or oversight account (it is recorded with the action)"


class IdentityMissing(BackboneError):
    """An action that must name its actor was attempted without `BACKBONE_IDENTITY`."""


@dataclass(slots=True, frozen=True)
class OperatorAction:
    action: str
    actor: str
    target: str
    outcome: str
    reason: str | None = None
    details: dict[str, str] = field(default_factory=dict)
    action_id: str = field(default_factory=lambda: str(uuid.uuid4()))
    at: datetime = field(default_factory=lambda: datetime.now(UTC))


def actor(settings: Settings) -> str:
    """The configured identity; `IdentityMissing` naming the setting when there is none."""
    if not settings.identity:
        raise IdentityMissing(f"no identity to record the action under; {IDENTITY_HELP}")
    return settings.identity


def token_digest(token: str) -> str:
    """SHA-256 of a token, hex: recorded instead of the token, so the trail shows which one without holding it."""
    return hashlib.sha256(token.encode()).hexdigest()


def record(settings: Settings, action: OperatorAction) -> OperatorAction:
    """Seal `action` as the next checkpoint of the `operations` chain and publish both (checkpoint
    to `audit.operations.checkpoints`, record to `audit.operations`); wait for the cluster to
    acknowledge them. Raises (and the action is not done) when either is not acknowledged."""
    if action.action not in ACTIONS:
        raise ValueError(f"unknown operator action {action.action!r}; one of {', '.join(ACTIONS)}")
    catalog = load_catalog(settings.schemas_dir)
    schema, checkpoint_schema = catalog.internal_schema(OPERATOR_ACTION), catalog.internal_schema(AUDIT_CHECKPOINT)
    codec, checkpoint_codec = RecordCodec.for_audit_schema(schema), CheckpointCodec(checkpoint_schema)
    try:
        signer = operator_signer(action.actor)
        keyring = ensure_signer(settings, Keyring.load(settings.keyring_path, master_key_from_settings(settings)), signer)
        key_id, key = keyring.signing_key(signer)
    except KeyringError as exc:
        raise KeyringError(f"the {action.action} action is sealed in the audit trail with {action.actor[:64]}'s own signing key "
                           f"from the keyring (`backbone keys operator add {action.actor[:64]}`), so it is not done: {exc}") from None
    topics = Topics(settings)
    # kept for ever, whoever makes it first: it is also the DP releases' budget ledger (`dp_ledger`)
    topics.reconcile(OPERATIONS_TOPIC, operations_topic_config())
    topics.ensure(OPERATIONS_CHECKPOINTS_TOPIC, partitions=1)
    registry = registry_client(settings)
    encode = encoder_for(registry, f"{OPERATIONS_TOPIC}-value", schema)
    header = bytes([MAGIC]) + register(registry, f"{OPERATIONS_CHECKPOINTS_TOPIC}-value", checkpoint_schema).to_bytes(4, "big")
    content = {
        "action_id": action.action_id, "action": action.action, "actor": action.actor, "at": action.at,
        "target": action.target, "outcome": action.outcome, "reason": action.reason, "details": dict(action.details),
    }
    leaf = leaf_hash(codec.content(content))
    producer = Producer(settings.producer_config(**{"linger.ms": 0}))
    failures: list[str] = []

    def delivered(error: KafkaError | None, message: Message) -> None:
        if error is not None:
            failures.append(error.str())

    with _chain_lock(settings):
        last = last_operations_checkpoint(settings, checkpoint_codec)
        sequence = 0 if last is None else last.sequence + 1
        checkpoint = checkpoint_codec.seal(writer=OPERATIONS_WRITER, sequence=sequence, leaves=[leaf],
                                           previous="" if last is None else checkpoint_codec.hash(last),
                                           schema=codec.fingerprint, key_id=key_id, key=key)
        value = encode({**content, "writer": OPERATIONS_WRITER, "checkpoint": sequence, "leaf": 0})
        producer.produce(OPERATIONS_CHECKPOINTS_TOPIC, header + checkpoint_codec.encode(checkpoint), OPERATIONS_WRITER.encode(),
                         on_delivery=delivered)
        producer.produce(OPERATIONS_TOPIC, value, action.action_id.encode(), on_delivery=delivered)
        if producer.flush(settings.kafka_timeout_s) or failures:
            raise KafkaUnavailableError(
                f"the {action.action} record was not acknowledged by {OPERATIONS_TOPIC} and {OPERATIONS_CHECKPOINTS_TOPIC} "
                f"at {settings.kafka_bootstrap}{' (' + failures[0] + ')' if failures else ''}; the action is not done"
            )
    return action


@contextmanager
def _chain_lock(settings: Settings) -> Iterator[None]:
    """One action at a time on this host between reading the chain's head and publishing after it."""
    directory = private_directory(settings.data_dir)
    fd = os.open(directory / "operations-chain.lock", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def last_operations_checkpoint(settings: Settings, codec: CheckpointCodec, timeout_s: float | None = None) -> Checkpoint | None:
    """The head of the `operations` chain: the last record of `audit.operations.checkpoints`, read
    from the high watermark's last offset to the partition's end (a watermark that lags is caught
    up by reading), or None for an empty chain."""
    timeout_s = timeout_s or settings.kafka_timeout_s
    consumer = Consumer(settings.consumer_config(None, **{"group.id": f"operations-head-{uuid.uuid4().hex}",
                                                          "enable.partition.eof": True}))
    partition = TopicPartition(OPERATIONS_CHECKPOINTS_TOPIC, 0)
    try:
        try:
            low, high = consumer.get_watermark_offsets(partition, timeout=timeout_s)
        except KafkaException as exc:
            raise kafka_unavailable(settings.kafka_bootstrap, timeout_s, f"reading the head of the operations chain: {exc.args[0].str()}") from None
        if high <= low:
            return None
        consumer.assign([TopicPartition(OPERATIONS_CHECKPOINTS_TOPIC, 0, high - 1)])
        last: bytes | None = None
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            for message in consumer.consume(500, 0.5):
                error = message.error()
                if error is None:
                    last = message.value()
                elif error.code() == KafkaError._PARTITION_EOF:
                    if last is not None:
                        return codec.decode(last[HEADER_SIZE:])
                else:
                    raise KafkaUnavailableError(f"reading {OPERATIONS_CHECKPOINTS_TOPIC}: {error.str()}")
        raise KafkaUnavailableError(f"the head of {OPERATIONS_CHECKPOINTS_TOPIC} was not readable within {timeout_s:g}s; "
                                    "the action is not done")
    except AuditLogError as exc:
        raise AuditLogError(f"the head of {OPERATIONS_CHECKPOINTS_TOPIC} is not a checkpoint ({exc}); the action is not done") from None
    finally:
        consumer.close()
