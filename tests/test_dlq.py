"""Dead letters under the one contract, and their replay after the cause is fixed: every replayed
event lands once, however often it is replayed, and the replay is an audited operator action."""

from __future__ import annotations

from pathlib import Path

import pytest

from backbone.events.serde import registry_client
from backbone.kafka import dlq
from backbone.settings import Settings
from consumers import ddl
from consumers.sink import Sink, recipient_plan
from tests.keys import AutoKeyring
from tests.test_sink import publish, renamed_charter, sink_settings, synthetic_events

pytestmark = pytest.mark.integration


def test_headers_refuse_an_unknown_reason_or_stage() -> None:
    with pytest.raises(ValueError, match="unknown dead-letter reason"):
        dlq.headers(dlq.SINK, "something_else", "t")
    with pytest.raises(ValueError, match="unknown dead-letter stage"):
        dlq.headers("elsewhere", "empty_value", "t")


def test_a_replay_after_the_fix_lands_every_dead_letter_once(
    registry_settings: Settings, clickhouse_client, tmp_path: Path, unique: str  # noqa: ANN001
) -> None:
    directory, charter, names = renamed_charter(tmp_path, unique)
    settings = sink_settings(registry_settings, directory, unique)
    events, _ = synthetic_events(events=300, agencies=("tax",))
    sent = publish(settings, charter, AutoKeyring(), events)
    topic = next(t for t in sent.released if t.startswith(f"shared.{names['fraud']}.tax."))
    count = len(sent.released[topic])
    database = ddl.database_name(settings.clickhouse_database_prefix, names["fraud"])
    table = ddl.qualified(database, "tax_income_declared")

    # the cause: someone created the table with a column of the wrong type before the sink ran
    plan = recipient_plan(settings, charter, names["fraud"])
    clickhouse_client.command(ddl.create_database_sql(database))
    clickhouse_client.command(f"CREATE TABLE {table} (event_id UUID, declared_income String, _landed_at DateTime DEFAULT now()) "
                              "ENGINE = ReplacingMergeTree ORDER BY event_id")
    first = Sink(settings, plan, clickhouse_client, registry_client(settings))
    stats = first.run_until_idle(idle_s=1.5, timeout_s=60)
    first.close()
    assert stats.dead_lettered == count and stats.landed == 0
    letters = dlq.select(dlq.entries(settings, dlq.SINK), reason="type_mismatch", source_topic=topic)
    assert len(letters) == count and all("declared_income" in (e.letter.detail or "") for e in letters)

    # the fix, then the replay (twice: an operator may run it again); the sink resumes from its commit
    clickhouse_client.command(f"ALTER TABLE {table} MODIFY COLUMN declared_income Float64")
    assert dlq.replay(settings, letters) == count
    assert dlq.replay(settings, letters) == count
    second = Sink(settings, plan, clickhouse_client, registry_client(settings))
    stats = second.run_until_idle(idle_s=1.5, timeout_s=60)
    second.close()
    assert stats.dead_lettered == 0 and stats.landed == 2 * count
    rows = clickhouse_client.query(f"SELECT count(), uniqExact(event_id) FROM {table} FINAL").result_rows[0]
    assert tuple(rows) == (count, count), "each replayed event shows once"

    # the operator's view of the same entries: by reason, one entry, and a dry run of the replay
    import os
    import subprocess
    import sys

    from app.local import worker_environment

    env = {**os.environ, **worker_environment(settings), "COLUMNS": "250", "BACKBONE_IDENTITY": "op-7"}

    def backbone(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-c", "from app.cli import main; main()", *args],
                              capture_output=True, text=True, env=env, timeout=120)

    listed = backbone("dlq", "list", "--stage", "sink", "--reason", "type_mismatch")
    assert listed.returncode == 0, listed.stderr
    assert topic in listed.stdout and "type_mismatch" in listed.stdout
    shown = backbone("dlq", "show", letters[0].position)
    assert shown.returncode == 0 and "type_mismatch" in shown.stdout and "bytes" in shown.stdout
    assert letters[0].letter.value.hex()[:40] not in shown.stdout, "content is never shown"
    dry = backbone("dlq", "replay", "--stage", "sink", "--reason", "type_mismatch", "--source", topic, "--why", "fixed", "--dry-run")
    assert dry.returncode == 0 and f"{count} dead letters would be replayed" in dry.stdout
    unknown = backbone("dlq", "replay", "--stage", "sink", "--reason", "nonsense", "--why", "x")
    assert unknown.returncode == 1 and "unknown reason code" in unknown.stderr
