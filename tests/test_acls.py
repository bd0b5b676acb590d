"""ACL plan: exactly the bindings each agency and backbone component needs; apply on a real broker."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
import yaml
from confluent_kafka.admin import AclBinding, AclOperation, AclPermissionType, ResourcePatternType, ResourceType

from backbone.access.acls import Agencies, Grant, bindings, plan, plan_for_charter, strimzi_users
from backbone.events.catalog import load_catalog
from backbone.policy.agreements import load_agreements
from backbone.settings import PROJECT_ROOT
from tests.cli import run_backbone

DEPLOY = PROJECT_ROOT / "deploy"

# (principal, resource, name, pattern, operation) for the demo's catalog and charter.
EXPECTED = {
    ("User:processor", "topic", "quality.breaches", "literal", "create"),
    ("User:processor", "topic", "quality.breaches", "literal", "write"),
    *(("User:" + provider, "topic", "quality.breaches", "literal", "read") for provider in ("police", "registry", "tax", "welfare")),
    ("User:processor", "topic", "quality.marks", "literal", "create"),
    ("User:processor", "topic", "quality.marks", "literal", "read"),
    ("User:processor", "topic", "quality.marks", "literal", "write"),
    ("User:processor", "topic", "quality.pending", "literal", "create"),
    ("User:processor", "topic", "quality.pending", "literal", "read"),
    ("User:processor", "topic", "quality.pending", "literal", "write"),
    ("User:operator", "topic", "quality.pending", "literal", "read"),
    ("User:processor", "topic", "quality.windows", "literal", "create"),
    ("User:processor", "topic", "quality.windows", "literal", "write"),
    ("User:sink-audit", "topic", "quality.windows", "literal", "read"),
    ("User:sink-audit", "group", "backbone-sink-quality", "literal", "read"),
    ("User:consent", "topic", "consent.changes", "literal", "create"),
    ("User:consent", "topic", "consent.changes", "literal", "write"),
    ("User:fraud", "group", "fraud.", "prefixed", "read"),
    ("User:fraud", "topic", "shared.fraud.", "prefixed", "read"),
    ("User:operator", "group", "*", "literal", "describe"),
    ("User:operator", "topic", "*", "literal", "create"),
    ("User:operator", "topic", "*", "literal", "delete"),
    ("User:operator", "topic", "*", "literal", "describe"),
    ("User:operator", "topic", "*", "literal", "describe_configs"),
    ("User:operator", "topic", "agreements.changes", "literal", "read"),
    ("User:operator", "topic", "agreements.changes", "literal", "write"),
    ("User:operator", "topic", "audit.operations", "literal", "write"),
    ("User:operator", "topic", "audit.operations.checkpoints", "literal", "read"),
    ("User:operator", "topic", "audit.operations.checkpoints", "literal", "write"),
    ("User:operator", "topic", "dlq.", "prefixed", "read"),
    ("User:police", "topic", "raw.police.", "prefixed", "create"),
    ("User:police", "topic", "raw.police.", "prefixed", "write"),
    ("User:processor", "group", "backbone-processor", "literal", "read"),
    ("User:processor", "group", "backbone-processor-dataplane", "literal", "read"),
    ("User:processor", "group", "reader-", "prefixed", "describe"),
    ("User:processor", "topic", "agreements.changes", "literal", "create"),
    ("User:processor", "topic", "audit.operations.checkpoints", "literal", "create"),
    ("User:processor", "topic", "audit.operations.checkpoints", "literal", "read"),
    ("User:processor", "topic", "agreements.changes", "literal", "read"),
    ("User:processor", "topic", "audit.decisions", "literal", "create"),
    ("User:processor", "topic", "audit.decisions", "literal", "write"),
    ("User:processor", "topic", "backbone-processor-__assignor-__leader", "literal", "create"),
    ("User:processor", "topic", "backbone-processor-__assignor-__leader", "literal", "read"),
    ("User:processor", "topic", "consent.changes", "literal", "create"),
    ("User:processor", "topic", "consent.changes", "literal", "read"),
    ("User:processor", "topic", "dlq.processor", "literal", "create"),
    ("User:processor", "topic", "dlq.processor", "literal", "write"),
    ("User:processor", "topic", "raw.", "prefixed", "create"),
    ("User:processor", "topic", "raw.", "prefixed", "read"),
    ("User:processor", "topic", "shared.", "prefixed", "create"),
    ("User:processor", "topic", "shared.", "prefixed", "write"),
    ("User:registry", "topic", "raw.registry.", "prefixed", "create"),
    ("User:registry", "topic", "raw.registry.", "prefixed", "write"),
    ("User:research", "group", "research.", "prefixed", "read"),
    ("User:research", "topic", "shared.research.", "prefixed", "read"),
    ("User:schema-registry", "group", "backbone-registry-", "prefixed", "describe"),
    ("User:processor", "topic", "audit.checkpoints", "literal", "create"),
    ("User:processor", "topic", "audit.checkpoints", "literal", "write"),
    ("User:sink-audit", "group", "backbone-sink-audit-checkpoints", "literal", "read"),
    ("User:sink-audit", "topic", "audit.checkpoints", "literal", "read"),
    ("User:processor", "topic", "audit.timestamps", "literal", "create"),
    ("User:processor", "topic", "audit.timestamps", "literal", "write"),
    ("User:sink-audit", "group", "backbone-sink-audit-timestamps", "literal", "read"),
    ("User:sink-audit", "topic", "audit.timestamps", "literal", "read"),
    ("User:operator", "topic", "consent.changes", "literal", "write"),
    ("User:operator", "topic", "dlq.keys", "literal", "write"),
    ("User:operator", "topic", "alerts.fraud", "literal", "write"),
    ("User:operator", "topic", "erasure.requests", "literal", "write"),
    ("User:operator", "topic", "erasure.work", "literal", "read"),
    ("User:processor", "topic", "dlq.keys", "literal", "create"),
    ("User:processor", "topic", "dlq.keys", "literal", "read"),
    ("User:processor", "topic", "dlq.keys", "literal", "write"),
    ("User:operator", "topic", "audit.operations", "literal", "read"),
    ("User:operator", "topic", "dp.", "prefixed", "write"),
    ("User:statistics", "topic", "dp.statistics.releases", "literal", "read"),
    ("User:processor", "topic", "lineage.openlineage", "literal", "create"),
    ("User:processor", "topic", "lineage.openlineage", "literal", "write"),
    ("User:processor", "topic", "erasures", "literal", "create"),
    ("User:processor", "topic", "erasures", "literal", "read"),
    ("User:processor", "topic", "erasures", "literal", "write"),
    ("User:processor", "topic", "erasure.requests", "literal", "create"),
    ("User:processor", "topic", "erasure.requests", "literal", "read"),
    ("User:processor", "topic", "erasure.work", "literal", "create"),
    ("User:processor", "topic", "erasure.work", "literal", "write"),
    ("User:operator", "topic", "raw.", "prefixed", "write"),
    ("User:operator", "topic", "shared.", "prefixed", "write"),
    ("User:schema-registry", "topic", "_schemas", "literal", "create"),
    ("User:schema-registry", "topic", "_schemas", "literal", "read"),
    ("User:schema-registry", "topic", "_schemas", "literal", "write"),
    ("User:sink-audit", "group", "backbone-sink-audit", "literal", "read"),
    ("User:sink-audit", "group", "backbone-sink-audit-operations", "literal", "read"),
    ("User:sink-fraud", "group", "backbone-sink-fraud", "literal", "read"),
    ("User:sink-fraud", "topic", "alerts.fraud", "literal", "create"),
    ("User:sink-fraud", "topic", "alerts.fraud", "literal", "write"),
    ("User:sink-audit", "topic", "audit.decisions", "literal", "read"),
    ("User:sink-audit", "topic", "audit.operations", "literal", "read"),
    ("User:sink-audit", "topic", "audit.operations.checkpoints", "literal", "read"),
    ("User:sink-audit", "topic", "dlq.sink", "literal", "create"),
    ("User:sink-audit", "topic", "dlq.sink", "literal", "write"),
    ("User:sink-fraud", "topic", "dlq.sink", "literal", "create"),
    ("User:sink-fraud", "topic", "dlq.sink", "literal", "write"),
    ("User:sink-fraud", "topic", "shared.fraud.", "prefixed", "read"),
    ("User:sink-research", "group", "backbone-sink-research", "literal", "read"),
    ("User:sink-research", "topic", "dlq.sink", "literal", "create"),
    ("User:sink-research", "topic", "dlq.sink", "literal", "write"),
    ("User:sink-research", "topic", "shared.research.", "prefixed", "read"),
    ("User:sink-statistics", "group", "backbone-sink-statistics", "literal", "read"),
    ("User:sink-statistics", "topic", "dlq.sink", "literal", "create"),
    ("User:sink-statistics", "topic", "dlq.sink", "literal", "write"),
    ("User:sink-statistics", "topic", "shared.statistics.", "prefixed", "read"),
    ("User:sink-welfare", "group", "backbone-sink-welfare", "literal", "read"),
    ("User:sink-welfare", "topic", "dlq.sink", "literal", "create"),
    ("User:sink-welfare", "topic", "dlq.sink", "literal", "write"),
    ("User:sink-welfare", "topic", "shared.welfare.", "prefixed", "read"),
    ("User:statistics", "group", "statistics.", "prefixed", "read"),
    ("User:statistics", "topic", "shared.statistics.", "prefixed", "read"),
    ("User:tax", "topic", "raw.tax.", "prefixed", "create"),
    ("User:tax", "topic", "raw.tax.", "prefixed", "write"),
    ("User:welfare", "group", "welfare.", "prefixed", "read"),
    ("User:welfare", "topic", "raw.welfare.", "prefixed", "create"),
    ("User:welfare", "topic", "raw.welfare.", "prefixed", "write"),
    ("User:welfare", "topic", "shared.welfare.", "prefixed", "read"),
}


@pytest.fixture(scope="module")
def charter():  # noqa: ANN201 - backbone.policy.agreements.Charter
    return load_agreements(PROJECT_ROOT / "agreements", load_catalog(PROJECT_ROOT / "schemas"))


def test_agencies_come_from_the_catalog_and_the_charter(charter) -> None:  # noqa: ANN001
    agencies = Agencies.from_charter(charter)
    assert agencies.providers == ("police", "registry", "tax", "welfare")
    assert agencies.consent_publishers == ("consent",)
    assert agencies.recipients == ("fraud", "research", "statistics", "welfare")


def test_plan_for_the_demo_is_exactly_the_expected_bindings(charter) -> None:  # noqa: ANN001
    grants = plan_for_charter(charter)
    assert grants == sorted(grants)
    assert len({g.key for g in grants}) == len(grants)
    assert {g.key for g in grants} == EXPECTED


def test_providers_write_only_their_own_raw_prefix(charter) -> None:  # noqa: ANN001
    for grant in plan_for_charter(charter):
        if grant.principal == "User:tax" and grant.name != "quality.breaches":  # and reads its quality breaches
            assert grant.name == "raw.tax." and grant.pattern == "prefixed" and grant.operation != "read"


def test_recipients_read_only_their_own_shared_prefix_and_groups(charter) -> None:  # noqa: ANN001
    reads = {(g.resource, g.name) for g in plan_for_charter(charter) if g.principal == "User:fraud"}
    assert reads == {("topic", "shared.fraud."), ("group", "fraud.")}


def test_no_one_but_the_processor_reads_raw_topics(charter) -> None:  # noqa: ANN001
    readers = {g.principal for g in plan_for_charter(charter) if g.operation == "read" and g.name.startswith("raw.")}
    assert readers == {"User:processor"}


def test_sink_groups_are_the_sinks_own_and_follow_the_clickhouse_database_prefix() -> None:
    from backbone.settings import load_settings
    from consumers.plans import AUDIT_SINK, CHECKPOINTS_SINK, OPERATIONS_SINK, TIMESTAMPS_SINK, group_id

    grants = plan(Agencies(("tax",), (), ("fraud",)), database_prefix="t1_")
    settings = load_settings(clickhouse_database_prefix="t1_")
    fraud = {g.name for g in grants if g.principal == "User:sink-fraud" and g.resource == "group"}
    assert fraud == {group_id(settings, "fraud")} == {"backbone-sink-t1_fraud"}
    # the audit sink is a workload and Kafka user of its own: no recipient's sink reads the audit trail
    audit = {g.name for g in grants if g.principal == "User:sink-audit" and g.resource == "group"}
    assert audit == {group_id(settings, name) for name in (AUDIT_SINK, OPERATIONS_SINK, CHECKPOINTS_SINK, TIMESTAMPS_SINK, "quality")}
    assert audit == {"backbone-sink-t1_audit", "backbone-sink-t1_audit-operations", "backbone-sink-t1_audit-checkpoints",
                     "backbone-sink-t1_audit-timestamps", "backbone-sink-t1_quality"}
    assert not [g for g in grants if g.name.startswith("audit.") and g.principal.startswith("User:sink-") and g.principal != "User:sink-audit"]


def test_grants_convert_to_allow_bindings_from_any_host() -> None:
    grant = Grant("User:tax", "topic", "raw.tax.", "prefixed", "write")
    assert grant.binding() == AclBinding(ResourceType.TOPIC, "raw.tax.", ResourcePatternType.PREFIXED, "User:tax", "*",
                                         AclOperation.WRITE, AclPermissionType.ALLOW)
    group = Grant("User:fraud", "group", "fraud.", "prefixed", "read").binding()
    assert (group.restype, group.operation) == (ResourceType.GROUP, AclOperation.READ)
    assert Grant("User:operator", "topic", "*", "literal", "describe_configs").binding().operation == AclOperation.DESCRIBE_CONFIGS


def test_bindings_are_sorted_and_one_per_grant(charter) -> None:  # noqa: ANN001
    result = bindings(plan_for_charter(charter))
    assert len(result) == len(EXPECTED) and result == sorted(result)
    assert all(b.permission_type == AclPermissionType.ALLOW and b.host == "*" for b in result)


def test_kubernetes_kafka_users_are_the_plan(charter) -> None:  # noqa: ANN001
    manifest = [doc for doc in yaml.safe_load_all((DEPLOY / "kubernetes" / "kafka-users.yaml").read_text()) if doc]
    assert manifest == strimzi_users(plan_for_charter(charter), "backbone")


def test_kafka_users_carry_every_acl_of_the_plan(charter) -> None:  # noqa: ANN001
    pattern = {"prefix": "prefixed", "literal": "literal"}
    operations = {"Read": "read", "Write": "write", "Create": "create", "Describe": "describe", "Delete": "delete",
                  "DescribeConfigs": "describe_configs"}
    found = set()
    for user in strimzi_users(plan_for_charter(charter), "backbone"):
        for acl in user["spec"]["authorization"]["acls"]:
            resource = acl["resource"]
            for operation in acl["operations"]:
                found.add((f"User:{user['metadata']['name']}", resource["type"], resource["name"],
                           pattern[resource["patternType"]], operations[operation]))
    assert found == EXPECTED


def _backbone(*args: str, env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    # A child process: a broker's malformed ACL answer must not take the test session down with it.
    return run_backbone(*args, env=env, cwd=cwd)


@pytest.mark.integration
def test_acls_apply_on_the_session_broker_succeeds_or_says_why_in_one_line(kafka_bootstrap: str, tmp_path: Path) -> None:
    env = {**os.environ, "BACKBONE_KAFKA_BOOTSTRAP": kafka_bootstrap, "BACKBONE_KAFKA_TIMEOUT_S": "10",
           "BACKBONE_DATA_DIR": str(tmp_path), "COLUMNS": "500"}
    result = _backbone("acls", "apply", env=env, cwd=tmp_path)
    if result.returncode == 0:  # a Kafka with an authorizer and a super user
        assert f"{len(EXPECTED)} ACL bindings in place" in result.stdout
        return
    assert result.returncode == 1, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: Kafka at ")
    # The embedded Tansu broker has no authorizer; a Kafka without one says SECURITY_DISABLED.
    assert "does not support ACLs" in lines[0] or "has no authorizer" in lines[0] or "may not alter" in lines[0]
    assert "Traceback" not in result.stderr


def test_acls_plan_prints_every_binding(tmp_path: Path) -> None:
    result = _backbone("acls", "plan", env={**os.environ, "COLUMNS": "300"}, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert f"{len(EXPECTED)} bindings" in result.stdout
    assert "User:sink-fraud" in result.stdout and "shared.fraud." in result.stdout


# --- every binding justified by a command -------------------------------------------------------
# What each command's code does on Kafka, for the demo's charter: (resource, name, operation). A name
# ending in `*` is any name with that beginning (a group with a random suffix, any raw topic a regex
# subscription finds); `*` alone is any name the operator gives. Registry and ClickHouse calls are not
# Kafka operations. READ/WRITE/DELETE imply DESCRIBE, as Kafka's authorizer has it.
Need = tuple[str, str, str]
IMPLIED = {"describe": {"describe", "read", "write", "delete"}}


def commands(charter) -> dict[str, tuple[str, set[Need]]]:  # noqa: ANN001, C901 - a table, one entry per command
    from backbone.kafka import dlq
    from backbone.kafka.topics import dlq_topic, raw_topic, shared_topic
    from backbone.settings import load_settings
    from consumers.plans import AUDIT_SINK, OPERATIONS_SINK, TIMESTAMPS_SINK, group_id
    from processors.app import APP_ID

    settings = load_settings(clickhouse_database_prefix="")
    events = charter.catalog.events.values()
    raw: dict[str, set[str]] = {}
    for e in events:
        raw.setdefault(e.provider, set()).add(raw_topic(e.event_type))
    shared = {shared_topic(a.recipient, t) for a in charter.agreements for t in a.event_types}
    recipients = sorted({a.recipient for a in charter.agreements})
    readers = ("group", "reader-*", "describe")  # backbone/kafka/compacted.py: group `reader-<uuid>`, assigned, never joined
    table: dict[str, tuple[str, set[Need]]] = {}
    for provider, topics in raw.items():
        if provider == "consent":  # producers/sdk.py ConsentPublisher: ensure, then produce
            table["backbone consent grant|withdraw"] = ("User:consent", {("topic", "consent.changes", "create"), ("topic", "consent.changes", "write")})
        else:  # producers/sdk.py AgencyProducer: ensures each of its event topics, then produces (idempotent)
            table[f"backbone produce --agency {provider}"] = (f"User:{provider}", {("topic", t, op) for t in topics for op in ("create", "write")})
            # the provider's own reader of quality.breaches (issue 32), assigned like the state readers
            table[f"{provider}'s quality breach reader"] = (f"User:{provider}", {("topic", "quality.breaches", "read")})
    for recipient in recipients:  # outside the backbone: DESIGN's trust boundaries
        table[f"{recipient}'s own consumers"] = (f"User:{recipient}", {("topic", f"shared.{recipient}.*", "read"), ("group", f"{recipient}.*", "read")})
    # processors/app.py Enforcement.ensure_topics, the two CompactedTopicReaders, DataPlane (subscribes
    # ^raw\..*, commits, produces), and Faust (group = app id, declares and consumes its leader topic)
    processor = {("topic", t, "create") for t in ["consent.changes", "agreements.changes", "audit.decisions", "dlq.processor",
                                                  *(raw_topic(t) for t in charter.catalog.raw_event_types), *shared]}
    processor |= {("topic", "consent.changes", "read"), ("topic", "agreements.changes", "read"), readers,
                  ("topic", "raw.*", "read"), ("group", f"{APP_ID}-dataplane", "read"),
                  *(("topic", t, "write") for t in [*shared, "audit.decisions", "dlq.processor"]),
                  ("group", APP_ID, "read"), ("topic", f"{APP_ID}-__assignor-__leader", "create"), ("topic", f"{APP_ID}-__assignor-__leader", "read")}
    # processors/app.py: the erasure reader (assigned, like consent) and the DLQ sealer (reads, writes dlq.keys)
    # processors/checkpoints.py: each batch's signed checkpoint goes to audit.checkpoints
    processor |= {("topic", "audit.checkpoints", "create"), ("topic", "audit.checkpoints", "write")}
    # processors/dataplane.py: closed quality windows go to quality.windows (ensured at start-up)
    processor |= {("topic", "quality.windows", "create"), ("topic", "quality.windows", "write"),
                  ("topic", "quality.breaches", "create"), ("topic", "quality.breaches", "write"),
                  ("topic", "quality.marks", "create"), ("topic", "quality.marks", "write"), ("topic", "quality.marks", "read")}
    # processors/quality_release.py: records of gated agreements wait in quality.pending (ensured at start-up),
    # read back assigned (no commit) when their window closes
    processor |= {("topic", "quality.pending", "create"), ("topic", "quality.pending", "write"), ("topic", "quality.pending", "read")}
    # processors/timestamps.py (with a TSA configured): ensures audit.timestamps, produces the newest checkpoint's timestamp
    processor |= {("topic", "audit.timestamps", "create"), ("topic", "audit.timestamps", "write")}
    # processors/lineage.py (BACKBONE_LINEAGE_TRANSPORT=kafka): ensures its topic and produces the run events
    processor |= {("topic", "lineage.openlineage", "create"), ("topic", "lineage.openlineage", "write")}
    # backbone/control/erasure_requests.py ErasureDesk: ensures both topics, reads the requests (an
    # assigned reader), publishes the erasure record and the answer
    processor |= {("topic", "erasure.requests", "create"), ("topic", "erasure.requests", "read"),
                  ("topic", "erasure.work", "create"), ("topic", "erasure.work", "write"), ("topic", "erasures", "write")}
    # processors/anchors.py: ensures audit.operations.checkpoints (one partition), reads it assigned (no group)
    processor |= {("topic", "audit.operations.checkpoints", "create"), ("topic", "audit.operations.checkpoints", "read")}
    processor |= {("topic", "erasures", "create"), ("topic", "erasures", "read"),
                  ("topic", "dlq.keys", "create"), ("topic", "dlq.keys", "read"), ("topic", "dlq.keys", "write")}
    table["backbone process"] = ("User:processor", processor)
    for recipient in recipients:
        # consumers/batching.py: ensures dlq.sink, subscribes the shared pattern as the plan's group, commits, dead-letters
        needs = {("topic", f"shared.{recipient}.*", "read"), ("group", group_id(settings, recipient), "read"),
                 ("topic", "dlq.sink", "create"), ("topic", "dlq.sink", "write")}
        if recipient == "fraud":  # consumers/fraud/detector.py publishes alerts
            needs |= {("topic", "alerts.fraud", "create"), ("topic", "alerts.fraud", "write")}
        table[f"backbone sink --recipient {recipient} --no-audit"] = (f"User:sink-{recipient}", needs)
    # consumers/sink.py sinks_for(recipients=[]): the audit plans only, each its own group; dead-letters like every sink
    table["backbone sink --audit-only"] = ("User:sink-audit", {
        ("topic", "audit.decisions", "read"), ("group", group_id(settings, AUDIT_SINK), "read"),
        ("topic", "audit.operations", "read"), ("group", group_id(settings, OPERATIONS_SINK), "read"),
        ("topic", "audit.checkpoints", "read"), ("topic", "audit.operations.checkpoints", "read"),
        ("group", group_id(settings, "audit-checkpoints"), "read"),
        ("topic", "audit.timestamps", "read"), ("group", group_id(settings, TIMESTAMPS_SINK), "read"),
        ("topic", "dlq.sink", "create"), ("topic", "dlq.sink", "write"),
        # app/cli/sink.py adds the quality sink (consumers/quality.py) beside the audit sinks
        ("topic", "quality.windows", "read"), ("group", group_id(settings, "quality"), "read")})
    # backbone/registry/kafka_log.py: ensures _schemas, reads it assigned as `backbone-registry-<node>` (no commit), writes
    table["schema registry"] = ("User:schema-registry", {("topic", "_schemas", op) for op in ("create", "read", "write")}
                                | {("group", "backbone-registry-*", "describe")})
    # backbone/audit/operations.py record: ensures both topics, reads the operations chain's head (assigned,
    # no group), produces the action's checkpoint and the action
    recorded = {("topic", "audit.operations", "create"), ("topic", "audit.operations", "write"),
                ("topic", "audit.operations.checkpoints", "create"), ("topic", "audit.operations.checkpoints", "read"),
                ("topic", "audit.operations.checkpoints", "write")}
    agreements_read = {("topic", "agreements.changes", "create"), ("topic", "agreements.changes", "read"), readers}
    table["backbone agreements apply"] = ("User:operator", recorded | {("topic", "agreements.changes", "create"), ("topic", "agreements.changes", "write")})
    table["backbone agreements suspend|revoke|activate"] = ("User:operator", agreements_read | recorded | {("topic", "agreements.changes", "write")})
    table["backbone topics list"] = ("User:operator", {("topic", "*", "describe")})
    table["backbone topics create"] = ("User:operator", {("topic", "*", "create")})
    table["backbone topics describe"] = ("User:operator", {("topic", "*", "describe"), ("topic", "*", "describe_configs")})
    table["backbone topics delete"] = ("User:operator", {("topic", "*", "delete")})
    # app/status.py: metadata and watermarks of every topic (its consumer's group `status-<uuid>` is
    # looked up), every group and its offsets, every DLQ read to its end, agreement changes
    table["backbone status"] = ("User:operator", {("topic", "*", "describe"), ("group", "status-*", "describe"), ("group", "*", "describe"),
                                                  *(("topic", dlq_topic(stage), "read") for stage in dlq.STAGES), *agreements_read})
    table["backbone keys reidentify"] = ("User:operator", recorded)
    table["backbone schemas list|show|check|register"] = ("User:operator", set())  # the registry's HTTP API only
    # app/cli/dlq.py: reads each DLQ to its end (an assigned reader); replay writes back to the source
    # topics (raw for the processor's, shared for the sinks') and records the action
    dlq_read = {*(("topic", dlq_topic(stage), "read") for stage in dlq.STAGES), readers}
    table["backbone dlq list|show"] = ("User:operator", dlq_read)
    # app/cli/quality.py: reads quality.pending to its end (an assigned reader) to list the windows
    table["backbone quality pending"] = ("User:operator", {("topic", "quality.pending", "read"), readers})
    # backbone/control/erasure.py erase: ensures the request and answer topics, asks the processors and
    # reads their answer (assigned, no group), tombstones consent records and fraud alerts,
    # destroys the person's and the expired DLQ keys (reading them first), records the action
    expiry = {("topic", "dlq.keys", "read"), ("topic", "dlq.keys", "write"), readers}
    table["backbone erase"] = ("User:operator", {("topic", "erasure.requests", "create"), ("topic", "erasure.requests", "write"),
                                                 ("topic", "erasure.work", "create"), ("topic", "erasure.work", "read"),
                                                 ("topic", "consent.changes", "write"), ("topic", "alerts.fraud", "write"),
                                                 *expiry, *recorded})
    # app/dp_release.py: the ledger (backbone/audit/dp_ledger.py) reads audit.operations to its end (assigned, no
    # group, no commit) and records the spend; the release goes onto dp.<recipient>.releases (ensured first)
    table["backbone dp release|budget"] = ("User:operator", recorded | {("topic", "audit.operations", "read"), ("topic", "dp.*", "write"),
                                                                    ("topic", "dp.*", "create")})
    for recipient in sorted({b.recipient for a in charter.agreements if a.dp_release for b in a.dp_release.budgets}):
        table[f"{recipient} reads its releases"] = (f"User:{recipient}", {("topic", f"dp.{recipient}.releases", "read")})
    table["backbone dlq replay"] = ("User:operator", dlq_read | recorded | expiry | {("topic", "raw.*", "write"), ("topic", "shared.*", "write")})
    return table


def _covers(grant: Grant, need: Need, *, implied: bool = True) -> bool:
    resource, name, operation = need
    if grant.resource != resource or grant.operation not in (IMPLIED.get(operation, {operation}) if implied else {operation}):
        return False
    if grant.pattern == "literal":
        return grant.name in ("*", name)
    return name != "*" and name.removesuffix("*").startswith(grant.name)


def test_each_command_may_do_every_kafka_operation_its_code_performs(charter) -> None:  # noqa: ANN001
    grants = plan_for_charter(charter)
    missing = [(command, need) for command, (principal, needs) in commands(charter).items() for need in sorted(needs)
               if not any(g.principal == principal and _covers(g, need) for g in grants)]
    assert missing == []


def test_every_binding_is_needed_by_some_command(charter) -> None:  # noqa: ANN001
    needs = [(principal, need) for principal, wanted in commands(charter).values() for need in wanted]
    unneeded = [g.key for g in plan_for_charter(charter)
                if not any(p == g.principal and _covers(g, need, implied=False) for p, need in needs)]
    assert unneeded == []


def test_no_binding_is_covered_by_another_of_the_same_principal(charter) -> None:  # noqa: ANN001
    grants = plan_for_charter(charter)
    redundant = [(g.key, other.key) for g in grants for other in grants
                 if other != g and other.principal == g.principal and other.operation == g.operation
                 and _covers(other, (g.resource, g.name + ("*" if g.pattern == "prefixed" else ""), g.operation), implied=False)]
    assert redundant == []


def test_the_operator_reads_no_raw_shared_or_audit_data(charter) -> None:  # noqa: ANN001
    operator = [g for g in plan_for_charter(charter) if g.principal == "User:operator"]
    for topic in ("raw.tax.income_declared", "shared.fraud.tax.income_declared", "audit.decisions", "consent.changes", "_schemas"):
        assert not any(_covers(g, ("topic", topic, "read")) for g in operator), topic


def test_one_agency_s_prefixes_never_cover_another_s() -> None:
    grants = plan(Agencies(("fraud", "fraud-x"), (), ("fraud", "fraud-x")))
    fraud = [g for g in grants if g.principal == "User:fraud"]
    for need in [("topic", "shared.fraud-x.tax.income_declared", "read"), ("group", "fraud-x.analysts", "read"),
                 ("topic", "raw.fraud-x.event", "write")]:
        assert not any(_covers(g, need) for g in fraud), need
