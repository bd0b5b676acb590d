"""Kafka ACLs per agency and per backbone component, planned from the catalog and the charter.

Pure: no broker is contacted here. `plan(...)` returns sorted `Grant`s; `Grant.binding()` turns one
into confluent-kafka's `AclBinding` for `AdminClient.create_acls`, and `strimzi_users(...)` into
Strimzi `KafkaUser` resources, so the CLI and the Kubernetes manifests come from the same plan.

Who may do what (principals are `User:<name>`; tests/test_acls.py holds, per command, the Kafka
operations its code performs and checks that the plan allows each and grants nothing else):
- a provider writes only `raw.<provider>.*`; the consent publisher only `consent.changes`;
- a recipient reads only `shared.<recipient>.*`, with its own consumer groups `<recipient>.*`;
- the processor reads raw, consent and agreements, writes shared, audit and its DLQ;
- each recipient's sink reads its `shared.<recipient>.*` and writes `dlq.sink`; the fraud
  recipient's also publishes `alerts.fraud`;
- the audit sink (`sink-audit`, `backbone sink --audit-only`) reads the audit topics and writes `dlq.sink`;
- the schema registry reads and writes `_schemas`;
- the operator administers topics (`backbone topics`), reads and writes `agreements.changes`
  (`backbone agreements apply|suspend|revoke|activate`), records its actions on `audit.operations`
  and reads what `backbone status` shows (every topic's offsets, every group's lag, the DLQs).
Every agency prefix ends with a delimiter no agency name contains (`backbone.policy.names`), so one
agency's prefix never covers another's. Creating a topic needs CREATE on it even when it exists (the
broker checks before it looks), and every component ensures the topics it writes at start-up: those
CREATE grants are in the plan too. READ, WRITE and DELETE imply DESCRIBE in Kafka, so DESCRIBE is
granted only where nothing else is: a reader's group (librdkafka looks up its coordinator; the
reader assigns partitions and never joins or commits) and what `backbone status` lists. Idempotent
producers need no cluster grant: since Kafka 3.0, WRITE on a topic implies IDEMPOTENT_WRITE.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

from backbone.events.catalog import CONSENT_EVENT
from backbone.kafka.topics import (
    AGREEMENTS_TOPIC,
    ALERTS_TOPIC,
    AUDIT_TOPIC,
    CHECKPOINTS_TOPIC,
    CONSENT_TOPIC,
    DLQ_KEYS_TOPIC,
    DLQ_PREFIX,
    DP_PREFIX,
    ERASURE_REQUESTS_TOPIC,
    ERASURE_WORK_TOPIC,
    ERASURES_TOPIC,
    LINEAGE_TOPIC,
    OPERATIONS_CHECKPOINTS_TOPIC,
    OPERATIONS_TOPIC,
    QUALITY_BREACHES_TOPIC,
    QUALITY_MARKS_TOPIC,
    QUALITY_PENDING_TOPIC,
    QUALITY_TOPIC,
    RAW_PREFIX,
    SCHEMAS_TOPIC,
    SHARED_PREFIX,
    TIMESTAMPS_TOPIC,
    dlq_topic,
    dp_releases_topic,
    raw_prefix,
    shared_prefix,
)
from backbone.policy import names

if TYPE_CHECKING:
    from confluent_kafka.admin import AclBinding

    from backbone.policy.agreements import Charter

ResourceKind = Literal["topic", "group"]
Pattern = Literal["literal", "prefixed"]
Operation = Literal["read", "write", "create", "describe", "delete", "describe_configs"]

PROCESSOR = names.PROCESSOR
SCHEMA_REGISTRY = names.SCHEMA_REGISTRY
OPERATOR = names.OPERATOR
ANY = "*"  # a literal `*` names every topic or every group
PROCESSOR_APP_ID = "backbone-processor"  # Faust's consumer group
PROCESSOR_DATAPLANE_GROUP = f"{PROCESSOR_APP_ID}-dataplane"  # processors.app: the data plane's group
FAUST_LEADER_TOPIC = f"{PROCESSOR_APP_ID}-__assignor-__leader"  # Faust's only internal topic (no tables)
SINK_GROUP_PREFIX = "backbone-sink-"  # consumers.plans.group_id: `backbone-sink-<db prefix><sink>`
# consumers.plans: AUDIT_SINK, OPERATIONS_SINK, CHECKPOINTS_SINK, TIMESTAMPS_SINK
AUDIT_SINKS = ("audit", "audit-operations", "audit-checkpoints", "audit-timestamps")
AUDIT_SINK = f"{names.SINK_PREFIX}{names.AUDIT}"  # the audit sink's principal (`audit` is no agency's name)
REGISTRY_GROUP_PREFIX = "backbone-registry-"
READER_GROUP_PREFIX = "reader-"  # compacted-topic readers: partitions assigned, the group never joined
PROCESSOR_DLQ = dlq_topic("processor")
SINK_DLQ = dlq_topic("sink")


@dataclass(slots=True, frozen=True, order=True)
class Grant:
    """ALLOW `operation` on a topic or group (a literal name or a prefix) to `principal`, from any host."""

    principal: str
    resource: ResourceKind
    name: str
    pattern: Pattern
    operation: Operation
    why: str = field(default="", compare=False)

    @property
    def key(self) -> tuple[str, str, str, str, str]:
        return (self.principal, self.resource, self.name, self.pattern, self.operation)

    def binding(self) -> AclBinding:
        """The `AclBinding` for `AdminClient.create_acls`."""
        from confluent_kafka.admin import AclBinding, AclOperation, AclPermissionType, ResourcePatternType, ResourceType

        return AclBinding(
            ResourceType.TOPIC if self.resource == "topic" else ResourceType.GROUP,
            self.name,
            ResourcePatternType.PREFIXED if self.pattern == "prefixed" else ResourcePatternType.LITERAL,
            self.principal,
            "*",
            getattr(AclOperation, self.operation.upper()),
            AclPermissionType.ALLOW,
        )


@dataclass(slots=True, frozen=True)
class Agencies:
    """Who takes part: providers writing raw topics, consent publishers, recipients of shared topics."""

    providers: tuple[str, ...]
    consent_publishers: tuple[str, ...]
    recipients: tuple[str, ...]
    # Recipients of differentially private releases (`dp_release` budgets): each reads its releases topic.
    dp_recipients: tuple[str, ...] = ()

    @classmethod
    def from_charter(cls, charter: Charter) -> Agencies:
        """Providers from the catalog's event types, recipients from the agreements (any status)."""
        events = charter.catalog.events.values()
        return cls(
            providers=tuple(sorted({e.provider for e in events if e.event_type != CONSENT_EVENT}
                                   | {a.provider for a in charter.agreements})),
            consent_publishers=tuple(sorted({e.provider for e in events if e.event_type == CONSENT_EVENT})),
            recipients=tuple(sorted({a.recipient for a in charter.agreements})),
            dp_recipients=tuple(sorted({b.recipient for a in charter.agreements if a.dp_release for b in a.dp_release.budgets})),
        )


def user(name: str) -> str:
    return f"User:{name}"


def sink_principal(recipient: str) -> str:
    return user(f"{names.SINK_PREFIX}{recipient}")


def _grants(principal: str, resource: ResourceKind, name: str, pattern: Pattern,
            operations: Iterable[Operation], why: str) -> list[Grant]:
    return [Grant(principal, resource, name, pattern, op, why) for op in operations]


def _agencies(agencies: Agencies) -> list[Grant]:
    grants: list[Grant] = []
    for provider in agencies.providers:
        # The producer SDK ensures its topics before sending: CREATE on its own prefix only.
        grants += _grants(user(provider), "topic", raw_prefix(provider), "prefixed", ("write", "create"), "provider publishes its events")
        grants += _grants(user(provider), "topic", QUALITY_BREACHES_TOPIC, "literal", ("read",),
                          "provider reads the quality breaches of its streams (counts and scores, no personal data)")
    for publisher in agencies.consent_publishers:
        grants += _grants(user(publisher), "topic", CONSENT_TOPIC, "literal", ("write", "create"), "consent publisher")
    for recipient in agencies.recipients:
        grants += _grants(user(recipient), "topic", shared_prefix(recipient), "prefixed", ("read",), "recipient reads what it is entitled to")
        grants += _grants(user(recipient), "group", names.group_prefix(recipient), "prefixed", ("read",), "recipient's own consumer groups")
    for recipient in agencies.dp_recipients:
        grants += _grants(user(recipient), "topic", dp_releases_topic(recipient), "literal", ("read",),
                          "recipient reads its differentially private releases")
    return grants


def _processor() -> list[Grant]:
    processor = user(PROCESSOR)
    return [
        *_grants(processor, "topic", RAW_PREFIX, "prefixed", ("read", "create"), "data plane reads every raw topic; start-up creates the catalog's"),
        *_grants(processor, "topic", CONSENT_TOPIC, "literal", ("read", "create"), "every worker reads consent changes in full"),
        *_grants(processor, "topic", AGREEMENTS_TOPIC, "literal", ("read", "create"), "every worker reads agreement changes in full"),
        *_grants(processor, "topic", SHARED_PREFIX, "prefixed", ("write", "create"), "processor releases permitted records"),
        *_grants(processor, "topic", AUDIT_TOPIC, "literal", ("write", "create"), "every decision is audited"),
        *_grants(processor, "topic", CHECKPOINTS_TOPIC, "literal", ("write", "create"), "each batch's audit records are sealed by a signed checkpoint"),
        *_grants(processor, "topic", QUALITY_TOPIC, "literal", ("write", "create"), "closed data-quality windows (counts and sketches)"),
        *_grants(processor, "topic", QUALITY_BREACHES_TOPIC, "literal", ("write", "create"), "a provider's quality breaches"),
        *_grants(processor, "topic", QUALITY_MARKS_TOPIC, "literal", ("read", "write", "create"),
                 "consistency marks (pseudonym and month) every worker publishes and reads in full at start"),
        *_grants(processor, "topic", QUALITY_PENDING_TOPIC, "literal", ("read", "write", "create"),
                 "records of agreements that require quality wait there for their own window's verdict (processors only)"),
        *_grants(processor, "topic", TIMESTAMPS_TOPIC, "literal", ("write", "create"),
                 "the newest checkpoint is timestamped by a TSA when one is configured"),
        *_grants(processor, "topic", PROCESSOR_DLQ, "literal", ("write", "create"), "undecidable input is dead-lettered"),
        *_grants(processor, "group", PROCESSOR_APP_ID, "literal", ("read",), "Faust's consumer group"),
        *_grants(processor, "group", PROCESSOR_DATAPLANE_GROUP, "literal", ("read",), "the data plane's consumer group"),
        *_grants(processor, "topic", FAUST_LEADER_TOPIC, "literal", ("read", "create"), "Faust's leader-assignor topic"),
        *_grants(processor, "group", READER_GROUP_PREFIX, "prefixed", ("describe",), "state readers (consent, agreements, erasures, the operations head) look up their group"),
        *_grants(processor, "topic", ERASURES_TOPIC, "literal", ("read", "write", "create"),
                 "every worker reads the erasures in full; a worker answering an erasure request publishes it"),
        *_grants(processor, "topic", ERASURE_REQUESTS_TOPIC, "literal", ("read", "create"),
                 "every worker answers erasure requests (only processors read the subject's id there)"),
        *_grants(processor, "topic", ERASURE_WORK_TOPIC, "literal", ("write", "create"), "the answer: tokens and rows to delete"),
        *_grants(processor, "topic", OPERATIONS_CHECKPOINTS_TOPIC, "literal", ("read", "create"),
                 "every worker anchors the operators' chain head in its checkpoints"),
        *_grants(processor, "topic", LINEAGE_TOPIC, "literal", ("write", "create"),
                 "OpenLineage run events of the agreements it enforces (BACKBONE_LINEAGE_TRANSPORT=kafka; another BACKBONE_LINEAGE_TOPIC needs its own grant)"),
        *_grants(processor, "topic", DLQ_KEYS_TOPIC, "literal", ("read", "write", "create"), "dead letters are sealed under per-subject keys kept there"),
    ]


def _sinks(agencies: Agencies, fraud_recipient: str, database_prefix: str) -> list[Grant]:
    grants: list[Grant] = []
    for recipient in agencies.recipients:
        sink = sink_principal(recipient)
        grants += _grants(sink, "topic", shared_prefix(recipient), "prefixed", ("read",), "sink lands the recipient's shared topics")
        grants += _grants(sink, "group", f"{SINK_GROUP_PREFIX}{database_prefix}{recipient}", "literal", ("read",), "sink's consumer group")
        grants += _grants(sink, "topic", SINK_DLQ, "literal", ("write", "create"), "rows ClickHouse rejects are dead-lettered")
        if recipient == fraud_recipient:
            grants += _grants(sink, "topic", ALERTS_TOPIC, "literal", ("write", "create"), "fraud rules publish alerts")
    # The audit sink (`backbone sink --audit-only`): a workload and user of its own, apart from every recipient's.
    audit = user(AUDIT_SINK)
    for topic, name in zip((AUDIT_TOPIC, OPERATIONS_TOPIC, CHECKPOINTS_TOPIC, TIMESTAMPS_TOPIC), AUDIT_SINKS, strict=True):
        grants += _grants(audit, "topic", topic, "literal", ("read",), "audit sink lands it in the audit database")
        grants += _grants(audit, "group", f"{SINK_GROUP_PREFIX}{database_prefix}{name}", "literal", ("read",), "audit sink's consumer group")
    grants += _grants(audit, "topic", OPERATIONS_CHECKPOINTS_TOPIC, "literal", ("read",),
                      "audit sink lands operator actions' checkpoints beside the processor's")
    grants += _grants(audit, "topic", SINK_DLQ, "literal", ("write", "create"), "rows ClickHouse rejects are dead-lettered")
    grants += _grants(audit, "topic", QUALITY_TOPIC, "literal", ("read",), "audit sink lands the quality windows beside the trail")
    grants += _grants(audit, "group", f"{SINK_GROUP_PREFIX}{database_prefix}quality", "literal", ("read",), "quality sink's consumer group")
    return grants


def _registry() -> list[Grant]:
    registry = user(SCHEMA_REGISTRY)
    return [
        *_grants(registry, "topic", SCHEMAS_TOPIC, "literal", ("read", "write", "create"), "schemas live in the compacted _schemas topic"),
        *_grants(registry, "group", REGISTRY_GROUP_PREFIX, "prefixed", ("describe",), "registry's reader looks up its group"),
    ]


def _operator() -> list[Grant]:
    operator = user(OPERATOR)
    return [
        *_grants(operator, "topic", ANY, "literal", ("describe", "create", "delete", "describe_configs"),
                 "backbone topics list|create|describe|delete; status lists every topic's offsets"),
        *_grants(operator, "group", ANY, "literal", ("describe",), "backbone status lists every group's lag"),
        *_grants(operator, "topic", AGREEMENTS_TOPIC, "literal", ("read", "write"), "backbone agreements apply|suspend|revoke|activate"),
        *_grants(operator, "topic", OPERATIONS_TOPIC, "literal", ("write",), "operator actions are audited"),
        *_grants(operator, "topic", OPERATIONS_CHECKPOINTS_TOPIC, "literal", ("read", "write"),
                 "each operator action is sealed by the next checkpoint of the operations chain (its head is read first)"),
        *_grants(operator, "topic", DLQ_PREFIX, "prefixed", ("read",), "backbone status counts dead letters; dlq list|show|replay read them"),
        *_grants(operator, "topic", QUALITY_PENDING_TOPIC, "literal", ("read",),
                 "backbone quality pending lists the windows whose records wait or were left held (keys and headers only)"),
        # DESIGN: the operator replays dead letters after fixing their cause (each replay is audited)
        *_grants(operator, "topic", RAW_PREFIX, "prefixed", ("write",), "backbone dlq replay --stage processor writes back to raw topics"),
        *_grants(operator, "topic", SHARED_PREFIX, "prefixed", ("write",), "backbone dlq replay --stage sink writes back to shared topics"),
        # backbone erase: publishes the erasure, withdraws the person's consents, destroys their DLQ keys and alerts
        *_grants(operator, "topic", ERASURE_REQUESTS_TOPIC, "literal", ("write",), "backbone erase asks the processors"),
        *_grants(operator, "topic", ERASURE_WORK_TOPIC, "literal", ("read",), "backbone erase reads the processors' answer"),
        *_grants(operator, "topic", CONSENT_TOPIC, "literal", ("write",), "backbone erase tombstones the person's consent records"),
        *_grants(operator, "topic", DLQ_KEYS_TOPIC, "literal", ("write",),
                 "backbone erase destroys the person's DLQ keys; erase and dlq replay destroy expired ones"),
        *_grants(operator, "topic", ALERTS_TOPIC, "literal", ("write",), "backbone erase tombstones the person's fraud alerts"),
        # backbone dp release|budget: the privacy-budget ledger is the operations chain, read in full before a spend
        *_grants(operator, "topic", OPERATIONS_TOPIC, "literal", ("read",), "backbone dp release|budget read the budget ledger"),
        *_grants(operator, "topic", DP_PREFIX, "prefixed", ("write",), "backbone dp release publishes each release on dp.<recipient>.releases"),
    ]


def plan(agencies: Agencies, *, fraud_recipient: str = "fraud", database_prefix: str = "") -> list[Grant]:
    """Every grant the backbone needs, sorted; `database_prefix` is `BACKBONE_CLICKHOUSE_DATABASE_PREFIX`
    (it is part of the sinks' group ids)."""
    grants = [*_agencies(agencies), *_processor(), *_sinks(agencies, fraud_recipient, database_prefix), *_registry(), *_operator()]
    return sorted(set(grants))


def plan_for_charter(charter: Charter, *, fraud_recipient: str = "fraud", database_prefix: str = "") -> list[Grant]:
    """`plan` for the agencies the catalog and the charter name."""
    return plan(Agencies.from_charter(charter), fraud_recipient=fraud_recipient, database_prefix=database_prefix)


def bindings(grants: Iterable[Grant]) -> list[AclBinding]:
    """Sorted `AclBinding`s for `AdminClient.create_acls`."""
    return sorted(grant.binding() for grant in grants)


_STRIMZI_OPERATIONS = {"read": "Read", "write": "Write", "create": "Create", "describe": "Describe", "delete": "Delete",
                       "describe_configs": "DescribeConfigs"}


def strimzi_users(grants: Iterable[Grant], cluster: str) -> list[dict[str, Any]]:
    """One Strimzi `KafkaUser` (`kafka.strimzi.io/v1`: Strimzi 0.49+; SCRAM-SHA-512, simple authorization)
    per principal, ACLs from `grants`."""
    by_user: dict[str, dict[tuple[str, str, str], list[str]]] = {}
    for grant in sorted(grants):
        name = grant.principal.removeprefix("User:")
        resources = by_user.setdefault(name, {})
        resources.setdefault((grant.resource, grant.name, grant.pattern), []).append(_STRIMZI_OPERATIONS[grant.operation])
    users = []
    for name, resources in sorted(by_user.items()):
        acls = [
            {
                "resource": {"type": kind, "name": resource, "patternType": "prefix" if pattern == "prefixed" else "literal"},
                "operations": sorted(operations),
                "host": "*",
            }
            for (kind, resource, pattern), operations in resources.items()
        ]
        users.append({
            "apiVersion": "kafka.strimzi.io/v1",
            "kind": "KafkaUser",
            "metadata": {"name": name, "labels": {"strimzi.io/cluster": cluster}},
            "spec": {"authentication": {"type": "scram-sha-512"}, "authorization": {"type": "simple", "acls": acls}},
        })
    return users
