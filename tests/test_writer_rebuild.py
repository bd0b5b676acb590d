"""A processor worker SIGKILLed mid-batch and restarted with a new pod identity (a fresh data
directory, as a rescheduled pod without its volume gets) raises no false tamper alarm: `backbone
audit verify` over the topics finds no failure. The worker's writer id is stable
(`BACKBONE_AUDIT_WRITER`, a StatefulSet's pod name), so the restarted worker rebuilds its writer
state from `audit.checkpoints` and names the batch cut short as interrupted."""

from __future__ import annotations

import json
import os
import signal
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition

from app.local import worker_environment
from backbone.kafka.topics import CHECKPOINTS_TOPIC
from backbone.settings import Settings
from tests.pipeline import Worker, private_stack
from tests.test_processor import decisions
from tests.test_processor_workers import produce_synthetic

pytestmark = pytest.mark.integration
WRITER = "processor-0"  # the StatefulSet's pod name


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Settings]:
    """On Tansu: catching a sealed batch's records mid-flight is luck, and on the disk broker (in
    Python, ~1 ms more a fetch) a watcher sees a checkpoint after its records more often than not (a
    CI run saw no batch cut short in 8 rounds). What this module tests is the worker's writer state,
    not the broker."""
    with pytest.MonkeyPatch.context() as env:
        env.setenv("BACKBONE_EMBEDDED_BROKER", "tansu")
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


def _kill_mid_batch(settings: Settings, worker: Worker, backbone_cli, sent: dict[str, str],  # noqa: ANN001
                    timeout: float = 240, rounds: int = 8) -> dict:
    """SIGKILL `worker` while a sealed batch's audit records are not all on Kafka; the trail it left.

    A batch's records land within a few milliseconds of its checkpoint (they travel many to a Kafka
    record, `backbone.audit.batches`), so the worker is frozen (SIGSTOP) as each new checkpoint
    appears, the trail read while nothing more can arrive, and the worker killed once a batch is cut
    short (else let go on to its next batch). Catching that window is luck: when the worker has
    decided everything (no checkpoint for a while), another round of events is sent, up to `rounds`
    (their ids are added to `sent`)."""
    consumer = Consumer(settings.consumer_config(f"watch-{uuid.uuid4().hex}", **{"fetch.wait.max.ms": 1}))
    try:
        consumer.assign([TopicPartition(CHECKPOINTS_TOPIC, p, OFFSET_BEGINNING)
                         for p in consumer.list_topics(CHECKPOINTS_TOPIC, timeout=10).topics[CHECKPOINTS_TOPIC].partitions])
        deadline, last, sent_rounds = time.monotonic() + timeout, time.monotonic(), 1
        while time.monotonic() < deadline and worker.alive():
            message = consumer.poll(0.001)
            if message is None or message.error() is not None:
                if time.monotonic() - last > 8 and sent_rounds < rounds:  # idle: every batch missed, send more
                    sent.update(produce_synthetic(settings, events=3_000, seed=100 + sent_rounds))
                    sent_rounds, last = sent_rounds + 1, time.monotonic()
                continue
            last = time.monotonic()
            os.kill(worker.pid, signal.SIGSTOP)
            trail = _verify(settings, backbone_cli)
            if {f["kind"] for f in trail["failures"]} & {"missing_record", "orphan_records"}:
                worker.kill()
                return trail
            os.kill(worker.pid, signal.SIGCONT)
        worker.kill()
        return _verify(settings, backbone_cli)
    finally:
        consumer.close()


@pytest.mark.slow
@pytest.mark.timeout(600)  # catching a batch mid-flight may take several rounds of events
def test_a_worker_killed_mid_batch_and_rescheduled_with_a_fresh_data_dir_raises_no_tamper_alarm(
        stack: Settings, tmp_path: Path, backbone_cli) -> None:  # noqa: ANN001
    sent = produce_synthetic(stack, events=6_000, seed=11)
    # frozen while the trail is read: a session long enough that the group keeps it (a short one
    # expires, its next commit fails with UNKNOWN_MEMBER_ID and the worker stops before a batch is caught)
    killed = Worker(stack, "killed", audit_writer=WRITER, consumer_batch_size="3000", consumer_session_timeout_ms="30000").start()
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
