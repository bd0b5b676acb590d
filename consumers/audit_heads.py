"""Which writers exist and where their chains end, for `backbone audit verify` to tell a trail cut
short from a whole one (`backbone.audit.heads`): the chain heads on Kafka, the processor writers'
state in the data directory, and heads a verifier recorded (`--expect-head`).

On Kafka, each writer's checkpoints are on `audit.checkpoints` and the operations chain's on
`audit.operations.checkpoints`. A checkpoint the audit sink's consumer group has consumed (its
offset is below the group's committed offset) has landed, so the landed trail must reach it; one
after that is on its way (a warning, not a failure), so verifying while the sinks run does not fail
for their lag. The committed offsets are read before the landed trail is, so nothing landing in
between is asked for.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from clickhouse_connect.driver.client import Client
from confluent_kafka import Consumer, KafkaException, TopicPartition

from backbone.audit import log
from backbone.audit.heads import EMPTY_TRAIL, HEADS_IN_TRANSIT, Head, check_heads, writer_state_heads
from backbone.audit.log import AuditLogError, CheckpointCodec, Failure, Report
from backbone.audit.operations import OPERATIONS_WRITER
from backbone.errors import KafkaUnavailableError, kafka_unavailable
from backbone.events.serde import HEADER_SIZE
from backbone.kafka.topics import CHECKPOINTS_TOPIC, OPERATIONS_CHECKPOINTS_TOPIC
from backbone.keys.keyring import PublicKey
from backbone.settings import Settings
from consumers import ddl
from consumers.audit_kafka import read_messages
from consumers.plans import CHECKPOINTS_SINK, group_id

CHECKPOINT_TOPICS = (CHECKPOINTS_TOPIC, OPERATIONS_CHECKPOINTS_TOPIC)
ON_KAFKA = "on Kafka"


@dataclass
class KnownHeads:
    """Every head known apart from the trail, what is still on its way, and the checks not made (and why)."""

    heads: list[Head] = field(default_factory=list)
    warnings: list[Failure] = field(default_factory=list)
    unchecked: list[str] = field(default_factory=list)

    def check(self, report: Report, trail: str) -> None:
        """Add to `report` a failure for every writer whose chain in it falls short of a known head."""
        report.failures += check_heads(report.chains, self.heads, trail)
        report.warnings += self.warnings


def _landed_offsets(settings: Settings) -> dict[tuple[str, int], int]:
    """Where the audit checkpoints sink's group is on each checkpoint partition: what it has landed.
    Its consumer only reads the group's offsets: it never subscribes, so it never joins the group
    nor commits."""
    consumer = Consumer(settings.consumer_config(group_id(settings, CHECKPOINTS_SINK)))
    try:
        partitions = []
        for topic in CHECKPOINT_TOPICS:
            metadata = consumer.list_topics(topic, timeout=settings.kafka_timeout_s).topics.get(topic)
            if metadata is not None and metadata.error is None:
                partitions += [TopicPartition(topic, p) for p in sorted(metadata.partitions)]
        found = consumer.committed(partitions, timeout=settings.kafka_timeout_s) if partitions else []
        return {(tp.topic, tp.partition): tp.offset for tp in found if tp.offset >= 0}
    except KafkaException as exc:
        raise kafka_unavailable(settings.kafka_bootstrap, settings.kafka_timeout_s, f"reading the audit sink's offsets: "
                                                                                    f"{exc.args[0].str()}") from None
    finally:
        consumer.close()


def kafka_heads(settings: Settings, codec: CheckpointCodec, keys: Mapping[str, PublicKey], *, idle_s: float = 1.0,
                timeout_s: float = 600.0) -> tuple[list[Head], dict[str, list[int]]]:
    """Per writer, its newest checkpoint on Kafka the audit sink has landed (signed under `keys`:
    anything else cannot be the writer's); and per writer the sequences after it, on Kafka but not
    landed yet. `KafkaUnavailableError` when the cluster does not answer."""
    landed_offsets = _landed_offsets(settings)
    landed: dict[str, Head] = {}
    pending: dict[str, set[int]] = {}
    for topic in CHECKPOINT_TOPICS:
        for message in read_messages(settings, topic, idle_s, timeout_s):
            try:
                checkpoint = codec.decode((message.value() or b"")[HEADER_SIZE:])
            except AuditLogError:
                continue  # not a checkpoint: `audit verify --from-kafka` names the topic's contents
            if codec.signature_problem(checkpoint, keys):
                continue
            writer, sequence = checkpoint.writer, checkpoint.sequence
            if message.offset() < landed_offsets.get((topic, message.partition()), 0):
                if writer not in landed or landed[writer].sequence < sequence:
                    landed[writer] = Head(writer, sequence, codec.hash(checkpoint), ON_KAFKA)
            else:
                pending.setdefault(writer, set()).add(sequence)
    ahead = {writer: sorted(s for s in sequences if writer not in landed or s > landed[writer].sequence)
             for writer, sequences in pending.items()}
    return list(landed.values()), {writer: sequences for writer, sequences in ahead.items() if sequences}


def known_heads(settings: Settings, codec: CheckpointCodec, keys: Mapping[str, PublicKey], expected: Iterable[Head], *,
                from_kafka_too: bool) -> KnownHeads:
    """The heads a trail must reach: `expected` (a verifier's), the writers' state in the data
    directory, and (`from_kafka_too`, for the landed trail) the heads on Kafka the audit sink
    consumed. Read them before the trail, so the sinks' progress meanwhile asks for nothing."""
    known = KnownHeads(heads=list(expected))
    state, unused = writer_state_heads(settings.data_dir, codec, keys)
    known.unchecked += unused
    if not state:
        known.unchecked.append(f"no processor writer state in {settings.data_dir} to compare with (run verify with the "
                               "processors' data directory for that)")
    pending: dict[str, list[int]] = {}
    if from_kafka_too:
        try:
            on_kafka, pending = kafka_heads(settings, codec, keys)
        except KafkaUnavailableError as exc:
            known.unchecked.append(f"the chain heads on Kafka were not read ({exc}): a writer deleted whole or its newest "
                                   "checkpoints deleted are found only against --expect-head and the writers' state")
        else:
            known.heads += on_kafka
        for writer, sequences in sorted(pending.items()):
            shown = log._spans(sequences)  # noqa: SLF001
            known.warnings.append(Failure(HEADS_IN_TRANSIT, writer, None, f"checkpoint(s) {shown} on Kafka are not landed yet "
                                                                          "(the audit sink has not consumed them): verify again "
                                                                          "once it has"))
    # a writer's state may name a checkpoint Kafka holds but the sink has not landed yet: on its way
    known.heads += [head for head in state if head.sequence not in pending.get(head.writer, ())]
    return known


def recipient_rows(client: Client, database_prefix: str, recipients: Iterable[str]) -> int:
    """Rows in the tables of the recipients' databases (what was shared with them)."""
    databases = sorted({ddl.database_name(database_prefix, recipient) for recipient in recipients})
    if not databases:
        return 0
    found = client.query("SELECT sum(total_rows) FROM system.tables WHERE database IN {d:Array(String)} "
                         "AND engine LIKE '%MergeTree'", parameters={"d": databases}).result_rows
    return int(found[0][0] or 0) if found else 0


def check_not_emptied(report: Report, client: Client, database_prefix: str, recipients: Iterable[str]) -> None:
    """A trail without a single decision while the recipients' databases hold shared rows fails:
    every row there was shared by a decision the trail should hold."""
    if any(writer != OPERATIONS_WRITER for writer in report.chains):
        return
    rows = recipient_rows(client, database_prefix, recipients)
    if rows:
        report.failures.append(Failure(EMPTY_TRAIL, "", None, f"the recipients' databases hold {rows:,} shared rows, but the trail "
                                                              "holds no checkpoint of any processor writer: it was emptied"))
