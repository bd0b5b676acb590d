"""Oversight finds every disclosure about one person by national id, and only those."""

from __future__ import annotations

from pathlib import Path

import pytest

from backbone.events.serde import registry_client
from backbone.settings import Settings
from consumers.audit import disclosures, subject_token
from consumers.sink import Sink, audit_plan
from tests.keys import AutoKeyring
from tests.test_sink import publish, renamed_charter, sink_settings, synthetic_events

pytestmark = pytest.mark.integration


def test_audit_subject_lists_every_disclosure_about_the_person(
    registry_settings: Settings, clickhouse_client, tmp_path: Path, unique: str  # noqa: ANN001
) -> None:
    directory, charter, names = renamed_charter(tmp_path, unique)
    settings = sink_settings(registry_settings, directory, unique)
    keyring = AutoKeyring()
    events, _ = synthetic_events(events=300)
    published = publish(settings, charter, keyring, events, audit=True)
    sink = Sink(settings, audit_plan(settings), clickhouse_client, registry_client(settings))
    sink.run_until_idle(idle_s=1.5, timeout_s=60)
    sink.close()

    # the person with the most disclosures in the run
    counts: dict[str, int] = {}
    subject_of = {record["event_id"]: record.get("national_id") for _, record in published.events}
    for row in published.audit:
        if row["decision"] == "permit" and subject_of.get(row["event_id"]):
            counts[subject_of[row["event_id"]]] = counts.get(subject_of[row["event_id"]], 0) + 1
    national_id = max(counts, key=counts.get)
    expected = sorted(
        (row["recipient"], row["event_type"], row["agreement_id"], row["agreement_version"], tuple(row["purposes"]), tuple(row["released_fields"]))
        for row in published.audit if row["decision"] == "permit" and subject_of.get(row["event_id"]) == national_id
    )
    found = disclosures(clickhouse_client, settings.clickhouse_database_prefix, subject_token(keyring, national_id), charter)
    assert sorted((d.recipient, d.event_type, d.agreement_id, d.agreement_version, d.purposes, d.fields) for d in found) == expected
    assert len(expected) >= 2
    # each disclosure names the recipient's own id for the event, so oversight can find the row
    assert all(d.recipient_event_id and d.recipient_event_id != d.source_event_id for d in found)
    assert set(names.values()) >= {d.recipient for d in found}
