"""The foundation: settings, the embedded broker, topics administration and the ClickHouse client."""

from __future__ import annotations

import socket
import subprocess
import time
from pathlib import Path

import pytest
from confluent_kafka import Consumer, Producer
from typer.testing import CliRunner

from backbone.clickhouse.client import chdb_path, make_client
from backbone.errors import ClickHouseDsnError, EmbeddedError, KafkaUnavailableError, SettingsError, TopicError
from backbone.kafka.topics import Topics
from backbone.settings import load_settings
from backbone.stack.embedded import EmbeddedBroker
from tests.cli import run_backbone
from tests.conftest import TEST_CONSUMER_CONFIG


def test_invalid_setting_names_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BACKBONE_KAFKA_TIMEOUT_S", "soon")
    with pytest.raises(SettingsError, match="BACKBONE_KAFKA_TIMEOUT_S"):
        load_settings()


def test_bootstrap_without_port_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BACKBONE_KAFKA_BOOTSTRAP", "kafka.example")
    with pytest.raises(SettingsError, match="BACKBONE_KAFKA_BOOTSTRAP"):
        load_settings()


def test_clickhouse_dsn_defaults_under_the_data_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("BACKBONE_CLICKHOUSE_DSN", raising=False)
    settings = load_settings(data_dir=tmp_path)
    assert settings.clickhouse_dsn == f"chdb://{(tmp_path / 'clickhouse').resolve()}"
    assert settings.keyring_path == tmp_path / "keyring.json"


def test_broker_round_trips_a_message_through_a_consumer_group(kafka_bootstrap: str, settings, unique: str) -> None:
    topic = f"foundation-{unique}"
    Topics(settings).create(topic, partitions=3)
    producer = Producer(settings.producer_config())
    for i in range(30):
        producer.produce(topic, key=f"k{i}".encode(), value=f"v{i}".encode())
    assert producer.flush(10) == 0

    consumer = Consumer(settings.consumer_config(f"g-{unique}", **TEST_CONSUMER_CONFIG))
    consumer.subscribe([topic])
    seen: set[bytes] = set()
    deadline = time.monotonic() + 30
    try:
        while len(seen) < 30 and time.monotonic() < deadline:
            message = consumer.poll(0.5)
            if message is not None and message.error() is None:
                seen.add(message.value())
    finally:
        consumer.close()
    assert seen == {f"v{i}".encode() for i in range(30)}


def test_embedded_broker_stops_its_process(tmp_path: Path) -> None:
    broker = EmbeddedBroker(tmp_path).start()
    pid = broker.pid
    assert pid is not None
    broker.stop()
    assert subprocess.run(["kill", "-0", str(pid)], capture_output=True).returncode != 0
    assert (tmp_path / "logs" / "broker.log").exists()


def test_embedded_broker_refuses_a_taken_port(tmp_path: Path) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        port = sock.getsockname()[1]
        with pytest.raises(EmbeddedError, match=f"port {port}.*in use"):
            EmbeddedBroker(tmp_path, port=port).start()


def test_missing_broker_binary_is_a_clear_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CALF_TANSU_BIN", str(tmp_path / "no-such-tansu"))
    with pytest.raises(EmbeddedError, match="Tansu broker binary is missing"):
        EmbeddedBroker(tmp_path, engine="tansu").start()


def _cli(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return run_backbone(*args, env=env, timeout=60)


def test_topics_cli_round_trip(kafka_bootstrap: str, unique: str) -> None:
    env = {"BACKBONE_KAFKA_BOOTSTRAP": kafka_bootstrap, "BACKBONE_KAFKA_TIMEOUT_S": "10"}
    topic = f"cli-{unique}"
    created = _cli("topics", "create", topic, "--partitions", "3", "--cleanup-policy", "compact", env=env)
    assert created.returncode == 0, created.stderr
    assert "3 partitions" in created.stdout

    again = _cli("topics", "create", topic, env=env)
    assert again.returncode == 1
    assert "already exists" in again.stderr
    assert "Traceback" not in again.stderr

    listed = _cli("topics", "list", env=env)
    assert topic in listed.stdout

    described = _cli("topics", "describe", topic, env=env)
    assert described.returncode == 0 and "3 partitions" in described.stdout

    assert _cli("topics", "delete", topic, env=env).returncode == 0
    missing = _cli("topics", "describe", topic, env=env)
    assert missing.returncode == 1 and "does not exist" in missing.stderr


def test_unreachable_broker_fails_within_the_timeout() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    settings = load_settings(kafka_bootstrap=f"127.0.0.1:{port}", kafka_timeout_s=2)
    started = time.monotonic()
    with pytest.raises(KafkaUnavailableError, match=f"127.0.0.1:{port}"):
        Topics(settings).list()
    assert time.monotonic() - started < 15


def test_missing_topic_is_a_topic_error(settings, unique: str) -> None:
    with pytest.raises(TopicError, match="does not exist"):
        Topics(settings).delete(f"missing-{unique}")


def test_clickhouse_data_persists_across_clients(clickhouse_dsn: str, unique: str) -> None:
    database = f"foundation_{unique}"
    first = make_client(clickhouse_dsn)
    first.command(f"CREATE DATABASE {database}")
    first.command(f"CREATE TABLE {database}.t (id UInt32, name String) ENGINE = MergeTree ORDER BY id")
    first.insert(f"{database}.t", [[1, "a"], [2, "b"]], column_names=["id", "name"])
    first.close()
    second = make_client(clickhouse_dsn)
    assert second.query(f"SELECT id, name FROM {database}.t ORDER BY id").result_rows == [(1, "a"), (2, "b")]
    second.command(f"DROP DATABASE {database}")


def test_chdb_dsn_path_is_parsed() -> None:
    assert chdb_path("chdb:///var/lib/backbone/ch") == Path("/var/lib/backbone/ch")
    assert chdb_path("http://default:@localhost:8123/default") is None


def test_unsupported_clickhouse_dsn_is_refused() -> None:
    with pytest.raises(ClickHouseDsnError, match="BACKBONE_CLICKHOUSE_DSN"):
        make_client("postgres://localhost/db")


def test_version_command() -> None:
    from app.cli import app

    result = CliRunner().invoke(app, ["version"])
    assert result.exit_code == 0 and "backbone 0.1.0" in result.stdout
