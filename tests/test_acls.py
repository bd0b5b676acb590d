"""ACL plan: exactly the bindings each agency and backbone component needs; apply on a real broker."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from confluent_kafka.admin import AclBinding, AclOperation, AclPermissionType, ResourcePatternType, ResourceType

from backbone.acls import Agencies, Grant, bindings, plan, plan_for_charter, strimzi_users
from backbone.catalog import load_catalog
from backbone.policy.agreements import load_agreements
from backbone.settings import PROJECT_ROOT

DEPLOY = PROJECT_ROOT / "deploy"

# (principal, resource, name, pattern, operation) for the demo's catalog and charter.
EXPECTED = {
    ("User:consent", "topic", "consent.changes", "literal", "create"),
    ("User:consent", "topic", "consent.changes", "literal", "write"),
    ("User:fraud", "group", "fraud-", "prefixed", "read"),
    ("User:fraud", "topic", "shared.fraud.", "prefixed", "read"),
    ("User:operator", "topic", "agreements.changes", "literal", "create"),
    ("User:operator", "topic", "agreements.changes", "literal", "write"),
    ("User:police", "topic", "raw.police.", "prefixed", "create"),
    ("User:police", "topic", "raw.police.", "prefixed", "write"),
    ("User:processor", "group", "backbone-processor", "prefixed", "read"),
    ("User:processor", "group", "reader-", "prefixed", "read"),
    ("User:processor", "topic", "agreements.changes", "literal", "create"),
    ("User:processor", "topic", "agreements.changes", "literal", "read"),
    ("User:processor", "topic", "audit.decisions", "literal", "create"),
    ("User:processor", "topic", "audit.decisions", "literal", "write"),
    ("User:processor", "topic", "backbone-processor-", "prefixed", "create"),
    ("User:processor", "topic", "backbone-processor-", "prefixed", "read"),
    ("User:processor", "topic", "backbone-processor-", "prefixed", "write"),
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
    ("User:research", "group", "research-", "prefixed", "read"),
    ("User:research", "topic", "shared.research.", "prefixed", "read"),
    ("User:schema-registry", "group", "backbone-registry-", "prefixed", "read"),
    ("User:schema-registry", "topic", "_schemas", "literal", "create"),
    ("User:schema-registry", "topic", "_schemas", "literal", "read"),
    ("User:schema-registry", "topic", "_schemas", "literal", "write"),
    ("User:sink-fraud", "group", "backbone-sink-audit", "literal", "read"),
    ("User:sink-fraud", "group", "backbone-sink-fraud", "literal", "read"),
    ("User:sink-fraud", "topic", "alerts.fraud", "literal", "create"),
    ("User:sink-fraud", "topic", "alerts.fraud", "literal", "write"),
    ("User:sink-fraud", "topic", "audit.decisions", "literal", "read"),
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
    ("User:statistics", "group", "statistics-", "prefixed", "read"),
    ("User:statistics", "topic", "shared.statistics.", "prefixed", "read"),
    ("User:tax", "topic", "raw.tax.", "prefixed", "create"),
    ("User:tax", "topic", "raw.tax.", "prefixed", "write"),
    ("User:welfare", "group", "welfare-", "prefixed", "read"),
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
        if grant.principal == "User:tax":
            assert grant.name == "raw.tax." and grant.pattern == "prefixed" and grant.operation != "read"


def test_recipients_read_only_their_own_shared_prefix_and_groups(charter) -> None:  # noqa: ANN001
    reads = {(g.resource, g.name) for g in plan_for_charter(charter) if g.principal == "User:fraud"}
    assert reads == {("topic", "shared.fraud."), ("group", "fraud-")}


def test_no_one_but_the_processor_reads_raw_topics(charter) -> None:  # noqa: ANN001
    readers = {g.principal for g in plan_for_charter(charter) if g.operation == "read" and g.name.startswith("raw.")}
    assert readers == {"User:processor"}


def test_sink_groups_follow_the_clickhouse_database_prefix() -> None:
    grants = plan(Agencies(("tax",), (), ("fraud",)), database_prefix="t1_")
    groups = {g.name for g in grants if g.principal == "User:sink-fraud" and g.resource == "group"}
    assert groups == {"backbone-sink-t1_fraud", "backbone-sink-t1_audit"}


def test_grants_convert_to_allow_bindings_from_any_host() -> None:
    grant = Grant("User:tax", "topic", "raw.tax.", "prefixed", "write")
    assert grant.binding() == AclBinding(ResourceType.TOPIC, "raw.tax.", ResourcePatternType.PREFIXED, "User:tax", "*",
                                         AclOperation.WRITE, AclPermissionType.ALLOW)
    group = Grant("User:fraud", "group", "fraud-", "prefixed", "read").binding()
    assert (group.restype, group.operation) == (ResourceType.GROUP, AclOperation.READ)


def test_bindings_are_sorted_and_one_per_grant(charter) -> None:  # noqa: ANN001
    result = bindings(plan_for_charter(charter))
    assert len(result) == len(EXPECTED) and result == sorted(result)
    assert all(b.permission_type == AclPermissionType.ALLOW and b.host == "*" for b in result)


def test_kubernetes_kafka_users_are_the_plan(charter) -> None:  # noqa: ANN001
    manifest = [doc for doc in yaml.safe_load_all((DEPLOY / "kubernetes" / "kafka-users.yaml").read_text()) if doc]
    assert manifest == strimzi_users(plan_for_charter(charter), "backbone")


def test_kafka_users_carry_every_acl_of_the_plan(charter) -> None:  # noqa: ANN001
    pattern = {"prefix": "prefixed", "literal": "literal"}
    found = set()
    for user in strimzi_users(plan_for_charter(charter), "backbone"):
        for acl in user["spec"]["authorization"]["acls"]:
            resource = acl["resource"]
            for operation in acl["operations"]:
                found.add((f"User:{user['metadata']['name']}", resource["type"], resource["name"],
                           pattern[resource["patternType"]], operation.lower()))
    assert found == EXPECTED


def _backbone(*args: str, env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    # A child process: a broker's malformed ACL answer must not take the test session down with it.
    return subprocess.run([sys.executable, "-c", "from app.cli import main; main()", *args],
                          env=env, cwd=cwd, capture_output=True, text=True, timeout=120)


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
