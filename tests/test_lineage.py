"""The processor says in OpenLineage what it enforces (issue 33): RUNNING for each agreement version in
force when a worker starts, ABORT when one is suspended, START when it is in force again, COMPLETE
when its validity ends; every event it writes validates against the vendored OpenLineage schemas and
its column lineage is the agreement's treatments. One worker's enforcement runs in this process on a
module-scoped embedded stack; the transitions' bookkeeping is also checked without it."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from app.local import provision_keyring, stack_settings
from backbone.catalog.validation import openlineage_problems
from backbone.control.agreement_changes import StatusChange, publish_status
from backbone.keys.master import encode_master_key, new_master_key
from backbone.policy.agreements import Charter, default_charter
from backbone.policy.released import released_fields
from backbone.settings import Settings, load_settings
from backbone.stack.embedded import EmbeddedStack
from processors.lineage import LineageEmitter
from tests.pipeline import read_topic


def events_in(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def wait_for(path: Path, found, timeout: float = 30.0) -> list[dict]:  # noqa: ANN001
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        events = events_in(path)
        if found(events):
            return events
        time.sleep(0.05)
    raise AssertionError(f"no such event in {path} after {timeout} s: {[(e['eventType'], e['job']['name']) for e in events_in(path)]}")


def assert_lineage_is_the_treatments(event: dict, charter: Charter) -> None:
    name, version = event["job"]["name"].split("@")
    agreement = charter.get(name, int(version))
    for event_type in agreement.event_types:
        output = next(o for o in event["outputs"] if o["name"] == f"shared.{agreement.recipient}.{event_type}")
        fields = output["facets"]["columnLineage"]["fields"]
        assert set(fields) == set(released_fields(agreement, charter.catalog.events[event_type]))
        for field, lineage in fields.items():
            (source,) = lineage["inputFields"]
            treatment = agreement.fields[field].name if field in agreement.fields else ("derive" if field == "event_id" else "keep")
            assert source["field"] == field and source["name"] == f"raw.{event_type}"
            assert source["transformations"][0]["masking"] is (treatment != "keep"), f"{agreement.key}.{field}"
            assert output["facets"]["release"]["treatments"][field] == treatment


# -- the bookkeeping, with a file transport and no stack ------------------------------------------------


def test_each_change_of_what_is_in_force_sends_its_run_event(tmp_path: Path) -> None:
    charter = default_charter()
    settings = load_settings(data_dir=tmp_path, lineage_transport="file")
    state = {"charter": charter}
    emitter = LineageEmitter(settings, lambda: state["charter"], dict)
    path = tmp_path / "lineage" / "openlineage.jsonl"
    now = datetime(2026, 6, 1, tzinfo=UTC)
    emitter.compare(now)
    started = {e["job"]["name"]: e for e in events_in(path)}
    assert {k for k, e in started.items() if e["eventType"] == "START"} == {a.key for a in charter.agreements if a.in_force_at(now)}

    state["charter"] = charter.with_status("welfare-to-research", 1, "suspended")
    emitter.compare(now)
    (abort,) = [e for e in events_in(path) if e["eventType"] == "ABORT"]
    assert abort["job"]["name"] == "welfare-to-research@1"
    assert abort["run"]["runId"] == started["welfare-to-research@1"]["run"]["runId"], "the ABORT ends the run that started"
    assert abort["run"]["facets"]["agreementState"] == {**abort["run"]["facets"]["agreementState"], "status": "suspended", "change": "suspended"}

    state["charter"] = charter
    emitter.compare(datetime(2028, 1, 2, tzinfo=UTC))  # research's validity ended on 2028-01-01
    events = events_in(path)
    assert [e["eventType"] for e in events if e["job"]["name"] == "welfare-to-research@1"] == ["START", "ABORT"], (
        "a version that ended while suspended has no run to complete")
    assert all(openlineage_problems(e) == [] for e in events)


def test_the_end_of_a_versions_validity_completes_its_run(tmp_path: Path) -> None:
    charter = default_charter()
    settings = load_settings(data_dir=tmp_path, lineage_transport="file")
    emitter = LineageEmitter(settings, lambda: charter, dict)
    emitter.compare(datetime(2027, 12, 31, tzinfo=UTC))
    emitter.compare(datetime(2028, 1, 1, tzinfo=UTC))
    events = [e for e in events_in(tmp_path / "lineage" / "openlineage.jsonl") if e["job"]["name"] == "welfare-to-research@1"]
    assert [(e["eventType"], e["run"]["facets"]["agreementState"]["change"]) for e in events] == [("START", "started"), ("COMPLETE", "expired")]
    assert events[0]["run"]["runId"] == events[1]["run"]["runId"]


def test_http_lineage_without_a_url_stops_start_up_saying_what_to_set(tmp_path: Path) -> None:
    from backbone.errors import SettingsError

    settings = load_settings(data_dir=tmp_path, lineage_transport="http")
    with pytest.raises(SettingsError, match="BACKBONE_LINEAGE_URL"):
        LineageEmitter(settings, default_charter, dict)


# -- a worker's enforcement on the embedded stack ----------------------------------------------------------


@pytest.fixture(scope="module")
def enforced(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Settings, object, Path]]:
    from processors.app import Enforcement

    root = tmp_path_factory.mktemp("lineage")
    stack = EmbeddedStack(root, broker_port=0, registry_port=0).start()
    try:
        master = new_master_key()
        settings = stack_settings(stack, root, master_key=encode_master_key(master), kafka_partitions=1)
        provision_keyring(settings, master)
        enforcement = Enforcement(settings)
        enforcement.start()
        try:
            yield settings, enforcement, root / "lineage" / "openlineage.jsonl"
        finally:
            enforcement.stop()
    finally:
        stack.stop()



@pytest.mark.integration
def test_a_starting_worker_says_running_for_every_version_in_force_with_valid_events(enforced) -> None:  # noqa: ANN001
    settings, enforcement, path = enforced
    charter = enforcement.engine.charter
    in_force = {a.key for a in charter.agreements if a.in_force_at(datetime.now(UTC))}
    events = wait_for(path, lambda es: {e["job"]["name"] for e in es if e["eventType"] == "RUNNING"} >= in_force)
    for event in events:
        assert openlineage_problems(event) == [], event["job"]["name"]
        assert_lineage_is_the_treatments(event, charter)
    assert {e["job"]["name"] for e in events if e["eventType"] == "RUNNING"} == in_force
    assert all(e["inputs"][0]["namespace"] == f"kafka://{settings.kafka_bootstrap}" for e in events)


@pytest.mark.integration
def test_a_suspension_aborts_the_run_within_a_second_and_an_activation_starts_another(enforced) -> None:  # noqa: ANN001
    settings, enforcement, path = enforced
    running = wait_for(path, lambda es: any(e["job"]["name"] == "police-to-statistics@1" for e in es))
    run = next(e for e in running if e["job"]["name"] == "police-to-statistics@1")["run"]["runId"]

    publish_status(settings, StatusChange("police-to-statistics", 1, "suspended", datetime.now(UTC), "test"))
    published = time.monotonic()
    deadline = time.monotonic() + 30
    while enforcement.engine.charter.get("police-to-statistics", 1).status != "suspended" and time.monotonic() < deadline:
        time.sleep(0.005)
    suspended_at = time.monotonic()
    events = wait_for(path, lambda es: any(e["eventType"] == "ABORT" and e["job"]["name"] == "police-to-statistics@1" for e in es))
    took = time.monotonic() - suspended_at
    print(f"ABORT {took * 1000:.0f} ms after the engine denied, {(time.monotonic() - published) * 1000:.0f} ms after the status record was acknowledged")
    abort = next(e for e in events if e["eventType"] == "ABORT" and e["job"]["name"] == "police-to-statistics@1")
    assert took < 1.0, f"ABORT written {took:.3f} s after the processors denied the agreement"
    assert abort["run"]["runId"] == run
    assert openlineage_problems(abort) == []

    publish_status(settings, StatusChange("police-to-statistics", 1, "active", datetime.now(UTC), "test"))
    events = wait_for(path, lambda es: any(e["eventType"] == "START" and e["job"]["name"] == "police-to-statistics@1" for e in es))
    start = next(e for e in events if e["eventType"] == "START" and e["job"]["name"] == "police-to-statistics@1")
    assert start["run"]["runId"] != run, "a new period in force is a new run"
    assert openlineage_problems(start) == []


@pytest.mark.integration
def test_the_kafka_transport_writes_the_events_to_its_topic(enforced, tmp_path: Path) -> None:  # noqa: ANN001
    settings, enforcement, _ = enforced
    kafka = settings.model_copy(update={"lineage_transport": "kafka", "lineage_topic": "lineage.test"})
    emitter = LineageEmitter(kafka, lambda: enforcement.engine.charter, dict)
    emitter.compare(datetime.now(UTC))
    emitter.stop()
    messages = read_topic(settings, "lineage.test", lambda ms: len(ms) >= emitter.sent > 0, timeout=20)
    assert len(messages) == emitter.sent
    assert all(openlineage_problems(json.loads(m.value())) == [] for m in messages)
