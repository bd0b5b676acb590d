"""Test support for the real pipeline: a private embedded stack, a keyring, processor workers as
real `backbone process` subprocesses, and reading topics back. No part is faked."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, Message, TopicPartition

from backbone.catalog import load_catalog
from backbone.embedded import EmbeddedStack
from backbone.keyring import Keyring, encode_master_key, new_master_key
from backbone.policy.agreements import load_agreements
from backbone.settings import Settings, load_settings
from processors.router import OVERSIGHT_DOMAIN


@contextmanager
def private_stack(data_dir: Path, partitions: int = 3) -> Iterator[Settings]:
    """A broker and registry of this test module's own, and settings pointing at them with a keyring."""
    with EmbeddedStack(data_dir, broker_port=0, registry_port=0) as stack:
        master = new_master_key()
        settings = load_settings(
            kafka_bootstrap=stack.broker.bootstrap,
            schema_registry_url=stack.environment()["BACKBONE_SCHEMA_REGISTRY_URL"],
            data_dir=data_dir,
            master_key=encode_master_key(master),
            kafka_partitions=partitions,
            kafka_timeout_s=10.0,
            consumer_session_timeout_ms=6000,
            consumer_heartbeat_interval_ms=500,
        )
        catalog = load_catalog(settings.schemas_dir)
        charter = load_agreements(settings.agreements_dir, catalog)
        keyring = Keyring.generate(domains={OVERSIGHT_DOMAIN, *charter.domains()}, providers=charter.providers())
        keyring.save(settings.keyring_path, master)
        yield settings


def environment(settings: Settings) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("BACKBONE_")}
    env.update({
        "BACKBONE_KAFKA_BOOTSTRAP": settings.kafka_bootstrap,
        "BACKBONE_SCHEMA_REGISTRY_URL": settings.schema_registry_url,
        "BACKBONE_DATA_DIR": str(settings.data_dir),
        "BACKBONE_MASTER_KEY": settings.master_key.get_secret_value() if settings.master_key else "",
        "BACKBONE_KAFKA_PARTITIONS": str(settings.kafka_partitions),
        "BACKBONE_CONSUMER_SESSION_TIMEOUT_MS": str(settings.consumer_session_timeout_ms),
        "BACKBONE_CONSUMER_HEARTBEAT_INTERVAL_MS": str(settings.consumer_heartbeat_interval_ms),
        "BACKBONE_CONSUMER_BATCH_SIZE": "500",
    })
    return env


class Worker:
    """One `backbone process` worker as a subprocess; its log is a file in the data dir."""

    def __init__(self, settings: Settings, name: str) -> None:
        self.settings = settings
        self.log_path = settings.data_dir / f"{name}.log"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 90.0) -> Worker:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        offset = self.log_path.stat().st_size if self.log_path.exists() else 0
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-c", "from backbone.cli import main; main()", "process", "-l", "info"],
                stdout=log, stderr=subprocess.STDOUT, env=environment(self.settings), start_new_session=True,
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if "enforcing" in self.log_path.read_text(errors="replace")[offset:]:
                return self
            if self.process.poll() is not None:
                raise AssertionError(f"worker exited with {self.process.returncode}: {self.tail()}")
            time.sleep(0.2)
        raise AssertionError(f"worker not ready within {timeout}s: {self.tail()}")

    def tail(self, lines: int = 30) -> str:
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])

    def kill(self) -> None:
        """SIGKILL: no shutdown, no final commit, as when a machine dies."""
        if self.process is not None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(10)
            self.process = None

    def stop(self) -> None:
        if self.process is None:
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(10)
        self.process = None


def read_topic(settings: Settings, topic: str, until: Callable[[list[Message]], bool], timeout: float = 60.0) -> list[Message]:
    """Every message of `topic` from the beginning, read until `until(messages)` holds or `timeout`."""
    consumer = Consumer(settings.consumer_config(None, **{"group.id": f"reader-{time.monotonic_ns()}"}))
    try:
        metadata = consumer.list_topics(topic, timeout=10)
        partitions = sorted(metadata.topics[topic].partitions) if topic in metadata.topics else []
        consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in partitions])
        messages: list[Message] = []
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for message in consumer.consume(1000, 0.3):
                if message.error() is None:
                    messages.append(message)
                elif message.error().code() != KafkaError._PARTITION_EOF:
                    raise AssertionError(message.error().str())
            if until(messages):
                return messages
        return messages
    finally:
        consumer.close()


def header(message: Message, name: str) -> str | None:
    for key, value in message.headers() or []:
        if key == name:
            return value.decode() if value is not None else None
    return None
