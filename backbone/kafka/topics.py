"""The names of the backbone's topics (every name and pattern is made here), and topic
administration through confluent-kafka's AdminClient."""

from __future__ import annotations

import re
import zlib
from dataclasses import dataclass, field

from confluent_kafka import KafkaError, KafkaException
from confluent_kafka.admin import AdminClient, AlterConfigOpType, ConfigEntry, ConfigResource, NewTopic

from backbone.errors import TopicError, TopicExists, kafka_unavailable
from backbone.settings import Settings

CONSENT_TOPIC = "consent.changes"
AGREEMENTS_TOPIC = "agreements.changes"
AUDIT_TOPIC = "audit.decisions"
# Signed checkpoints of the audit trail, one per processor batch, keyed by writer.
CHECKPOINTS_TOPIC = "audit.checkpoints"
# RFC 3161 timestamps of the newest checkpoint of a writer, when a TSA is configured, keyed by writer.
TIMESTAMPS_TOPIC = "audit.timestamps"
OPERATIONS_TOPIC = "audit.operations"
# Signed checkpoints of operator actions, one per action (one partition: the last is the chain's head).
OPERATIONS_CHECKPOINTS_TOPIC = "audit.operations.checkpoints"
# Both checkpoint topics, as the audit sink subscribes to them.
CHECKPOINTS_PATTERN = r"^audit\.(operations\.)?checkpoints$"
ERASURES_TOPIC = "erasures"  # compacted: one record per erased subject, keyed by its oversight token
# An operator's erasure request (the subject's id: processors read it) and the processors' answer (the
# tokens and rows to delete: the operator reads it); both kept an hour (backbone.control.erasure_requests).
ERASURE_REQUESTS_TOPIC = "erasure.requests"
ERASURE_WORK_TOPIC = "erasure.work"
DLQ_KEYS_TOPIC = "dlq.keys"  # compacted: per-subject keys that seal the processor's dead letters
ALERTS_TOPIC = "alerts.fraud"
LINEAGE_TOPIC = "lineage.openlineage"  # OpenLineage run events, with BACKBONE_LINEAGE_TRANSPORT=kafka
# Closed data-quality windows, one record per (worker, event type, hour): counts and sketches only,
# keyed `<event type>|<hour>|<worker>` (backbone.quality.window).
QUALITY_TOPIC = "quality.windows"
# A provider's quality breaches: a closed window below its contract's thresholds or a bar an agreement
# requires; keyed by provider, JSON (counts and scores only).
QUALITY_BREACHES_TOPIC = "quality.breaches"
# Compacted: the consistency marks (a subject's registered death, by oversight pseudonym, with its month),
# keyed `<event type>|<field>|<pseudonym>`, read in full by every worker at start (backbone.quality.marks).
QUALITY_MARKS_TOPIC = "quality.marks"
# Records an agreement that requires quality releases only once their own quality window is judged:
# the raw event, keyed `<worker>|<event type>|<hour>`, until the window closes; then a close marker
# with the same key says what was done (backbone.quality.gating). Processors only.
QUALITY_PENDING_TOPIC = "quality.pending"
# Kept two days: past the two windows a release needs, long enough for an operator to list the records
# a stopped worker left held (`backbone quality pending`), short since they are raw events.
QUALITY_PENDING_RETENTION_MS = 2 * 86_400_000
SCHEMAS_TOPIC = "_schemas"
RAW_PREFIX = "raw."
SHARED_PREFIX = "shared."
DLQ_PREFIX = "dlq."
DP_PREFIX = "dp."  # differentially private releases: dp.<recipient>.releases (app/dp_release.py)


def dp_releases_topic(recipient: str) -> str:
    """Where a recipient's differentially private releases are published (JSON, one per cell set)."""
    return f"{DP_PREFIX}{recipient}.releases"
# librdkafka subscribes to a regex when the name starts with ^
RAW_PATTERN = r"^raw\..*"

# Eager compaction, for the compacted topics where erasure tombstones what a person left
# (`consent.changes`, `alerts.fraud`, `dlq.keys`). Kafka never compacts the active segment and rolls
# it on the first write after min(segment.ms, max.compaction.lag.ms): a record superseded by a
# tombstone becomes eligible at most an hour after the next write to its partition, and the cleaner
# (any dirty share is enough) then removes it; the tombstone itself, holding only the key, goes a
# day later (delete.retention.ms, time for readers to see it).
COMPACTION_LAG_MS = 3_600_000
TOMBSTONE_RETENTION_MS = 86_400_000


def eager_compaction(policy: str = "compact") -> dict[str, str]:
    """The topic configuration of a compacted topic erasure tombstones records on."""
    return {"cleanup.policy": policy, "segment.ms": str(COMPACTION_LAG_MS), "max.compaction.lag.ms": str(COMPACTION_LAG_MS),
            "min.cleanable.dirty.ratio": "0.01", "delete.retention.ms": str(TOMBSTONE_RETENTION_MS)}


def consent_topic_config() -> dict[str, str]:
    """`consent.changes` holds raw ids: compacted eagerly, so an erased person's record leaves within hours."""
    return eager_compaction()


def operations_topic_config() -> dict[str, str]:
    """`audit.operations`, the operators' trail and the privacy-budget ledger: kept for ever (a ledger
    retention has cut would give spent budget back; `backbone.audit.dp_ledger` refuses to read one)."""
    return {"retention.ms": "-1"}


def alerts_topic_config(settings: Settings | None = None) -> dict[str, str]:
    """`alerts.fraud`, keyed by alert id: compacted eagerly, so an erased person's alerts, tombstoned
    by `backbone erase`, leave within hours; with `settings`, kept `BACKBONE_ALERTS_RETENTION_DAYS`."""
    config = eager_compaction("compact,delete")
    if settings is not None:
        config["retention.ms"] = str(int(settings.alerts_retention_days * 86_400_000))
    return config


def subject_partition(subject_key: bytes, partitions: int) -> int:
    """The partition of a subject's records: the one librdkafka's `consistent_random` partitioner (the
    producers') picks for the subject key alone. Consent records, keyed `<subject key>:<purpose>`, are
    placed there explicitly, beside the subject's events; their tombstones must go there too, or
    compaction never meets them."""
    return zlib.crc32(subject_key) % partitions


def raw_topic(event_type: str) -> str:
    """`tax.income_declared` -> `raw.tax.income_declared` (the provider is the first part)."""
    return f"{RAW_PREFIX}{event_type}"


def raw_prefix(provider: str) -> str:
    """`tax` -> `raw.tax.`: every raw topic of one provider starts with it."""
    return f"{RAW_PREFIX}{provider}."


def shared_topic(recipient: str, event_type: str) -> str:
    """`fraud`, `tax.income_declared` -> `shared.fraud.tax.income_declared`."""
    return f"{shared_prefix(recipient)}{event_type}"


def shared_topic_config(settings: Settings, released_period_days: float) -> dict[str, str]:
    """Topic configuration of a shared topic. Its records carry the released `occurred_at` as their
    Kafka timestamp (never the time of writing), and Kafka counts time-based retention from record
    timestamps: so the topic keeps records `BACKBONE_SHARED_RETENTION_DAYS` plus the longest period
    its agreements generalise `occurred_at` to (a record stamped with the start of its year is up to
    a year older than its writing), and the broker must keep the producer's timestamps (CreateTime)."""
    days = settings.shared_retention_days + released_period_days
    return {"message.timestamp.type": "CreateTime", "retention.ms": str(int(days * 86_400_000))}


def shared_prefix(recipient: str) -> str:
    """`fraud` -> `shared.fraud.`: every topic released to one recipient starts with it."""
    return f"{SHARED_PREFIX}{recipient}."


def shared_pattern(recipient: str) -> str:
    """The subscription regex of every topic released to `recipient`."""
    return "^" + re.escape(shared_prefix(recipient)) + ".*"


def shared_event_type(recipient: str, topic: str) -> str | None:
    """`fraud`, `shared.fraud.tax.income_declared` -> `tax.income_declared` (None if not the recipient's)."""
    prefix = shared_prefix(recipient)
    return topic[len(prefix):] if topic.startswith(prefix) else None


def dlq_topic(stage: str) -> str:
    """`processor` -> `dlq.processor`."""
    return f"{DLQ_PREFIX}{stage}"


@dataclass(slots=True, frozen=True)
class TopicInfo:
    name: str
    partitions: int
    config: dict[str, str] = field(default_factory=dict)


def admin_client(settings: Settings) -> AdminClient:
    return AdminClient(settings.kafka_config())


def check_reachable(admin: AdminClient, settings: Settings) -> None:
    """Raise `KafkaUnavailableError` unless the cluster answers a metadata request in time."""
    try:
        admin.list_topics(timeout=settings.kafka_timeout_s)
    except KafkaException as exc:
        detail = exc.args[0].str() if exc.args and hasattr(exc.args[0], "str") else str(exc)
        raise kafka_unavailable(settings.kafka_bootstrap, settings.kafka_timeout_s, detail) from None


class Topics:
    """List, create, describe and delete topics, with errors a user can act on."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.admin = admin_client(settings)

    def _metadata(self):  # noqa: ANN202 - confluent_kafka ClusterMetadata
        try:
            return self.admin.list_topics(timeout=self.settings.kafka_timeout_s)
        except KafkaException:
            check_reachable(self.admin, self.settings)
            raise

    def list(self, include_internal: bool = False) -> list[TopicInfo]:
        topics = self._metadata().topics
        return sorted(
            (TopicInfo(name, len(meta.partitions)) for name, meta in topics.items()
             if include_internal or not name.startswith("__")),
            key=lambda t: t.name,
        )

    def exists(self, name: str) -> bool:
        return name in self._metadata().topics

    def create(
        self,
        name: str,
        partitions: int | None = None,
        retention_ms: int | None = None,
        cleanup_policy: str | None = None,
        config: dict[str, str] | None = None,
    ) -> TopicInfo:
        if partitions is not None and partitions < 1:
            raise TopicError(f"topic {name}: partitions must be at least 1")
        if cleanup_policy is not None and cleanup_policy not in {"delete", "compact", "compact,delete"}:
            raise TopicError(f"topic {name}: cleanup.policy must be delete, compact or compact,delete")
        check_reachable(self.admin, self.settings)
        conf = dict(config or {})
        if retention_ms is not None:
            conf["retention.ms"] = str(retention_ms)
        if cleanup_policy is not None:
            conf["cleanup.policy"] = cleanup_policy
        count = partitions or self.settings.kafka_partitions
        new = NewTopic(name, num_partitions=count, replication_factor=self.settings.kafka_replication_factor, config=conf)
        future = self.admin.create_topics([new], operation_timeout=self.settings.kafka_timeout_s)[name]
        try:
            future.result(timeout=self.settings.kafka_timeout_s)
        except KafkaException as exc:
            error: KafkaError = exc.args[0]
            if error.code() == KafkaError.TOPIC_ALREADY_EXISTS:
                raise TopicExists(f"topic {name} already exists; `backbone topics describe {name}` shows it") from None
            raise TopicError(f"topic {name} could not be created: {error.str()}") from None
        return TopicInfo(name, count, conf)

    def ensure(self, name: str, partitions: int | None = None, config: dict[str, str] | None = None) -> None:
        """Create `name` unless it exists (idempotent; used at pipeline start-up)."""
        try:
            self.create(name, partitions=partitions, config=config)
        except TopicExists:
            pass

    def reconcile(self, name: str, config: dict[str, str], partitions: int | None = None) -> list[str]:
        """Create `name` with `config`, or set on an existing topic the entries of `config` it holds
        otherwise; returns the keys changed. Raises `TopicError` naming the topic and the fix when
        the cluster refuses (e.g. no AlterConfigs right: topics an operator manages)."""
        try:
            self.create(name, partitions=partitions, config=config)
            return []
        except TopicExists:
            pass
        held = self.describe(name).config
        changed = sorted(key for key, value in config.items() if held.get(key) != value)
        if not changed:
            return []
        resource = ConfigResource(ConfigResource.Type.TOPIC, name, incremental_configs=[
            ConfigEntry(key, config[key], incremental_operation=AlterConfigOpType.SET) for key in changed])
        try:
            self.admin.incremental_alter_configs([resource])[resource].result(timeout=self.settings.kafka_timeout_s)
        except KafkaException as exc:
            wanted = " ".join(f"{key}={config[key]}" for key in changed)
            raise TopicError(f"topic {name}: could not set {wanted} ({exc.args[0].str()}); set it where the topic is"
                             f" managed (deploy/kubernetes/topics.yaml) or with kafka-configs --alter") from None
        return changed

    def describe(self, name: str) -> TopicInfo:
        meta = self._metadata().topics.get(name)
        if meta is None or meta.error is not None and meta.error.code() == KafkaError.UNKNOWN_TOPIC_OR_PART:
            raise TopicError(f"topic {name} does not exist; `backbone topics list` shows the topics")
        config: dict[str, str] = {}
        resource = ConfigResource(ConfigResource.Type.TOPIC, name)
        try:
            entries = self.admin.describe_configs([resource])[resource].result(timeout=self.settings.kafka_timeout_s)
            config = {key: entry.value for key, entry in entries.items() if entry.value is not None}
        except KafkaException:
            config = {}
        return TopicInfo(name, len(meta.partitions), config)

    def delete(self, name: str) -> None:
        if not self.exists(name):
            raise TopicError(f"topic {name} does not exist; `backbone topics list` shows the topics")
        future = self.admin.delete_topics([name], operation_timeout=self.settings.kafka_timeout_s)[name]
        try:
            future.result(timeout=self.settings.kafka_timeout_s)
        except KafkaException as exc:
            raise TopicError(f"topic {name} could not be deleted: {exc.args[0].str()}") from None
