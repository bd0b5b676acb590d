"""A trail cut short fails `backbone audit verify`, naming the writer: on the real pipeline (embedded
broker, registry, a processor worker, operator actions, the audit and recipient sinks into chDB),
a copy of the landed trail has a writer deleted whole, a writer's newest checkpoints deleted, every
operator action with its checkpoints deleted, or everything deleted while the recipients' tables
hold rows; each is found against the chain heads on Kafka, the writers' state or a head the
verifier recorded, and an untouched trail still verifies. Each of these attacks passed
verification before the heads were checked."""

from __future__ import annotations

import re
import uuid
from collections.abc import Callable

import pytest
from confluent_kafka import Consumer, TopicPartition

from app.local import worker_environment
from backbone.audit import operations
from backbone.audit.heads import MISSING_CHECKPOINTS, MISSING_WRITER, OTHER_HEAD, Head, check_heads, parse_expected
from backbone.errors import BackboneError
from backbone.kafka.topics import OPERATIONS_CHECKPOINTS_TOPIC
from backbone.settings import Settings
from consumers.audit_heads import CHECKPOINT_TOPICS
from consumers.plans import CHECKPOINTS_SINK, group_id
from tests.pipeline import Landed

pytestmark = pytest.mark.integration
MUTATE = {"mutations_sync": 2}
AUDIT_TABLES = ("events", "operations", "checkpoints")


@pytest.fixture(scope="module")
def landed(landed_pipeline: Landed) -> Landed:
    """The session's landed pipeline run (tests/conftest.py): audit, operator actions and recipients landed."""
    return landed_pipeline


def _environment(settings: Settings, **extra: str) -> dict[str, str]:
    return {k: v for k, v in worker_environment(settings, **extra).items() if k.startswith("BACKBONE_")}


def _elsewhere(landed: Landed) -> dict[str, str]:
    """A verifier's host: the keyring, but not the processors' data directory."""
    return {"data_dir": str(landed.settings.data_dir / "elsewhere"), "keyring_path": str(landed.settings.keyring_path)}


def _copy(client, landed: Landed, actions_not_landed: int = 0) -> tuple[Settings, str]:  # noqa: ANN001
    """A copy of the landed deployment under another prefix: the audit and recipient tables, and the
    audit sink's position on the checkpoint topics (what it had landed), with the newest
    `actions_not_landed` operator actions (on Kafka) not landed yet. (Its settings, its audit database.)"""
    original = landed.settings
    copied = original.model_copy(update={"clickhouse_database_prefix": f"t{uuid.uuid4().hex[:8]}_"})
    sources = [f"{original.clickhouse_database_prefix}{name}" for name in ("audit", *landed.recipients)]
    tables = client.query("SELECT database, name FROM system.tables WHERE database IN {d:Array(String)} AND engine LIKE '%MergeTree'",
                          parameters={"d": sources}).result_rows
    for database, table in tables:
        target = copied.clickhouse_database_prefix + database.removeprefix(original.clickhouse_database_prefix)
        client.command(f"CREATE DATABASE IF NOT EXISTS {target}")
        client.command(f"CREATE TABLE {target}.{table} AS {database}.{table}")
        client.command(f"INSERT INTO {target}.{table} SELECT * FROM {database}.{table}")
    reader = Consumer(original.consumer_config(group_id(original, CHECKPOINTS_SINK)))
    writer = Consumer(copied.consumer_config(group_id(copied, CHECKPOINTS_SINK)))
    try:
        partitions = [tp for topic in CHECKPOINT_TOPICS
                      for tp in reader.committed([TopicPartition(topic, p) for p in
                                                  reader.list_topics(topic, timeout=10).topics[topic].partitions], timeout=10)]
        for tp in partitions:  # one checkpoint a message (one partition): the sink is that many behind
            tp.offset -= actions_not_landed if tp.topic == OPERATIONS_CHECKPOINTS_TOPIC else 0
        writer.commit(offsets=[tp for tp in partitions if tp.offset >= 0], asynchronous=False)
    finally:
        reader.close()
        writer.close()
    database = f"{copied.clickhouse_database_prefix}audit"
    if actions_not_landed:
        newest = client.query(f"SELECT max(sequence) FROM {database}.checkpoints WHERE writer = '{operations.OPERATIONS_WRITER}'").result_rows[0][0]
        _delete(client, f"ALTER TABLE {database}.operations DELETE WHERE checkpoint > {newest - actions_not_landed}")
        _delete(client, f"ALTER TABLE {database}.checkpoints DELETE WHERE writer = '{operations.OPERATIONS_WRITER}' "
                        f"AND sequence > {newest - actions_not_landed}")
    return copied, database


def _delete(client, statement: str) -> None:  # noqa: ANN001
    client.command(statement, settings=MUTATE)


def _delete_writer(client, db: str, landed: Landed) -> str:  # noqa: ANN001
    _delete(client, f"ALTER TABLE {db}.events DELETE WHERE writer = '{landed.writer}'")
    _delete(client, f"ALTER TABLE {db}.checkpoints DELETE WHERE writer = '{landed.writer}'")
    return landed.writer


def _delete_newest(client, db: str, landed: Landed) -> str:  # noqa: ANN001
    newest = client.query(f"SELECT max(sequence) FROM {db}.checkpoints WHERE writer = '{landed.writer}'").result_rows[0][0]
    assert newest >= 2
    _delete(client, f"ALTER TABLE {db}.events DELETE WHERE writer = '{landed.writer}' AND checkpoint >= {newest - 1}")
    _delete(client, f"ALTER TABLE {db}.checkpoints DELETE WHERE writer = '{landed.writer}' AND sequence >= {newest - 1}")
    return landed.writer


def _delete_operations(client, db: str, landed: Landed) -> str:  # noqa: ANN001
    _delete(client, f"ALTER TABLE {db}.operations DELETE WHERE 1")
    _delete(client, f"ALTER TABLE {db}.checkpoints DELETE WHERE writer = '{operations.OPERATIONS_WRITER}'")
    return operations.OPERATIONS_WRITER


def _delete_everything(client, db: str, landed: Landed) -> str:  # noqa: ANN001
    for table in AUDIT_TABLES:
        client.command(f"TRUNCATE TABLE {db}.{table}")
    return landed.writer


ATTACKS: dict[str, tuple[Callable, str]] = {
    "delete a whole writer": (_delete_writer, MISSING_WRITER),
    "delete a writer's newest checkpoints": (_delete_newest, MISSING_CHECKPOINTS),
    "delete every operator action and its checkpoints": (_delete_operations, MISSING_WRITER),
    "delete everything": (_delete_everything, MISSING_WRITER),
}


def _failed(output: str, kind: str, writer: str) -> bool:
    return f"FAILED writer {writer}: {kind.replace('_', ' ')}:" in output


def test_an_untouched_trail_verifies_and_prints_each_writers_head(landed: Landed, clickhouse_client, backbone_cli) -> None:  # noqa: ANN001
    copied, _ = _copy(clickhouse_client, landed)
    result = backbone_cli("audit", "verify", **_environment(copied))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "audit trail verified" in result.stdout and "chain heads on Kafka were not read" not in result.stdout
    heads = dict(re.findall(r"--expect-head (\S+)=(\d+:[0-9a-f]{64})", result.stdout))
    assert set(heads) == {landed.writer, operations.OPERATIONS_WRITER}
    again = backbone_cli("audit", "verify", *(f"--expect-head={w}={h}" for w, h in heads.items()), **_environment(copied))
    assert again.returncode == 0, again.stdout


@pytest.mark.parametrize("how", sorted(ATTACKS))
def test_a_trail_cut_short_fails_naming_the_writer(landed: Landed, clickhouse_client, backbone_cli, how: str) -> None:  # noqa: ANN001
    copied, database = _copy(clickhouse_client, landed)
    attack, kind = ATTACKS[how]
    writer = attack(clickhouse_client, database, landed)
    result = backbone_cli("audit", "verify", **_environment(copied))
    assert result.returncode == 1, result.stdout + result.stderr
    assert _failed(result.stdout, kind, writer), result.stdout
    assert "head on Kafka is checkpoint" in result.stdout


def test_everything_deleted_fails_for_every_writer_and_as_an_emptied_trail(landed: Landed, clickhouse_client,  # noqa: ANN001
                                                                           backbone_cli) -> None:
    copied, database = _copy(clickhouse_client, landed)
    _delete_everything(clickhouse_client, database, landed)
    online = backbone_cli("audit", "verify", **_environment(copied))
    assert online.returncode == 1
    assert _failed(online.stdout, MISSING_WRITER, landed.writer) and _failed(online.stdout, MISSING_WRITER, operations.OPERATIONS_WRITER)
    # no Kafka, no writer state: the recipients' rows still tell an emptied trail from an empty one
    offline = backbone_cli("audit", "verify", **_environment(copied, kafka_bootstrap="127.0.0.1:9", kafka_timeout_s="2",
                                                             **_elsewhere(landed)))
    assert offline.returncode == 1, offline.stdout + offline.stderr
    assert "empty trail: the recipients' databases hold" in offline.stdout
    assert "not checked: the chain heads on Kafka were not read" in offline.stdout


def test_offline_a_recorded_head_or_the_writers_state_still_finds_a_trail_cut_short(landed: Landed, clickhouse_client,  # noqa: ANN001
                                                                                     backbone_cli) -> None:
    copied, database = _copy(clickhouse_client, landed)
    recorded = backbone_cli("audit", "verify", **_environment(copied))
    heads = re.findall(r"--expect-head (\S+=\d+:[0-9a-f]{64})", recorded.stdout)
    _delete_newest(clickhouse_client, database, landed)
    _delete_operations(clickhouse_client, database, landed)
    no_kafka = {"kafka_bootstrap": "127.0.0.1:9", "kafka_timeout_s": "2"}
    # the processors' data directory holds the writer's state: the processor writer is found short without Kafka
    with_state = backbone_cli("audit", "verify", **_environment(copied, **no_kafka))
    assert with_state.returncode == 1
    assert _failed(with_state.stdout, MISSING_CHECKPOINTS, landed.writer) and "in the writer's state" in with_state.stdout
    # elsewhere, the heads the verifier recorded find both
    recorded_only = backbone_cli("audit", "verify", *(f"--expect-head={h}" for h in heads),
                                 **_environment(copied, **no_kafka, **_elsewhere(landed)))
    assert recorded_only.returncode == 1
    assert _failed(recorded_only.stdout, MISSING_CHECKPOINTS, landed.writer)
    assert _failed(recorded_only.stdout, MISSING_WRITER, operations.OPERATIONS_WRITER)
    assert "expected (--expect-head)" in recorded_only.stdout


def test_from_kafka_a_recorded_head_beyond_the_topics_fails_naming_the_writer(landed: Landed, backbone_cli) -> None:
    result = backbone_cli("audit", "verify", "--from-kafka", f"--expect-head={operations.OPERATIONS_WRITER}=9",
                          **_environment(landed.settings))
    assert result.returncode == 1
    assert _failed(result.stdout, MISSING_CHECKPOINTS, operations.OPERATIONS_WRITER)
    assert re.search(r"head expected \(--expect-head\) is checkpoint 9, the trail on Kafka ends at \d: \d checkpoint\(s\) missing",
                     result.stdout), result.stdout


def test_checkpoints_the_audit_sink_has_not_landed_yet_are_a_warning_not_a_failure(landed: Landed, clickhouse_client,  # noqa: ANN001
                                                                                    backbone_cli) -> None:
    # the copy's audit sink has not consumed the newest operator action's checkpoint yet (the shared run is never changed)
    copied, _ = _copy(clickhouse_client, landed, actions_not_landed=1)
    result = backbone_cli("audit", "verify", **_environment(copied))
    assert result.returncode == 0, result.stdout
    assert f"warning writer {operations.OPERATIONS_WRITER}: not landed yet: checkpoint(s)" in result.stdout


# --- the check itself, without any part ------------------------------------------------------------
def test_a_recorded_head_is_writer_sequence_and_optionally_its_hash() -> None:
    assert parse_expected("w1a2b=41:ABCDEF0123") == Head("w1a2b", 41, "abcdef0123", "expected (--expect-head)")
    assert parse_expected("operations=2").hash is None
    for bad in ("w1", "w1=", "=3", "w1=-1", "w1=3:xyz", "w 1=3"):
        with pytest.raises(BackboneError, match="WRITER=SEQ"):
            parse_expected(bad)


def test_each_writer_short_of_its_head_is_named_once_with_what_is_missing() -> None:
    chains = {"w1": {0: "aa", 1: "bb", 2: "cc"}, "operations": {0: "dd"}}
    heads = [Head("w1", 5, None, "on Kafka"), Head("w1", 2, "cc", "expected"), Head("w2", 3, None, "on Kafka"),
             Head("operations", 0, "ee", "expected")]
    found = {(f.kind, f.writer): f.detail for f in check_heads(chains, heads, "landed trail")}
    assert found == {
        (MISSING_CHECKPOINTS, "w1"): "head on Kafka is checkpoint 5, the landed trail ends at 2: 3 checkpoint(s) missing",
        (MISSING_WRITER, "w2"): "head on Kafka is checkpoint 3, the landed trail holds none of its checkpoints: 4 missing",
        (OTHER_HEAD, "operations"): "the checkpoint expected has hash ee…, the landed trail holds another one (dd…)",
    }
    assert check_heads(chains, [Head("w1", 2, "cc", "expected")], "landed trail") == []
