"""The privacy-budget ledger in the verifiable trail: each DP release attempt is sealed as an
operator action `dp_release` in the `operations` chain (`backbone.audit.operations`) before any
result is computed, and a release past its budget or cap is refused with its refusal sealed too.

Concurrency: reading the spends so far, deciding and sealing happen under the operations chain's
host lock (the one every operator action takes), after reading `audit.operations` to its end as
it stands once the lock is held; every writer flushes and has its records acknowledged before it
lets the lock go, so the next one sees them. Two releases therefore never both spend the last of
a budget on one host. Writers on two hosts at the same instant would fork the chain, which `audit
verify` reports (`fork`), and its recomputation of every cumulative spend names any overspend.

One `LedgerWriter` per process keeps its producer, codecs and signing key, and reads the topic
incrementally, so an attempt costs one head read, one signature and one acknowledged produce.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass

from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, KafkaException, Message, Producer, TopicPartition

from backbone.audit.log import Checkpoint, CheckpointCodec, RecordCodec, leaf_hash
from backbone.audit.operations import OPERATIONS_WRITER, OperatorAction, _chain_lock
from backbone.errors import BackboneError, KafkaUnavailableError, KeyringError, kafka_unavailable
from backbone.events.catalog import AUDIT_CHECKPOINT, OPERATOR_ACTION, load_catalog
from backbone.events.serde import HEADER_SIZE, MAGIC, Decoder, encoder_for, register, registry_client
from backbone.kafka.topics import OPERATIONS_CHECKPOINTS_TOPIC, OPERATIONS_TOPIC, Topics, operations_topic_config
from backbone.keys.keyring import Keyring, ensure_signer, operator_signer
from backbone.keys.master import master_key_from_settings
from backbone.privacy.ledger import ACTION, SPENT, Attempt, Tally, decide
from backbone.settings import Settings


class LedgerIncomplete(BackboneError):
    """The ledger's topic lost records: budgets cannot be told, so nothing is released."""


class ReleaseRefused(BackboneError):
    """A DP release past its budget or cap: refused, and the refusal is in the trail."""


@dataclass(slots=True, frozen=True)
class Entry:
    """A sealed ledger record: the action as published and where it sits in the chain."""

    action: OperatorAction
    sequence: int

    @property
    def spent(self) -> bool:
        return self.action.outcome == SPENT


class LedgerWriter:
    """Seals ledger records for one actor (`BACKBONE_IDENTITY`), holding its Kafka clients open."""

    def __init__(self, settings: Settings, actor: str) -> None:
        self.settings, self.actor = settings, actor
        catalog = load_catalog(settings.schemas_dir)
        schema, checkpoint_schema = catalog.internal_schema(OPERATOR_ACTION), catalog.internal_schema(AUDIT_CHECKPOINT)
        self.codec, self.checkpoint_codec = RecordCodec.for_audit_schema(schema), CheckpointCodec(checkpoint_schema)
        try:
            signer = operator_signer(actor)
            keyring = ensure_signer(settings, Keyring.load(settings.keyring_path, master_key_from_settings(settings)), signer)
            self.key_id, self.key = keyring.signing_key(signer)
        except KeyringError as exc:
            raise KeyringError(f"a DP release is sealed in the audit trail with {actor[:64]}'s own signing key "
                               f"(`backbone keys operator add {actor[:64]}`), so it is not done: {exc}") from None
        topics = Topics(settings)
        topics.reconcile(OPERATIONS_TOPIC, operations_topic_config())  # the ledger: spends never expire
        topics.ensure(OPERATIONS_CHECKPOINTS_TOPIC, partitions=1)
        registry = registry_client(settings)
        self.encode = encoder_for(registry, f"{OPERATIONS_TOPIC}-value", schema)
        self.header = bytes([MAGIC]) + register(registry, f"{OPERATIONS_CHECKPOINTS_TOPIC}-value", checkpoint_schema).to_bytes(4, "big")
        self.decode = Decoder(registry)
        self.producer = Producer(settings.producer_config(**{"linger.ms": 0}))
        self.reader = Consumer(settings.consumer_config(None, **{"group.id": f"dp-ledger-{uuid.uuid4().hex}", "fetch.wait.max.ms": 5,
                                                                 "enable.partition.eof": True}))
        self.head_reader = Consumer(settings.consumer_config(None, **{"group.id": f"dp-ledger-head-{uuid.uuid4().hex}", "fetch.wait.max.ms": 5,
                                                                      "enable.partition.eof": True}))
        self.tally = Tally()
        self._assigned: list[int] = []
        self._applied: set[str] = set()
        self._head_cache: tuple[int, Checkpoint] | None = None  # (end offset after it, checkpoint)

    def close(self) -> None:
        self.reader.close()
        self.head_reader.close()
        self.producer.flush(self.settings.kafka_timeout_s)

    def __enter__(self) -> LedgerWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _catch_up(self) -> None:
        """Read `audit.operations` up to its end as it is now, adding every ledger spend to the tally."""
        timeout = self.settings.kafka_timeout_s
        try:
            metadata = self.reader.list_topics(OPERATIONS_TOPIC, timeout=timeout).topics[OPERATIONS_TOPIC]
            partitions = sorted(metadata.partitions)
            new = [TopicPartition(OPERATIONS_TOPIC, p, OFFSET_BEGINNING) for p in partitions if p not in self._assigned]
            if new:  # the first time every partition, from its beginning; later only partitions added since
                self.reader.incremental_assign(new)
                self._assigned = partitions
            marks = {p: self.reader.get_watermark_offsets(TopicPartition(OPERATIONS_TOPIC, p), timeout=timeout, cached=False)
                     for p in partitions}
            ends = {p: high for p, (_, high) in marks.items()}
            lost = {p: low for p, (low, _) in marks.items() if low > 0}
            if lost:  # spends the topic no longer holds would be budget given back: fail closed
                raise LedgerIncomplete(f"{OPERATIONS_TOPIC} no longer holds the whole ledger (retention removed offsets below {lost} "
                                       "per partition); keep that topic for ever (retention.ms=-1); "
                                       "nothing is released")
        except KafkaException as exc:
            raise kafka_unavailable(self.settings.kafka_bootstrap, timeout, f"reading the DP ledger: {exc.args[0].str()}") from None
        positions = {tp.partition: tp.offset for tp in self.reader.position([TopicPartition(OPERATIONS_TOPIC, p) for p in partitions])}
        waiting = {p for p in partitions if ends[p] > max(positions.get(p, 0), 0)}
        deadline = time.monotonic() + timeout
        while waiting:
            if time.monotonic() > deadline:
                raise KafkaUnavailableError(f"{OPERATIONS_TOPIC} was not readable to its end within {timeout:g}s; the release is not done")
            for message in self.reader.consume(1000, 0.005):  # what has arrived: the end is known by offsets
                self._take(message, ends, waiting)

    def _take(self, message: Message, ends: dict[int, int], waiting: set[int]) -> None:
        error = message.error()
        if error is not None:
            if error.code() == KafkaError._PARTITION_EOF:
                waiting.discard(message.partition())
                return
            raise KafkaUnavailableError(f"reading {OPERATIONS_TOPIC}: {error.str()}")
        if message.offset() + 1 >= ends.get(message.partition(), 0):
            waiting.discard(message.partition())
        record = self.decode(message.value() or b"").record
        if record.get("action") == ACTION and str(record.get("action_id")) not in self._applied:
            self._apply(str(record.get("action_id")), record.get("details") or {}, str(record.get("outcome")))

    def _apply(self, action_id: str, details: dict, outcome: str) -> None:
        self._applied.add(action_id)  # its own records come back when it reads the topic: counted once
        self.tally.apply(details, outcome)

    def attempt(self, attempt: Attempt) -> Entry:
        """Decide `attempt` against every spend sealed so far and seal the decision; `ReleaseRefused`
        (after its refusal is sealed) when it would pass a budget or cap."""
        with _chain_lock(self.settings):
            self._catch_up()
            outcome, reason, details = decide(self.tally, attempt)
            action = OperatorAction(ACTION, self.actor, f"{attempt.agreement} {attempt.query} for {attempt.recipient}",
                                    outcome, reason, details)
            sequence = self._seal(action)
            self._apply(action.action_id, details, outcome)
        entry = Entry(action, sequence)
        if not entry.spent:
            raise ReleaseRefused(f"DP release refused and recorded (operations checkpoint {sequence}): {reason}")
        return entry

    def _seal(self, action: OperatorAction) -> int:
        content = {"action_id": action.action_id, "action": action.action, "actor": action.actor, "at": action.at,
                   "target": action.target, "outcome": action.outcome, "reason": action.reason, "details": dict(action.details)}
        last = self._head()
        sequence = 0 if last is None else last.sequence + 1
        checkpoint = self.checkpoint_codec.seal(writer=OPERATIONS_WRITER, sequence=sequence, leaves=[leaf_hash(self.codec.content(content))],
                                                previous="" if last is None else self.checkpoint_codec.hash(last),
                                                schema=self.codec.fingerprint, key_id=self.key_id, key=self.key)
        failures: list[str] = []
        head: list[int] = []

        def delivered(error: KafkaError | None, message: Message) -> None:
            if error is not None:
                failures.append(error.str())
            elif message.topic() == OPERATIONS_CHECKPOINTS_TOPIC:
                head.append(message.offset())

        self.producer.produce(OPERATIONS_CHECKPOINTS_TOPIC, self.header + self.checkpoint_codec.encode(checkpoint),
                              OPERATIONS_WRITER.encode(), on_delivery=delivered)
        self.producer.produce(OPERATIONS_TOPIC, self.encode({**content, "writer": OPERATIONS_WRITER, "checkpoint": sequence, "leaf": 0}),
                              action.action_id.encode(), on_delivery=delivered)
        if self.producer.flush(self.settings.kafka_timeout_s) or failures:
            raise KafkaUnavailableError(f"the DP ledger record was not acknowledged by {OPERATIONS_TOPIC} and "
                                        f"{OPERATIONS_CHECKPOINTS_TOPIC}{' (' + failures[0] + ')' if failures else ''}; "
                                        "nothing is released")
        self._head_cache = (head[0] + 1, checkpoint) if head else None
        return sequence

    def _head(self) -> Checkpoint | None:
        """The chain's head: the checkpoint this writer sealed last when the partition still ends
        right after it (the lock is held), else read from the partition's end."""
        timeout = self.settings.kafka_timeout_s
        partition = TopicPartition(OPERATIONS_CHECKPOINTS_TOPIC, 0)
        try:
            low, high = self.reader.get_watermark_offsets(partition, timeout=timeout, cached=False)
        except KafkaException as exc:
            raise kafka_unavailable(self.settings.kafka_bootstrap, timeout, f"reading the head of the operations chain: {exc.args[0].str()}") from None
        if self._head_cache is not None and self._head_cache[0] == high:
            return self._head_cache[1]
        if high <= low:
            return None
        # as `operations.last_operations_checkpoint`, on a consumer kept open: from the watermark's last offset to the end
        self.head_reader.assign([TopicPartition(OPERATIONS_CHECKPOINTS_TOPIC, 0, high - 1)])
        last: bytes | None = None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for message in self.head_reader.consume(100, 0.005):
                error = message.error()
                if error is None:
                    last = message.value()
                elif error.code() != KafkaError._PARTITION_EOF:
                    raise KafkaUnavailableError(f"reading {OPERATIONS_CHECKPOINTS_TOPIC}: {error.str()}")
                elif last is not None:
                    return self.checkpoint_codec.decode(last[HEADER_SIZE:])
        raise KafkaUnavailableError(f"the head of {OPERATIONS_CHECKPOINTS_TOPIC} was not readable within {timeout:g}s; nothing is released")
