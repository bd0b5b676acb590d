"""A sink killed mid-run (SIGKILL) and restarted loses nothing, and its views show nothing twice.

The sink runs as a subprocess (`backbone sink`) with its own chDB directory: chDB serves one
directory per process, so the test reads that directory through another subprocess after the
sink has exited.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from backbone.settings import Settings
from consumers import ddl
from tests.cli import CLI
from tests.keys import AutoKeyring
from tests.test_sink import publish, renamed_charter, sink_settings, synthetic_events

pytestmark = pytest.mark.integration

READ_VIEWS = """
import json, sys
from backbone.clickhouse.client import make_client
client = make_client(sys.argv[1])
out = {}
for database, view, table in json.loads(sys.argv[2]):
    ids = [str(r[0]) for r in client.query(f"SELECT event_id FROM `{database}`.`{view}`").result_rows]
    raw = client.query(f"SELECT count() FROM `{database}`.`{table}`").result_rows[0][0]
    out[view] = {"ids": ids, "raw": raw}
print(json.dumps(out))
"""


def _environment(settings: Settings, dsn: str) -> dict[str, str]:
    return {
        **os.environ,
        "BACKBONE_KAFKA_BOOTSTRAP": settings.kafka_bootstrap,
        "BACKBONE_SCHEMA_REGISTRY_URL": settings.schema_registry_url,
        "BACKBONE_AGREEMENTS_DIR": str(settings.agreements_dir),
        "BACKBONE_CLICKHOUSE_DSN": dsn,
        "BACKBONE_CLICKHOUSE_DATABASE_PREFIX": settings.clickhouse_database_prefix,
        "BACKBONE_FRAUD_RECIPIENT": settings.fraud_recipient,
        "BACKBONE_SINK_BATCH_ROWS": "20",  # many small batches, so the kill lands mid-run
        "BACKBONE_SINK_BATCH_SECONDS": "0.2",
        "BACKBONE_CONSUMER_SESSION_TIMEOUT_MS": "6000",
        "BACKBONE_CONSUMER_HEARTBEAT_INTERVAL_MS": "500",
        "BACKBONE_DATA_DIR": str(settings.data_dir),
    }


def _sink(env: dict[str, str], recipient: str, *extra: str) -> subprocess.Popen:
    return subprocess.Popen(
        [CLI[0], "-u", *CLI[1:], "sink", "--recipient", recipient, "--no-audit", *extra],  # unbuffered: lines are read live
        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )


def test_sink_killed_mid_run_and_restarted_loses_nothing_and_views_show_each_event_once(
    registry_settings: Settings, tmp_path: Path, unique: str
) -> None:
    directory, charter, names = renamed_charter(tmp_path, unique)
    settings = sink_settings(registry_settings, directory, unique)
    events, _ = synthetic_events(events=4000, periods=6, agencies=("tax", "welfare", "registry"))
    published = publish(settings, charter, AutoKeyring(), events)
    recipient = names["fraud"]
    released = {topic: {r["event_id"] for r in records} for topic, records in published.released.items()
                if topic.startswith(f"shared.{recipient}.")}
    total = sum(len(ids) for ids in released.values())
    env = _environment(settings, f"chdb://{tmp_path / 'sink-ch'}")

    first = _sink(env, recipient)
    landed_before_kill = 0
    deadline = time.monotonic() + 60
    assert first.stdout is not None
    while time.monotonic() < deadline:
        line = first.stdout.readline()
        match = re.search(r"landed (\d+)", line)
        if match and int(match.group(1)) > 0:
            landed_before_kill = int(match.group(1))
            break
    first.send_signal(signal.SIGKILL)
    first.wait(10)
    assert 0 < landed_before_kill < total, "the sink was killed while it still had work"

    second = _sink(env, recipient, "--until-idle", "--idle", "2")
    output, _ = second.communicate(timeout=120)
    assert second.returncode == 0, output

    database = ddl.database_name(settings.clickhouse_database_prefix, recipient)
    views = []
    for topic in released:
        event_type = topic.split(".", 2)[2]
        agreement = next(a for a in charter.agreements if a.recipient == recipient and event_type in a.event_types)
        views.append((database, ddl.view_name(agreement.id, event_type, agreement.event_types), ddl.table_name(event_type)))
    read = subprocess.run([sys.executable, "-c", READ_VIEWS, env["BACKBONE_CLICKHOUSE_DSN"], json.dumps(views)],
                          capture_output=True, text=True, timeout=60, env=env)
    assert read.returncode == 0, read.stderr
    seen = json.loads(read.stdout)
    for (topic, ids), (_, view, _) in zip(released.items(), views):
        assert sorted(seen[view]["ids"]) == sorted(ids), f"{view}: lost or duplicated events"
        assert seen[view]["raw"] >= len(ids)
