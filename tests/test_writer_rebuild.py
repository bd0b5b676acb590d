"""A processor worker SIGKILLed mid-batch and restarted with a new pod identity (a fresh data
directory, as a rescheduled pod without its volume gets) raises no false tamper alarm: `backbone
audit verify` over the topics finds no failure. The worker's writer id is stable
(`BACKBONE_AUDIT_WRITER`, a StatefulSet's pod name), so the restarted worker rebuilds its writer
state from `audit.checkpoints` and names the batch cut short as interrupted."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition
from confluent_kafka.admin import AlterConfigOpType, ConfigEntry, ConfigResource

from app.local import worker_environment
from backbone.kafka.topics import AUDIT_TOPIC, CHECKPOINTS_TOPIC, admin_client
from backbone.settings import Settings
from tests.pipeline import Worker, private_stack
from tests.test_processor import decisions
from tests.test_processor_workers import produce_synthetic

pytestmark = pytest.mark.integration
WRITER = "processor-0"  # the StatefulSet's pod name


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Settings]:
    """On the disk broker whatever the session's: the batch is cut short by the audit topic's
    `max.message.bytes`, which it enforces as Kafka does (Tansu accepts the records anyway). What
    this module tests is the worker's writer state, not the broker."""
    with pytest.MonkeyPatch.context() as env:
        env.setenv("BACKBONE_EMBEDDED_BROKER", "disk")
        stack = private_stack(tmp_path_factory.mktemp("rebuild"), partitions=2)
        settings = stack.__enter__()
    try:
        yield settings
    finally:
        stack.__exit__(None, None, None)


def _verify(settings: Settings, backbone_cli) -> dict:  # noqa: ANN001
    env = {k: v for k, v in worker_environment(settings).items() if k.startswith("BACKBONE_")}
    result = backbone_cli("audit", "verify", "--from-kafka", "--format", "json", **env)
    return json.loads(result.stdout[result.stdout.index("{"):])


def _audit_record_limit(settings: Settings, limit: int | None) -> None:
    """Set (or, with None, drop) `max.message.bytes` on the audit topic: the broker then refuses
    every packed audit record (MESSAGE_TOO_LARGE, not retried) while checkpoints still land."""
    operation = AlterConfigOpType.SET if limit is not None else AlterConfigOpType.DELETE
    resource = ConfigResource(ConfigResource.Type.TOPIC, AUDIT_TOPIC, incremental_configs=[
        ConfigEntry("max.message.bytes", str(limit or ""), incremental_operation=operation)])
    admin = admin_client(settings)  # kept until the result: a collected client ends its requests
    admin.incremental_alter_configs([resource])[resource].result(timeout=30)


def _checkpoints(settings: Settings, worker: Worker, timeout: float = 120) -> Consumer:
    """A reader of every partition of the checkpoints topic, from the beginning: once the starting
    worker has created it (the broker creates no topic on a reader's request)."""
    consumer = Consumer(settings.consumer_config(f"watch-{uuid.uuid4().hex}", **{"fetch.wait.max.ms": 1}))
    deadline = time.monotonic() + timeout
    while not (partitions := consumer.list_topics(CHECKPOINTS_TOPIC, timeout=10).topics[CHECKPOINTS_TOPIC].partitions):
        assert worker.alive() and time.monotonic() < deadline, f"the worker made no {CHECKPOINTS_TOPIC}: {worker.tail(10)}"
        time.sleep(0.2)
    consumer.assign([TopicPartition(CHECKPOINTS_TOPIC, p, OFFSET_BEGINNING) for p in partitions])
    return consumer


def _kill_mid_batch(settings: Settings, worker: Worker, backbone_cli, sent: dict[str, str],  # noqa: ANN001
                    timeout: float = 180) -> dict:
    """SIGKILL `worker` once a batch's checkpoint is on Kafka and its audit records are not; the trail
    it left. Deterministic, not a race against the few milliseconds between the two: after the
    worker has sealed a batch whole, the audit topic is made to refuse every record, so the next
    batch's checkpoint (acknowledged before any record it seals) lands and its records never do;
    that is what a worker killed between the two leaves. The topic is let go before returning."""
    consumer = _checkpoints(settings, worker)
    try:
        deadline = time.monotonic() + timeout
        while consumer.poll(0.2) is None:  # the worker is mid-stream: a batch sealed whole
            assert worker.alive() and time.monotonic() < deadline, f"no checkpoint from the worker: {worker.tail(10)}"
        _audit_record_limit(settings, 64)
        sent.update(produce_synthetic(settings, events=3_000, seed=101))  # a batch to seal after the limit
        trail: dict = {}
        while time.monotonic() < deadline:
            if consumer.poll(0.2) is None and worker.alive():
                continue
            trail = _verify(settings, backbone_cli)
            if {f["kind"] for f in trail["failures"]} & {"missing_record", "orphan_records"} or not worker.alive():
                break
        worker.kill()
        return trail or _verify(settings, backbone_cli)
    finally:
        consumer.close()
        _audit_record_limit(settings, None)


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_a_worker_killed_mid_batch_and_rescheduled_with_a_fresh_data_dir_raises_no_tamper_alarm(
        stack: Settings, tmp_path: Path, backbone_cli) -> None:  # noqa: ANN001
    sent = produce_synthetic(stack, events=6_000, seed=11)
    killed = Worker(stack, "killed", audit_writer=WRITER, consumer_batch_size="3000").start()
    cut_short = _kill_mid_batch(stack, killed, backbone_cli, sent)
    assert {f["kind"] for f in cut_short["failures"]} & {"missing_record", "orphan_records"}, \
        f"the kill must cut a batch short: {cut_short}"

    new_pod = tmp_path / "new-pod"
    new_pod.mkdir(mode=0o700)
    fresh = stack.model_copy(update={"data_dir": new_pod, "keyring_path": stack.keyring_path})
    restarted = Worker(fresh, "restarted", audit_writer=WRITER).start()
    try:
        found = decisions(stack, set(sent), timeout=120)
    finally:
        restarted.stop()
    assert {event_id for event_id, _ in found} >= set(sent)
    # its clean stop sealed the open hour's quality windows and produced their records (the data plane did not fail after the checkpoint)
    assert "data plane stopped" not in restarted.log_path.read_text(errors="replace"), restarted.tail(5)

    report = _verify(stack, backbone_cli)
    assert report["failures"] == [], report["failures"]
    assert report["writers"] == [WRITER]
    assert any(w["kind"] == "interrupted" for w in report["warnings"]), report["warnings"]
