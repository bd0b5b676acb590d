"""The verifiable audit trail on the real pipeline: a processor worker (SIGKILLed right after a wave
of events was produced, so most likely mid-batch, and restarted) seals its batches, operator
actions are sealed in the `operations` chain, the audit sinks land records, actions and
checkpoints in chDB, and verification holds from ClickHouse and from Kafka; then each kind of
tampering with a copy of the landed trail (decisions and actions) is detected and named, and a
receipt verifies offline until it is altered."""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
import uuid
from collections.abc import Callable
from html import escape
from pathlib import Path

import pytest

from app.local import worker_environment
from app.portal import records as portal_records
from app.portal import views as portal_views
from backbone.audit import log, operations
from backbone.audit.log import Checkpoint, CheckpointCodec
from backbone.audit.receipts import verify_receipt
from backbone.events.catalog import AUDIT_CHECKPOINT, Catalog
from backbone.keys.keyring import Keyring
from backbone.policy.agreements import load_agreements
from backbone.quality.gating import release_event_id
from backbone.settings import PROJECT_ROOT, Settings
from consumers.audit import disclosures
from consumers.audit_kafka import verify_kafka
from consumers.audit_trail import ClickHouseTrail
from tests.pipeline import Landed

pytestmark = pytest.mark.integration
MUTATE = {"mutations_sync": 2}


@pytest.fixture(scope="module")
def landed(landed_pipeline: Landed) -> Landed:
    """The session's landed pipeline run (tests/conftest.py): a worker crashed mid-run, operator actions."""
    return landed_pipeline


def trail_of(client, landed: Landed, prefix: str | None = None) -> ClickHouseTrail:  # noqa: ANN001
    return ClickHouseTrail(client, prefix if prefix is not None else landed.settings.clickhouse_database_prefix, landed.catalog)


def test_the_trail_a_real_pipeline_landed_verifies(landed: Landed, clickhouse_client) -> None:  # noqa: ANN001
    report = trail_of(clickhouse_client, landed).verify(landed.keys)
    assert report.ok, [str(f) for f in report.failures]
    assert len(report.writers - {operations.OPERATIONS_WRITER}) == 1  # one worker's chain, across the crash
    assert report.operations == landed.actions and operations.OPERATIONS_WRITER in report.writers
    audit = f"{landed.settings.clickhouse_database_prefix}audit"
    decisions = clickhouse_client.query(f"SELECT count() FROM {audit}.decisions").result_rows[0][0]
    # every event's record verifies; a batch replayed after the crash may count twice (until merged)
    assert report.records >= landed.events and report.decisions >= decisions
    assert report.checkpoints >= 4
    # the first checkpoint after the crash names the one that was in flight
    assert clickhouse_client.query(f"SELECT count() FROM {audit}.checkpoints WHERE interrupted IS NOT NULL").result_rows[0][0] == 1


def test_the_topics_verify_as_the_database_does(landed: Landed, clickhouse_client) -> None:  # noqa: ANN001
    from_kafka = verify_kafka(landed.settings, landed.catalog, landed.keys)
    from_clickhouse = trail_of(clickhouse_client, landed).verify(landed.keys)
    assert from_kafka.ok, [str(f) for f in from_kafka.failures]
    assert from_kafka.writers == from_clickhouse.writers
    assert from_kafka.operations == from_clickhouse.operations == landed.actions
    # the topics keep every copy of a replayed batch; ClickHouse may have merged some away
    assert from_kafka.records >= from_clickhouse.records >= landed.events


# --- tampering with a copy of the landed trail -------------------------------------------------
def _copy(client, landed: Landed) -> tuple[str, str]:  # noqa: ANN001
    """A copy of the landed audit database: (its prefix, its database)."""
    prefix = f"t{uuid.uuid4().hex[:8]}_"
    source, copy = f"{landed.settings.clickhouse_database_prefix}audit", f"{prefix}audit"
    client.command(f"CREATE DATABASE {copy}")
    for table in ("events", "operations", "checkpoints"):
        client.command(f"CREATE TABLE {copy}.{table} AS {source}.{table}")
        client.command(f"INSERT INTO {copy}.{table} SELECT * FROM {source}.{table}")
    return prefix, copy


def _largest(client, database: str) -> tuple[str, int, int]:  # noqa: ANN001
    """(writer, sequence, records) of a checkpoint in the middle of the chain holding several records."""
    interrupted = f"SELECT assumeNotNull(interrupted) FROM {database}.checkpoints WHERE interrupted IS NOT NULL"
    return tuple(client.query(f"SELECT writer, sequence, records FROM {database}.checkpoints WHERE records >= 2 "
                              f"AND sequence > 0 AND sequence NOT IN ({interrupted}) ORDER BY sequence LIMIT 1").result_rows[0])


def _edit_field(client, db: str, w: str, s: int, n: int) -> None:  # noqa: ANN001
    client.command(f"ALTER TABLE {db}.events UPDATE decided_at = decided_at - INTERVAL 1 DAY "
                   f"WHERE writer = '{w}' AND checkpoint = {s} AND leaf = 1", settings=MUTATE)


def _delete_row(client, db: str, w: str, s: int, n: int) -> None:  # noqa: ANN001
    client.command(f"ALTER TABLE {db}.events DELETE WHERE writer = '{w}' AND checkpoint = {s} AND leaf = {n - 1}", settings=MUTATE)


def _swap_rows(client, db: str, w: str, s: int, n: int) -> None:  # noqa: ANN001
    client.command(f"ALTER TABLE {db}.events UPDATE leaf = if(leaf = 0, 1, 0) "
                   f"WHERE writer = '{w}' AND checkpoint = {s} AND leaf IN (0, 1)", settings=MUTATE)


def _forge_row(client, db: str, w: str, s: int, n: int) -> None:  # noqa: ANN001
    # (a subquery: ClickHouse's WHERE would see the replaced `leaf`)
    client.command(f"INSERT INTO {db}.events SELECT * REPLACE (generateUUIDv4() AS event_id, {n} AS leaf) "
                   f"FROM (SELECT * FROM {db}.events WHERE writer = '{w}' AND checkpoint = {s} AND leaf = 0)")


def _drop_checkpoint(client, db: str, w: str, s: int, n: int) -> None:  # noqa: ANN001
    client.command(f"ALTER TABLE {db}.checkpoints DELETE WHERE writer = '{w}' AND sequence = {s}", settings=MUTATE)


def _resign(client, db: str, w: str, s: int, n: int, catalog: Catalog) -> None:  # noqa: ANN001
    """A forger's own checkpoint for the batch: a record fewer, signed with a key of its own."""
    schema = catalog.internal_schema(AUDIT_CHECKPOINT)
    names = ", ".join(item["name"] for item in schema["fields"])
    row = client.query(f"SELECT {names} FROM {db}.checkpoints WHERE writer = '{w}' AND sequence = {s}").result_rows[0]
    original = Checkpoint.from_record(dict(zip([item["name"] for item in schema["fields"]], row, strict=True)))
    _, key = Keyring.generate(signers=["processor"]).signing_key()
    forged = CheckpointCodec(schema).seal(writer=w, sequence=s, leaves=[b"\x00" * 32] * (n - 1), previous=original.previous,
                                          schema=original.schema, key_id=original.key_id, key=key)
    client.command(f"ALTER TABLE {db}.checkpoints UPDATE records = {forged.records}, root = '{forged.root}', "
                   f"leaves = '{forged.leaves}', signature = '{forged.signature}' WHERE writer = '{w}' AND sequence = {s}",
                   settings=MUTATE)


TAMPERING: dict[str, tuple[Callable, str]] = {
    "edit a field": (_edit_field, log.EDITED_RECORD),
    "delete a row": (_delete_row, log.MISSING_RECORD),
    "swap two rows": (_swap_rows, log.REORDERED),
    "insert a forged row": (_forge_row, log.EXTRA_RECORD),
    "drop a checkpoint": (_drop_checkpoint, log.GAP),
    "re-sign with another key": (_resign, log.FORGED_SIGNATURE),
}


@pytest.mark.parametrize("how", sorted(TAMPERING))
def test_each_tampering_of_the_landed_trail_is_detected_and_named(landed: Landed, clickhouse_client, how: str) -> None:  # noqa: ANN001
    prefix, database = _copy(clickhouse_client, landed)
    assert trail_of(clickhouse_client, landed, prefix).verify(landed.keys).ok  # the copy verifies before
    writer, sequence, records = _largest(clickhouse_client, database)
    tamper, kind = TAMPERING[how]
    if tamper is _resign:
        tamper(clickhouse_client, database, writer, sequence, records, landed.catalog)
    else:
        tamper(clickhouse_client, database, writer, sequence, records)
    report = trail_of(clickhouse_client, landed, prefix).verify(landed.keys)
    assert not report.ok
    assert (kind, writer, sequence) in {(f.kind, f.writer, f.sequence) for f in report.failures}, [str(f) for f in report.failures]


OPERATIONS_TAMPERING = {
    "edit an action's reason": ("ALTER TABLE {db}.operations UPDATE reason = 'routine check' WHERE checkpoint = 1", log.EDITED_RECORD, 1),
    "delete an action": ("ALTER TABLE {db}.operations DELETE WHERE checkpoint = 1", log.MISSING_RECORD, 1),
    "drop an action's checkpoint": ("ALTER TABLE {db}.checkpoints DELETE WHERE writer = 'operations' AND sequence = 1", log.GAP, 1),
    "edit an action's details": ("ALTER TABLE {db}.operations UPDATE details = mapUpdate(details, map('rows_deleted', '0')) "
                                 "WHERE checkpoint = 2", log.EDITED_RECORD, 2),
}


@pytest.mark.parametrize("how", sorted(OPERATIONS_TAMPERING))
def test_each_tampering_of_the_landed_operator_actions_is_detected_and_named(landed: Landed, clickhouse_client, how: str) -> None:  # noqa: ANN001
    prefix, database = _copy(clickhouse_client, landed)
    assert trail_of(clickhouse_client, landed, prefix).verify(landed.keys).operations == landed.actions
    statement, kind, sequence = OPERATIONS_TAMPERING[how]
    clickhouse_client.command(statement.format(db=database), settings=MUTATE)
    report = trail_of(clickhouse_client, landed, prefix).verify(landed.keys)
    assert not report.ok
    found = {(f.kind, f.writer, f.sequence) for f in report.failures}
    assert (kind, operations.OPERATIONS_WRITER, sequence) in found, [str(f) for f in report.failures]


def test_records_released_when_their_window_closed_are_sealed_and_have_receipts(landed: Landed, clickhouse_client) -> None:  # noqa: ANN001
    audit = f"{landed.settings.clickhouse_database_prefix}audit"
    waited = [event_id for (event_id,) in clickhouse_client.query(
        f"SELECT toString(event_id) FROM {audit}.decisions WHERE recipient = 'fraud' AND reason = 'quality_pending'").result_rows]
    released = dict(clickhouse_client.query(
        f"SELECT toString(event_id), decision FROM {audit}.decisions WHERE recipient = 'fraud' AND event_id IN "
        "(SELECT toUUID(arrayJoin({ids:Array(String)})))", parameters={"ids": [release_event_id(e) for e in waited]}).result_rows)
    # the restarted worker released its window as it stopped; the killed worker's window stays held
    assert waited and 0 < len(released) < len(set(waited)) and set(released.values()) == {"permit"}
    event_id = next(e for e in waited if release_event_id(e) in released)
    receipt = trail_of(clickhouse_client, landed).receipt(event_id, "fraud", landed.keys)
    assert verify_receipt(receipt, CheckpointCodec(landed.catalog.internal_schema(AUDIT_CHECKPOINT)), landed.keys) == []
    assert receipt["decision"]["outcome"] == "permit" and receipt["record"]["event_id"] == release_event_id(event_id)


def test_a_subjects_gated_record_is_listed_as_one_story_its_wait_naming_its_release(landed: Landed, clickhouse_client) -> None:  # noqa: ANN001
    """`audit subject` and the portal pair a record that waited for its quality window with its release
    (audited under an id the person never saw), from the audit rows alone; an unreleased wait says so."""
    prefix = landed.settings.clickhouse_database_prefix
    waits = clickhouse_client.query(f"SELECT toString(event_id), subject_token FROM {prefix}audit.decisions "
                                    "WHERE recipient = 'fraud' AND reason = 'quality_pending'").result_rows
    released = {e for (e,) in clickhouse_client.query(
        f"SELECT toString(event_id) FROM {prefix}audit.decisions WHERE recipient = 'fraud' AND event_id IN "
        "(SELECT toUUID(arrayJoin({ids:Array(String)})))", parameters={"ids": [release_event_id(e) for e, _ in waits]}).result_rows}
    charter = load_agreements(landed.settings.agreements_dir, landed.catalog)
    for wanted in (True, False):  # a released wait, and one its killed worker still holds
        event_id, token = next((e, t) for e, t in waits if (release_event_id(e) in released) is wanted)
        found = [d for d in disclosures(clickhouse_client, prefix, token, charter) if d.recipient == "fraud"]
        wait, = [d for d in found if d.source_event_id == event_id]
        assert wait.outcome == "quality_pending" and not wait.disclosed and wait.fields == ()
        if wanted:
            assert wait.story.startswith("waited for its quality window: released ") and release_event_id(event_id) in wait.story
            release, = [d for d in found if d.source_event_id == release_event_id(event_id)]
            assert release.disclosed and release.story == f"releases event {event_id}, which waited for its quality window"
        else:
            assert "not released yet" in wait.story and not [d for d in found if d.source_event_id == release_event_id(event_id)]
        entry, = [e for e in portal_records.entries(clickhouse_client, prefix, [token], charter)
                  if e.event_id == event_id and e.recipient == "fraud"]
        assert entry.outcome == "quality_pending" and entry.story == wait.story and entry.fields == ()
        if wanted:  # the citizen sees the release as the disclosure it is, naming the wait it ends
            shown, = [e for e in portal_records.entries(clickhouse_client, prefix, [token], charter)
                      if e.event_id == release_event_id(event_id) and e.recipient == "fraud"]
            assert shown.outcome == "permit" and shown.story == release.story
            page = portal_views.disclosures([entry, shown], [entry, shown], {}, {}, "csrf")
            assert escape(wait.story) in page and escape(release.story) in page and page.count('class="entry"') == 2
            assert entry.to_json({})["story"] == wait.story


# --- receipts and the command line -------------------------------------------------------------
def _backbone(settings: Settings, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", "from app.cli import main; main()", *args], capture_output=True, text=True,
                          env={**worker_environment(settings), "COLUMNS": "200"}, timeout=180, cwd=PROJECT_ROOT)


def test_a_receipt_verifies_offline_with_the_published_key_and_fails_once_altered(
    landed: Landed, clickhouse_client, tmp_path: Path  # noqa: ANN001
) -> None:
    audit = f"{landed.settings.clickhouse_database_prefix}audit"
    event_id, recipient = clickhouse_client.query(f"SELECT toString(event_id), recipient FROM {audit}.decisions "
                                                  "WHERE decision = 'permit' LIMIT 1").result_rows[0]
    receipt = trail_of(clickhouse_client, landed).receipt(event_id, recipient, landed.keys)
    codec = CheckpointCodec(landed.catalog.internal_schema(AUDIT_CHECKPOINT))
    assert verify_receipt(receipt, codec, landed.keys) == []
    assert receipt["decision"]["outcome"] == "permit" and receipt["record"]["event_id"] == event_id

    keys_file, good, altered = tmp_path / "keys.json", tmp_path / "receipt.json", tmp_path / "altered.json"
    published = _backbone(landed.settings, "audit", "keys", "--output", str(keys_file))
    assert published.returncode == 0, published.stderr
    good.write_text(json.dumps(receipt))
    changed = json.loads(json.dumps(receipt))
    changed["record"]["decided_at"] = changed["record"]["decided_at"].replace("20", "19", 1)
    altered.write_text(json.dumps(changed))
    holds = _backbone(landed.settings, "audit", "verify-receipt", str(good), "--keys", str(keys_file))
    assert holds.returncode == 0 and "receipt holds" in holds.stdout, holds.stdout + holds.stderr
    fails = _backbone(landed.settings, "audit", "verify-receipt", str(altered), "--keys", str(keys_file))
    assert fails.returncode == 1 and "record shown differs" in fails.stdout


def test_audit_verify_from_kafka_exits_0_and_reports_the_counts(landed: Landed, tmp_path: Path) -> None:
    keys_file = tmp_path / "keys.json"
    assert _backbone(landed.settings, "audit", "keys", "--output", str(keys_file)).returncode == 0
    assert set(json.loads(keys_file.read_text())["keys"][0]) >= {"key_id", "algorithm", "public"}
    result = _backbone(landed.settings, "audit", "verify", "--from-kafka", "--keys", str(keys_file))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "audit trail verified" in result.stdout
    forged_keys = tmp_path / "forged.json"
    entry = json.loads(keys_file.read_text())
    signer = next(key for key in entry["keys"] if key["owner"] == "processor")  # the shared operations key signs nothing new
    signer["public"] = base64.b64encode(os.urandom(32)).decode()
    forged_keys.write_text(json.dumps(entry))
    refused = _backbone(landed.settings, "audit", "verify", "--from-kafka", "--keys", str(forged_keys))
    assert refused.returncode == 1 and "forged signature" in refused.stdout


def test_a_receipt_for_something_that_is_not_an_event_id_is_one_clear_line(landed: Landed) -> None:
    result = _backbone(landed.settings, "audit", "receipt", "not-an-event", "--recipient", "fraud")
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines() == ["error: 'not-an-event' is not an event id (a UUID, as `audit subject` and the audit tables show it)"]
