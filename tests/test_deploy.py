"""Deployment files: they parse, use only settings the backbone defines, and name exactly its topics."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml
from typer.main import get_command

from backbone.catalog import load_catalog
from backbone.policy.agreements import load_agreements
from backbone.settings import ENV_PREFIX, PROJECT_ROOT, Settings
from backbone.topics import (
    AGREEMENTS_TOPIC,
    ALERTS_TOPIC,
    AUDIT_TOPIC,
    CONSENT_TOPIC,
    SCHEMAS_TOPIC,
    dlq_topic,
    raw_topic,
    shared_topic,
)

DEPLOY = PROJECT_ROOT / "deploy"
COMPOSE = DEPLOY / "compose" / "docker-compose.yml"
KUBERNETES = DEPLOY / "kubernetes"
FIXED_TOPICS = {CONSENT_TOPIC, AGREEMENTS_TOPIC, AUDIT_TOPIC, ALERTS_TOPIC, dlq_topic("processor"), dlq_topic("sink"), SCHEMAS_TOPIC}
COMPACTED = {CONSENT_TOPIC, AGREEMENTS_TOPIC, SCHEMAS_TOPIC}
BACKBONE_SERVICES = ("schema-registry", "init", "processor", "sink-fraud", "sink-welfare", "sink-research", "sink-statistics")


def _documents(path: Path) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return _documents(COMPOSE)[0]


@pytest.fixture(scope="module")
def manifests() -> list[dict[str, Any]]:
    return [doc for path in sorted(KUBERNETES.glob("*.yaml")) for doc in _documents(path)]


@pytest.fixture(scope="module")
def used_topics() -> set[str]:
    """Every topic the backbone reads or writes for the demo's catalog and charter."""
    catalog = load_catalog(PROJECT_ROOT / "schemas")
    charter = load_agreements(PROJECT_ROOT / "agreements", catalog)
    raw = {raw_topic(t) for t in catalog.events if t != "consent.changed"}  # consent goes to consent.changes
    shared = {shared_topic(a.recipient, t) for a in charter.agreements for t in a.event_types}
    return FIXED_TOPICS | raw | shared


def _kafka_topics(manifests: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {doc["spec"].get("topicName", doc["metadata"]["name"]): doc for doc in manifests if doc["kind"] == "KafkaTopic"}


def test_every_deployment_file_parses() -> None:
    files = sorted(DEPLOY.rglob("*.yaml")) + sorted(DEPLOY.rglob("*.yml"))
    assert len(files) >= 10
    for path in files:
        assert _documents(path), path


def test_deploy_files_use_only_backbone_variables_the_settings_define() -> None:
    defined = {ENV_PREFIX + name.upper() for name in Settings.model_fields}
    used: dict[str, set[str]] = {}
    for path in DEPLOY.rglob("*"):
        if path.is_file():
            for name in re.findall(r"BACKBONE_[A-Z_]+", path.read_text()):
                used.setdefault(name.rstrip("_"), set()).add(str(path.relative_to(DEPLOY)))
    assert len(used) >= 15
    unknown = {name: files for name, files in used.items() if name not in defined}
    assert not unknown, f"not fields of backbone.settings.Settings: {unknown}"


def test_compose_backbone_services_take_only_backbone_variables(compose: dict[str, Any]) -> None:
    for name in BACKBONE_SERVICES:
        environment = compose["services"][name]["environment"]
        assert environment and all(key.startswith(ENV_PREFIX) for key in environment), name
        assert "env_file" not in compose["services"][name]


def test_compose_runs_the_stack_with_health_checks_and_named_volumes(compose: dict[str, Any]) -> None:
    services = compose["services"]
    assert services["kafka"]["image"].startswith("apache/kafka:")
    assert services["kafka"]["environment"]["KAFKA_PROCESS_ROLES"] == "broker,controller"  # KRaft, no ZooKeeper
    assert services["clickhouse"]["image"].startswith("clickhouse/clickhouse-server:")
    for name in ("kafka", "clickhouse", "schema-registry", "processor", "sink-fraud", "sink-welfare"):
        assert services[name]["healthcheck"]["test"], name
    for name, service in services.items():
        for volume in service.get("volumes", []):
            source = volume.split(":", 1)[0]
            assert source in compose["volumes"], f"{name}: {volume} is not a named volume"
    assert services["init"]["depends_on"]["kafka"]["condition"] == "service_healthy"
    assert services["processor"]["depends_on"]["init"]["condition"] == "service_completed_successfully"


def test_compose_processor_scales(compose: dict[str, Any]) -> None:
    processor = compose["services"]["processor"]
    assert "container_name" not in processor and "ports" not in processor  # `--scale processor=3` needs both absent


def test_compose_master_key_comes_from_a_secret_file(compose: dict[str, Any]) -> None:
    assert compose["secrets"]["backbone_master_key"]["file"]
    for name in ("init", "processor"):
        service = compose["services"][name]
        assert service["secrets"] == ["backbone_master_key"]
        assert service["environment"]["BACKBONE_MASTER_KEY_FILE"] == "/run/secrets/backbone_master_key"
        assert "BACKBONE_MASTER_KEY" not in service["environment"]


def test_compose_commands_are_backbone_commands_with_existing_options(compose: dict[str, Any]) -> None:
    from app.cli import _register, app

    _register()
    commands = get_command(app).commands
    options = {name: {opt for param in cmd.params for opt in [*param.opts, *param.secondary_opts]} for name, cmd in commands.items()}
    for name in ("processor", "sink-fraud", "sink-welfare", "sink-research", "sink-statistics"):
        command, *args = compose["services"][name]["command"]
        assert command in commands, name
        assert {arg for arg in args if arg.startswith("--")} <= options[command], name
    script = compose["services"]["init"]["command"][0]
    for line in ("backbone agreements validate", "backbone keys init", "backbone schemas register"):
        assert line in script


def test_compose_init_creates_every_topic_but_the_registry_s_own(compose: dict[str, Any], used_topics: set[str]) -> None:
    script = compose["services"]["init"]["command"][0]
    created = set(re.findall(r"^topic (\S+)", script, re.MULTILINE))
    assert created == used_topics - {SCHEMAS_TOPIC}  # the registry creates _schemas itself
    for name in COMPACTED - {SCHEMAS_TOPIC}:
        assert re.search(rf"^topic {re.escape(name)} .*--cleanup-policy compact", script, re.MULTILINE)


def test_kafka_topics_are_exactly_the_topics_the_backbone_uses(manifests: list[dict[str, Any]], used_topics: set[str]) -> None:
    assert set(_kafka_topics(manifests)) == used_topics
    assert FIXED_TOPICS <= set(_kafka_topics(manifests))


def test_compacted_topics_and_single_partition_ones(manifests: list[dict[str, Any]]) -> None:
    topics = _kafka_topics(manifests)
    for name, doc in topics.items():
        policy = doc["spec"].get("config", {}).get("cleanup.policy", "delete")
        assert (policy == "compact") == (name in COMPACTED), name
        assert re.fullmatch(r"[a-z0-9]([a-z0-9.-]*[a-z0-9])?", doc["metadata"]["name"]), name  # a Kubernetes name
    assert topics[SCHEMAS_TOPIC]["spec"]["partitions"] == 1
    assert topics[AGREEMENTS_TOPIC]["spec"]["partitions"] == 1


def test_kafka_runs_kraft_with_a_node_pool(manifests: list[dict[str, Any]]) -> None:
    kafka = next(doc for doc in manifests if doc["kind"] == "Kafka")
    assert kafka["metadata"]["annotations"]["strimzi.io/kraft"] == "enabled"
    assert kafka["spec"]["kafka"]["authorization"]["type"] == "simple"
    pool = next(doc for doc in manifests if doc["kind"] == "KafkaNodePool")
    assert pool["metadata"]["labels"]["strimzi.io/cluster"] == kafka["metadata"]["name"]
    assert set(pool["spec"]["roles"]) == {"controller", "broker"}


def test_processor_replicas_do_not_exceed_the_partitions(manifests: list[dict[str, Any]]) -> None:
    topics = _kafka_topics(manifests)
    processor = next(doc for doc in manifests if doc["kind"] == "Deployment" and doc["metadata"]["name"] == "processor")
    raw_partitions = min(doc["spec"]["partitions"] for name, doc in topics.items() if name.startswith("raw."))
    assert 1 <= processor["spec"]["replicas"] <= raw_partitions


def test_each_recipient_has_a_sink_with_its_own_kafka_user(manifests: list[dict[str, Any]]) -> None:
    users = {doc["metadata"]["name"] for doc in manifests if doc["kind"] == "KafkaUser"}
    sinks = [doc for doc in manifests if doc["kind"] == "Deployment" and doc["metadata"]["name"].startswith("sink-")]
    assert {doc["metadata"]["name"] for doc in sinks} == {"sink-fraud", "sink-research", "sink-statistics", "sink-welfare"}
    for doc in sinks:
        container = doc["spec"]["template"]["spec"]["containers"][0]
        username = next(item["value"] for item in container["env"] if item["name"] == "BACKBONE_KAFKA_SASL_USERNAME")
        assert username == doc["metadata"]["name"] and username in users
        assert container["args"][:3] == ["sink", "--recipient", doc["metadata"]["name"].removeprefix("sink-")]


def test_configmap_holds_only_settings_and_secrets_only_placeholders(manifests: list[dict[str, Any]]) -> None:
    defined = {ENV_PREFIX + name.upper() for name in Settings.model_fields}
    configmap = next(doc for doc in manifests if doc["kind"] == "ConfigMap")
    assert set(configmap["data"]) <= defined
    assert "BACKBONE_MASTER_KEY" not in configmap["data"]  # the key comes from a Secret file
    for secret in (doc for doc in manifests if doc["kind"] == "Secret"):
        for value in secret["stringData"].values():
            assert "REPLACE" in value, secret["metadata"]["name"]


def test_kustomization_lists_every_manifest() -> None:
    kustomization = _documents(KUBERNETES / "kustomization.yaml")[0]
    files = {path.name for path in KUBERNETES.glob("*.yaml")} - {"kustomization.yaml"}
    assert set(kustomization["resources"]) == files
