"""Kafka ACLs per agency and per backbone component, planned from the catalog and the charter.

Pure: no broker is contacted here. `plan(...)` returns sorted `Grant`s; `Grant.binding()` turns one
into confluent-kafka's `AclBinding` for `AdminClient.create_acls`, and `strimzi_users(...)` into
Strimzi `KafkaUser` resources, so the CLI and the Kubernetes manifests come from the same plan.

Who may do what (principals are `User:<name>`):
- a provider writes only `raw.<provider>.*`; the consent publisher only `consent.changes`;
- a recipient reads only `shared.<recipient>.*`, with its own consumer groups `<recipient>-*`;
- the processor reads raw, consent and agreements, writes shared, audit and its DLQ;
- each recipient's sink reads its `shared.<recipient>.*` and writes `dlq.sink`;
- the schema registry reads and writes `_schemas`;
- the operator (`backbone agreements apply|suspend|...`) writes `agreements.changes`.
Creating a topic needs CREATE on it even when it exists (the broker checks before it looks), and
every component ensures the topics it writes at start-up: those CREATE grants are in the plan too.
READ and WRITE imply DESCRIBE in Kafka, so no DESCRIBE grant is listed.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

from backbone.catalog import CONSENT_EVENT
from backbone.topics import (
    AGREEMENTS_TOPIC,
    ALERTS_TOPIC,
    AUDIT_TOPIC,
    CONSENT_TOPIC,
    RAW_PREFIX,
    SCHEMAS_TOPIC,
    SHARED_PREFIX,
    dlq_topic,
    raw_prefix,
    shared_prefix,
)

if TYPE_CHECKING:
    from confluent_kafka.admin import AclBinding

    from backbone.policy.agreements import Charter

ResourceKind = Literal["topic", "group"]
Pattern = Literal["literal", "prefixed"]
Operation = Literal["read", "write", "create"]

PROCESSOR = "processor"
SCHEMA_REGISTRY = "schema-registry"  # not `registry`: that is the population registry agency
OPERATOR = "operator"
PROCESSOR_APP_ID = "backbone-processor"  # Faust's group and internal topics, and the data plane's group
SINK_GROUP_PREFIX = "backbone-sink-"
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
            {"read": AclOperation.READ, "write": AclOperation.WRITE, "create": AclOperation.CREATE}[self.operation],
            AclPermissionType.ALLOW,
        )


@dataclass(slots=True, frozen=True)
class Agencies:
    """Who takes part: providers writing raw topics, consent publishers, recipients of shared topics."""

    providers: tuple[str, ...]
    consent_publishers: tuple[str, ...]
    recipients: tuple[str, ...]

    @classmethod
    def from_charter(cls, charter: Charter) -> Agencies:
        """Providers from the catalog's event types, recipients from the agreements (any status)."""
        events = charter.catalog.events.values()
        return cls(
            providers=tuple(sorted({e.provider for e in events if e.event_type != CONSENT_EVENT}
                                   | {a.provider for a in charter.agreements})),
            consent_publishers=tuple(sorted({e.provider for e in events if e.event_type == CONSENT_EVENT})),
            recipients=tuple(sorted({a.recipient for a in charter.agreements})),
        )


def user(name: str) -> str:
    return f"User:{name}"


def sink_principal(recipient: str) -> str:
    return user(f"sink-{recipient}")


def _grants(principal: str, resource: ResourceKind, name: str, pattern: Pattern,
            operations: Iterable[Operation], why: str) -> list[Grant]:
    return [Grant(principal, resource, name, pattern, op, why) for op in operations]


def plan(agencies: Agencies, *, fraud_recipient: str = "fraud", database_prefix: str = "") -> list[Grant]:
    """Every grant the backbone needs, sorted; `database_prefix` is `BACKBONE_CLICKHOUSE_DATABASE_PREFIX`
    (it is part of the sinks' group ids)."""
    grants: list[Grant] = []
    for provider in agencies.providers:
        # The producer SDK ensures its topics before sending: CREATE on its own prefix only.
        grants += _grants(user(provider), "topic", raw_prefix(provider), "prefixed", ("write", "create"), "provider publishes its events")
    for publisher in agencies.consent_publishers:
        grants += _grants(user(publisher), "topic", CONSENT_TOPIC, "literal", ("write", "create"), "consent publisher")
    for recipient in agencies.recipients:
        grants += _grants(user(recipient), "topic", shared_prefix(recipient), "prefixed", ("read",), "recipient reads what it is entitled to")
        grants += _grants(user(recipient), "group", f"{recipient}-", "prefixed", ("read",), "recipient's own consumer groups")

    processor = user(PROCESSOR)
    grants += _grants(processor, "topic", RAW_PREFIX, "prefixed", ("read", "create"), "processor consumes every raw topic")
    for topic in (CONSENT_TOPIC, AGREEMENTS_TOPIC):
        grants += _grants(processor, "topic", topic, "literal", ("read", "create"), "every worker reads consent and agreements in full")
    grants += _grants(processor, "topic", SHARED_PREFIX, "prefixed", ("write", "create"), "processor releases permitted records")
    for topic in (AUDIT_TOPIC, PROCESSOR_DLQ):
        grants += _grants(processor, "topic", topic, "literal", ("write", "create"), "every decision is audited; bad input dead-lettered")
    grants += _grants(processor, "group", PROCESSOR_APP_ID, "prefixed", ("read",), "Faust's and the data plane's consumer groups")
    grants += _grants(processor, "topic", f"{PROCESSOR_APP_ID}-", "prefixed", ("read", "write", "create"), "Faust's internal topics")
    grants += _grants(processor, "group", READER_GROUP_PREFIX, "prefixed", ("read",), "compacted-topic readers")

    for recipient in agencies.recipients:
        sink = sink_principal(recipient)
        grants += _grants(sink, "topic", shared_prefix(recipient), "prefixed", ("read",), "sink lands the recipient's shared topics")
        grants += _grants(sink, "group", f"{SINK_GROUP_PREFIX}{database_prefix}{recipient}", "literal", ("read",), "sink's consumer group")
        grants += _grants(sink, "topic", SINK_DLQ, "literal", ("write", "create"), "rows ClickHouse rejects are dead-lettered")
        if recipient == fraud_recipient:
            grants += _grants(sink, "topic", ALERTS_TOPIC, "literal", ("write", "create"), "fraud rules publish alerts")
            # `backbone sink` lands the audit trail beside a recipient (it has no audit-only mode):
            # the deployments run it with the fraud recipient's sink.
            grants += _grants(sink, "topic", AUDIT_TOPIC, "literal", ("read",), "audit trail into the audit database")
            grants += _grants(sink, "group", f"{SINK_GROUP_PREFIX}{database_prefix}audit", "literal", ("read",), "audit sink's consumer group")

    registry = user(SCHEMA_REGISTRY)
    grants += _grants(registry, "topic", SCHEMAS_TOPIC, "literal", ("read", "write", "create"), "schemas live in the compacted _schemas topic")
    grants += _grants(registry, "group", REGISTRY_GROUP_PREFIX, "prefixed", ("read",), "registry's reader group")
    grants += _grants(user(OPERATOR), "topic", AGREEMENTS_TOPIC, "literal", ("write", "create"), "backbone agreements apply|suspend|revoke")
    return sorted(set(grants))


def plan_for_charter(charter: Charter, *, fraud_recipient: str = "fraud", database_prefix: str = "") -> list[Grant]:
    """`plan` for the agencies the catalog and the charter name."""
    return plan(Agencies.from_charter(charter), fraud_recipient=fraud_recipient, database_prefix=database_prefix)


def bindings(grants: Iterable[Grant]) -> list[AclBinding]:
    """Sorted `AclBinding`s for `AdminClient.create_acls`."""
    return sorted(grant.binding() for grant in grants)


_STRIMZI_OPERATIONS = {"read": "Read", "write": "Write", "create": "Create"}


def strimzi_users(grants: Iterable[Grant], cluster: str) -> list[dict[str, Any]]:
    """One Strimzi `KafkaUser` (SCRAM-SHA-512, simple authorization) per principal, ACLs from `grants`."""
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
            "apiVersion": "kafka.strimzi.io/v1beta2",
            "kind": "KafkaUser",
            "metadata": {"name": name, "labels": {"strimzi.io/cluster": cluster}},
            "spec": {"authentication": {"type": "scram-sha-512"}, "authorization": {"type": "simple", "acls": acls}},
        })
    return users
