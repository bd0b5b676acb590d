"""The deployment rehearsal: each Kubernetes workload's container runs as a local process with the
environment its manifests give it, and does its job.

`create-secrets.sh --offline` runs for real; each container gets the ConfigMap, the Secrets the
script made (their keys as env, their files where the pod mounts them), its registry user and its
role, against the embedded broker and a registry holding exactly the users the script provisioned.
Only what the local stack cannot be is replaced: the broker (Tansu) does not authenticate, so each
Kafka user is checked against the Strimzi users the ACL plan makes (tests/test_acls.py checks what
each may do); ClickHouse is chDB, which has no users: each sink's DSN is checked to log in as the user
the grant plan makes for its workload, with the password whose hash the grants Job applies
(tests/test_clickhouse_users.py checks what each user may do), and the grants Job runs its command on
chDB, which parses every statement and applies none; the cluster CA is not needed over plaintext.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

import pytest
import yaml
from confluent_kafka import Consumer, TopicPartition
from confluent_kafka.schema_registry import SchemaRegistryClient

from backbone.clickhouse.users import read_credentials
from backbone.events.serde import Decoder, RegistrySchemas
from backbone.settings import PROJECT_ROOT
from backbone.stack.embedded import EmbeddedBroker, EmbeddedRegistry, free_port
from tests.pipeline import read_topic

pytestmark = [pytest.mark.slow, pytest.mark.integration]

KUBERNETES = PROJECT_ROOT / "deploy" / "kubernetes"
IMAGE_ENV = {"HOME": "/var/lib/backbone/data"}  # deploy/compose/Dockerfile; the rest the ConfigMap sets again
STRIMZI_SECRETS = {"backbone-cluster-ca-cert"}  # made by Strimzi's cluster operator (its CA)
KAFKA_CLIENT_SECURITY = ("BACKBONE_KAFKA_SASL_MECHANISM", "BACKBONE_KAFKA_SASL_USERNAME", "BACKBONE_KAFKA_SASL_PASSWORD",
                         "BACKBONE_KAFKA_SSL_CA_LOCATION")


def resources() -> list[dict[str, Any]]:
    kustomization = yaml.safe_load((KUBERNETES / "kustomization.yaml").read_text())
    return [doc for name in kustomization["resources"] for doc in yaml.safe_load_all((KUBERNETES / name).read_text()) if doc]


@dataclass
class Rehearsal:
    root: Path
    secrets: Path
    broker: EmbeddedBroker
    registry: EmbeddedRegistry
    docs: list[dict[str, Any]]
    clickhouse_users: dict[str, str] = dataclasses.field(default_factory=dict)  # sink workload -> the user its DSN names

    def workload(self, name: str) -> dict[str, Any]:
        return next(d for d in self.docs if d["kind"] in ("Deployment", "StatefulSet", "Job") and d["metadata"]["name"] == name)

    def _secret(self, name: str) -> Path:
        path = self.secrets / "secrets" / name
        assert path.is_dir(), f"Secret {name} is neither made by create-secrets.sh nor by Strimzi"
        return path

    def _kafka_users(self) -> set[str]:
        return {d["metadata"]["name"] for d in self.docs if d["kind"] == "KafkaUser"}

    def _clickhouse_user(self, workload: str, dsn: str) -> None:
        """chDB cannot authenticate: the DSN's user is the one the grant plan makes for this sink workload,
        and its password the one whose hash the grants Job applies (its Secret clickhouse-sink-credentials)."""
        from backbone.policy.agreements import default_charter
        from consumers import ddl

        prefix = next(d for d in self.docs if d["kind"] == "ConfigMap" and d["metadata"]["name"] == "backbone-settings")[
            "data"]["BACKBONE_CLICKHOUSE_DATABASE_PREFIX"]
        users = ddl.sink_workloads(prefix, {a.recipient for a in default_charter().agreements})
        parts = urlsplit(dsn)
        user, password = unquote(parts.username or ""), unquote(parts.password or "")
        assert user == users[workload], (workload, user)
        credentials = read_credentials(self._secret("clickhouse-sink-credentials") / "credentials.json")
        assert credentials[user].matches(password), f"{workload}: its password is not the one the grants Job applies"
        self.clickhouse_users[workload] = user

    def process(self, name: str, container_index: int = 0, init: bool = False) -> tuple[list[str], dict[str, str]]:
        """argv and environment of the workload's container (or init container), as its manifests give them, run here."""
        pod = self.workload(name)["spec"]["template"]["spec"]
        container = pod["initContainers" if init else "containers"][container_index]
        local = self.root / name
        shutil.rmtree(local, ignore_errors=True)
        env = dict(IMAGE_ENV)
        for source in container.get("envFrom", []):
            if "configMapRef" in source:
                config = next(d for d in self.docs if d["kind"] == "ConfigMap" and d["metadata"]["name"] == source["configMapRef"]["name"])
                env |= config["data"]
            else:
                secret = self._secret(source["secretRef"]["name"])
                env |= {key.name: key.read_text() for key in secret.iterdir()}
        strimzi_users = []
        dsn_secret = None
        for variable in container.get("env", []):
            if "value" in variable:
                env[variable["name"]] = variable["value"]
                continue
            if "fieldRef" in variable["valueFrom"]:  # the downward API: only the pod's name is used
                assert variable["valueFrom"]["fieldRef"] == {"fieldPath": "metadata.name"}, variable
                env[variable["name"]] = f"{name}-0"
                continue
            ref = variable["valueFrom"]["secretKeyRef"]
            if variable["name"] == "BACKBONE_CLICKHOUSE_DSN":
                dsn_secret = ref["name"]
            if (self.secrets / "secrets" / ref["name"]).is_dir():
                env[variable["name"]] = (self._secret(ref["name"]) / ref["key"]).read_text()
            else:  # a KafkaUser's password, which Strimzi writes to a Secret of the user's name
                assert ref["name"] in self._kafka_users() and ref["key"] == "password", ref
                strimzi_users.append(ref["name"])
                env[variable["name"]] = "checked-against-the-acl-plan"
        if "BACKBONE_KAFKA_SASL_USERNAME" in env:  # the broker here cannot check it: the plan's user, with its own password
            assert env["BACKBONE_KAFKA_SASL_USERNAME"] in self._kafka_users()
            assert strimzi_users == [env["BACKBONE_KAFKA_SASL_USERNAME"]], (name, strimzi_users)
        volumes = {v["name"]: v for v in pod.get("volumes", [])}
        volumes |= {claim["metadata"]["name"]: {"persistentVolumeClaim": claim["spec"]}
                    for claim in self.workload(name)["spec"].get("volumeClaimTemplates", [])}
        mounts = {}
        for mount in container.get("volumeMounts", []):
            volume, target = volumes[mount["name"]], local / mount["name"]
            target.mkdir(parents=True)
            if "secret" in volume and volume["secret"]["secretName"] not in STRIMZI_SECRETS:
                secret = self._secret(volume["secret"]["secretName"])
                items = volume["secret"].get("items") or [{"key": f.name, "path": f.name} for f in secret.iterdir()]
                for item in items:
                    (target / item["path"]).write_bytes((secret / item["key"]).read_bytes())
            elif "configMap" in volume:
                config = next(d for d in self.docs if d["kind"] == "ConfigMap" and d["metadata"]["name"] == volume["configMap"]["name"])
                for key, text in config["data"].items():
                    (target / key).write_text(text)
            mounts[mount["mountPath"]] = target
        for key, value in list(env.items()):
            for mount_path, target in mounts.items():
                if value.startswith(mount_path + "/"):
                    env[key] = str(target) + value[len(mount_path):]
            if value.startswith("/app/"):  # the image's copy of this checkout's schemas and agreements
                env[key] = str(PROJECT_ROOT / value.removeprefix("/app/"))
        # What differs here: a plaintext single broker, the local registry, chDB, loopback ports.
        assert env.get("BACKBONE_KAFKA_SECURITY_PROTOCOL", "SASL_SSL") == "SASL_SSL"  # (an init container has no ConfigMap)
        for key in KAFKA_CLIENT_SECURITY:
            env.pop(key, None)
        env |= {"BACKBONE_KAFKA_BOOTSTRAP": self.broker.bootstrap, "BACKBONE_KAFKA_SECURITY_PROTOCOL": "PLAINTEXT",
                "BACKBONE_KAFKA_REPLICATION_FACTOR": "1", "BACKBONE_SCHEMA_REGISTRY_URL": self.registry.address,
                "BACKBONE_METRICS_HOST": "127.0.0.1", "BACKBONE_METRICS_PORT": str(free_port()),
                "BACKBONE_CONSUMER_SESSION_TIMEOUT_MS": "6000", "BACKBONE_CONSUMER_HEARTBEAT_INTERVAL_MS": "500",
                "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
        if "BACKBONE_CLICKHOUSE_DSN" in env:
            if dsn_secret != "backbone-clickhouse":  # a sink: its own user, checked against the plan
                self._clickhouse_user(name, env["BACKBONE_CLICKHOUSE_DSN"])
                env.pop("BACKBONE_CLICKHOUSE_CLUSTER", None)  # one chDB, no cluster: tests/test_deploy.py checks the name
            # (the administrator's Job keeps the cluster: chDB parses its ON CLUSTER statements, runs none)
            env["BACKBONE_CLICKHOUSE_DSN"] = f"chdb://{local / 'chdb'}"
        argv = container.get("command") or ["backbone", *container.get("args", [])]
        argv = [str(mounts[str(Path(part).parent)] / Path(part).name) if str(Path(part).parent) in mounts else part for part in argv]
        argv = [str(free_port()) if previous == "--web-port" else part for previous, part in zip(["", *argv], argv, strict=False)]
        return argv, env


@pytest.fixture(scope="module")
def rehearsal(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Rehearsal]:
    root = tmp_path_factory.mktemp("rehearsal")
    secrets = root / "secrets"
    env = {k: v for k, v in os.environ.items() if not k.startswith("BACKBONE_")}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env['PATH']}"
    made = subprocess.run([str(KUBERNETES / "create-secrets.sh"), "--offline", str(secrets)], capture_output=True, text=True,
                          env=env, timeout=180)
    assert made.returncode == 0, made.stderr
    with EmbeddedBroker(root / "broker") as broker, \
            EmbeddedRegistry(root / "registry", broker.bootstrap, users_file=secrets / "secrets" / "schema-registry-users" / "users.json") as registry:
        docs = resources()
        create_kafka_topics(broker.bootstrap, docs)
        yield Rehearsal(root, secrets, broker, registry, docs)


def create_kafka_topics(bootstrap: str, docs: list[dict[str, Any]]) -> None:
    """What Strimzi's topic operator does before the workloads start: every KafkaTopic (one replica here)."""
    from confluent_kafka.admin import AdminClient, NewTopic

    topics = [NewTopic(d["spec"].get("topicName", d["metadata"]["name"]), d["spec"]["partitions"], 1,
                       config={k: str(v) for k, v in (d["spec"].get("config") or {}).items()})
              for d in docs if d["kind"] == "KafkaTopic" and d["spec"].get("topicName") != "_schemas"]
    admin = AdminClient({"bootstrap.servers": bootstrap})
    for future in admin.create_topics(topics, request_timeout=30).values():
        future.result(timeout=30)


class Running:
    """A workload's container as a local process, stopped (SIGTERM, then SIGKILL) by the test."""

    def __init__(self, rehearsal: Rehearsal, name: str) -> None:
        argv, env = rehearsal.process(name)
        self.name, self.log = name, rehearsal.root / f"{name}.log"
        with self.log.open("wb") as out:
            self.process = subprocess.Popen(argv, env=env, stdout=out, stderr=subprocess.STDOUT, cwd=rehearsal.root / name,
                                            start_new_session=True)

    def alive(self) -> bool:
        return self.process.poll() is None

    def tail(self) -> str:
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-15:])

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)


def run_once(rehearsal: Rehearsal, name: str, argv: list[str] | None = None, init: bool = False, **extra: str) -> subprocess.CompletedProcess[str]:
    default, env = rehearsal.process(name, init=init)
    return subprocess.run(argv or default, env=env | extra, capture_output=True, text=True, timeout=120, cwd=rehearsal.root / name)


def agency_env(rehearsal: Rehearsal, agency: str) -> dict[str, str]:
    """What an agency runs with: its own registry user (README, "Joining as an agency") and Kafka user."""
    password = (rehearsal.secrets / "registry-passwords" / f"{agency}.password").read_text().strip()
    return {**{k: v for k, v in os.environ.items() if not k.startswith("BACKBONE_")},
            "BACKBONE_KAFKA_BOOTSTRAP": rehearsal.broker.bootstrap, "BACKBONE_SCHEMA_REGISTRY_URL": rehearsal.registry.address,
            "BACKBONE_SCHEMA_REGISTRY_USER": agency, "BACKBONE_SCHEMA_REGISTRY_PASSWORD": password,
            "BACKBONE_DATA_DIR": str(rehearsal.root / f"agency-{agency}"), "BACKBONE_SUBJECT_KEY_SECRET": "rehearsal-subject-key-secret"}


def committed(rehearsal: Rehearsal, group: str, prefix: str) -> int:
    consumer = Consumer({"bootstrap.servers": rehearsal.broker.bootstrap, "group.id": group})
    try:
        topics = [t for t in consumer.list_topics(timeout=10).topics if t.startswith(prefix)]
        partitions = [TopicPartition(t, p) for t in topics for p in consumer.list_topics(t, timeout=10).topics[t].partitions]
        return sum(max(tp.offset, 0) for tp in consumer.committed(partitions, timeout=10)) if partitions else 0
    finally:
        consumer.close()


def wait_for(check, what: str, running: list[Running], timeout: float = 90.0) -> None:  # noqa: ANN001
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for part in running:
            assert part.alive(), f"{part.name} stopped:\n{part.tail()}"
        if check():
            return
        time.sleep(1)
    raise AssertionError(f"{what} within {timeout:.0f} s; " + "; ".join(f"{p.name}: {p.tail()[-400:]}" for p in running))


def test_every_workload_does_its_job_with_the_identity_its_manifests_give_it(rehearsal: Rehearsal) -> None:
    init = run_once(rehearsal, "backbone-init")
    assert init.returncode == 0, init.stdout[-2000:] + init.stderr[-2000:]

    # The grants Job, as ClickHouse's administrator with the credentials create-secrets.sh made: on chDB
    # every statement (ON CLUSTER, as the ConfigMap's cluster makes them) parses and none is applied.
    grants = run_once(rehearsal, "clickhouse-grants")
    sinks = ["audit", "fraud", "research", "statistics", "welfare"]
    granted = f"sink users {', '.join(f'backbone_sink_{s}' for s in [*sinks[1:], 'audit'])} parse, none is applied"
    assert grants.returncode == 1 and "chDB has no users or roles" in grants.stderr and granted in " ".join(grants.stderr.split()), grants.stderr
    # Each sink's init container waits for its user with the sink's own DSN (checked for each; run for one:
    # chDB accepts it at once).
    for sink in sinks[1:]:
        rehearsal.process(f"sink-{sink}", init=True)
    waited = run_once(rehearsal, "sink-audit", init=True)
    assert waited.returncode == 0, waited.stdout[-1000:] + waited.stderr[-1000:]

    running = [Running(rehearsal, "processor"), *(Running(rehearsal, f"sink-{s}") for s in sinks)]
    assert rehearsal.clickhouse_users == {f"sink-{s}": f"backbone_sink_{s}" for s in sinks}  # each its own, checked against the plan
    try:
        # Consent first, and welfare's claims again once the workers have read it (research is consent-based).
        for agency in ("consent", "tax", "welfare", "registry", "police", "welfare"):
            produced = subprocess.run([sys.executable, "-c", "from app.cli import main; main()", "produce", "--agency", agency,
                                       "--events", "150", "--population", "50", "--fraud-rate", "0.2"],
                                      env=agency_env(rehearsal, agency), capture_output=True, text=True, timeout=120)
            assert produced.returncode == 0, produced.stderr[-2000:]

        # The worker decides (and keeps running: it registered everything it registers at start).
        wait_for(lambda: committed(rehearsal, "backbone-processor-dataplane", "raw.") > 0, "the processor committed decisions", running)
        # Each sink lands its recipient's shared topics in its database (commits follow the writes).
        # The synthetic consents of 50 people release no claim to research (consent-based): its sink
        # only has to keep running.
        for recipient in ("fraud", "statistics", "welfare"):
            wait_for(lambda r=recipient: committed(rehearsal, f"backbone-sink-{r}", f"shared.{r}.") > 0,
                     f"sink-{recipient} landed rows", running)
        # The audit sink lands the decisions (no recipient's sink reads the audit topics any more).
        wait_for(lambda: committed(rehearsal, "backbone-sink-audit", "audit.decisions") > 0, "sink-audit landed the audit trail", running)

        # A recipient decodes what it is sent, with its own (read-only) registry user.
        password = (rehearsal.secrets / "registry-passwords" / "fraud.password").read_text().strip()
        client = SchemaRegistryClient({"url": rehearsal.registry.address, "basic.auth.user.info": f"fraud:{password}"})
        decoder = Decoder(RegistrySchemas(client))
        from backbone.settings import load_settings

        reader = load_settings(kafka_bootstrap=rehearsal.broker.bootstrap)
        messages = read_topic(reader, "shared.fraud.tax.income_declared", lambda found: len(found) > 0, timeout=60)
        assert messages and "national_id" in decoder(messages[0].value()).record

        # The operator toolbox suspends an agreement (`kubectl exec deploy/operator-toolbox -- ...`).
        suspended = run_once(rehearsal, "operator-toolbox", ["backbone", "agreements", "suspend", "tax-to-fraud"],
                             BACKBONE_IDENTITY="alice")
        assert suspended.returncode == 0, suspended.stdout[-2000:] + suspended.stderr[-2000:]
        assert all(part.alive() for part in running)
    finally:
        for part in running:
            part.stop()
