"""Records of an agreement that requires quality are judged by their own window (issue 32): while the
window is open they wait in the pending topic (audited `quality_pending`, nothing disclosed); when it
closes a failing window's records are held (or all flagged), a passing window's are released and
audited then, and a subject who withdrew consent or was erased meanwhile gets nothing released. A
worker stopped mid-window releases nothing of it; its window is listed as held."""

from __future__ import annotations

import json
import random
import uuid
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import yaml
from confluent_kafka import Producer
from hypothesis import given
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families
from pydantic import ValidationError

from backbone.events.catalog import Catalog, load_catalog
from backbone.events.serde import Decoder, LocalSchemas, encoder_for
from backbone.kafka.topics import (
    AUDIT_TOPIC,
    QUALITY_BREACHES_TOPIC,
    QUALITY_PENDING_TOPIC,
    QUALITY_TOPIC,
    Topics,
    raw_topic,
    shared_topic,
)
from backbone.keys.keyring import Keyring
from backbone.policy.agreements import load_agreements
from backbone.policy.decision import ConsentState, DictConsent, DictErasures, NoConsent
from backbone.policy.engine import PolicyEngine
from backbone.quality.checks import QualityMonitor
from backbone.quality.contract import load_quality, parse_threshold
from backbone.quality.gating import (
    CLOSED_HEADER,
    PROGRESS_HEADER,
    PendingWindow,
    below_bars,
    list_pending,
    progress_marker,
    release_event_id,
)
from backbone.quality.window import WindowState, hour_of
from backbone.settings import PROJECT_ROOT, Settings
from backbone.stack.embedded import EmbeddedBroker
from backbone.telemetry import metrics
from consumers.audit import gated_story
from processors.dataplane import DataPlane
from processors.quality_release import listing, pending_topic_config
from processors.router import QUALITY_HEADER, Output, Router
from producers.synthetic.samples import sample_event
from tests.pipeline import read_topic

AGREEMENTS = PROJECT_ROOT / "agreements"
CLAIM = "welfare.benefit_claimed"
HOUR = datetime(2026, 12, 7, 9, 0, tzinfo=UTC)
FRAUD_TOPIC = shared_topic("fraud", CLAIM)
RESEARCH_TOPIC = shared_topic("research", CLAIM)
BARS = {"completeness": ">= 98"}


@pytest.fixture(scope="module")
def own_kafka(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A broker of this module's own: its tests' audit records are encoded by routers whose schema ids
    are not the session registry's, and `audit verify` of the session's audit topic (test_dp) must
    not read them."""
    with EmbeddedBroker(tmp_path_factory.mktemp("pending-broker")) as broker:
        yield broker.bootstrap


@pytest.fixture(scope="module")
def catalog() -> Catalog:
    return load_catalog(PROJECT_ROOT / "schemas")


def gated_router(catalog: Catalog, tmp_path: Path, mode: str = "hold", gated: str = "welfare_to_fraud.yaml",
                 erasures: DictErasures | None = None, recipient: str | None = None) -> Router:
    for path in AGREEMENTS.glob("*.yaml"):
        (tmp_path / path.name).write_text(path.read_text())
    data = yaml.safe_load((AGREEMENTS / gated).read_text())
    data = {**data, "require_quality": BARS, "on_quality_breach": mode, **({"recipient": recipient} if recipient else {})}
    (tmp_path / gated).write_text(yaml.safe_dump(data))
    charter = load_agreements(tmp_path, catalog)
    keyring = Keyring.for_charter(charter)
    router = Router(catalog, PolicyEngine(charter, keyring, erasures=erasures), LocalSchemas(), keyring)
    router.quality = QualityMonitor(load_quality(PROJECT_ROOT / "schemas", catalog).values())
    return router


def claims(catalog: Catalog, now: datetime, n: int, missing: int, seed: int, basis: str = "public_task",
           purpose: str = "fraud_prevention_and_detection") -> list[dict[str, Any]]:
    rng = random.Random(seed)
    records = []
    for index in range(n):
        record = sample_event(catalog.events[CLAIM], rng)
        record.update(event_id=str(uuid.UUID(int=rng.getrandbits(128))), occurred_at=now - timedelta(minutes=1),
                      benefit_type="unemployment",
                      governance={"lawful_basis": basis, "purposes": [purpose], "consent_id": "c-1" if basis == "consent" else None})
        if index < missing:
            record["bank_account"] = ""  # a planted completeness drop
        records.append(record)
    return records


def route(router: Router, catalog: Catalog, records: list[dict[str, Any]], now: datetime,
          consent: ConsentState | None = None) -> list[Output]:
    encode = encoder_for(router.schemas, f"{raw_topic(CLAIM)}-value", catalog.events[CLAIM].avro)
    outputs = []
    for record in records:
        outputs += router.route(raw_topic(CLAIM), b"k", encode(record), None, consent or NoConsent(), now)
    return outputs


def close_and_release(router: Router, pending: list[Output], now: datetime, consent: ConsentState | None = None) -> list[Output]:
    """What the data plane does when the hour ends: close the windows, then release each judged
    window's pending records (here from memory; `test_a_worker_stopped_mid_window...` reads Kafka)."""
    outputs = router.quality_outputs(now)
    for window in router.gate.due():
        outcomes: Counter[str] = Counter()
        mine = [(o.value, o.headers) for o in pending if o.topic == QUALITY_PENDING_TOPIC and o.key == window.key]
        outputs += router.gate.release(window, mine, consent or NoConsent(), now, outcomes)
        outputs.append(router.gate.finish(window, outcomes))
    return outputs


def outcomes_for(router: Router, outputs: list[Output], recipient: str) -> list[str]:
    decode = Decoder(router.schemas)
    return [d["outcome"] for o in outputs if o.topic == AUDIT_TOPIC
            for d in decode(o.value).record["decisions"] if d["recipient"] == recipient]


def test_a_failing_windows_own_records_are_held_and_the_provider_told_as_it_closes(catalog: Catalog, tmp_path: Path) -> None:
    router = gated_router(catalog, tmp_path, "hold")
    routed = route(router, catalog, claims(catalog, HOUR, 50, missing=20, seed=1), HOUR + timedelta(minutes=5))
    assert not [o for o in routed if o.topic == FRAUD_TOPIC]  # nothing while the window is open
    pending = [o for o in routed if o.topic == QUALITY_PENDING_TOPIC]
    assert len(pending) == 50 and {o.key for o in pending} == {PendingWindow.of(router.worker_id, CLAIM, HOUR).key}
    assert set(outcomes_for(router, routed, "fraud")) == {"quality_pending"}  # audited: not disclosed (yet)
    for o in pending:  # the key and headers name no one
        assert dict(o.headers) == {"recipients": b"fraud"}
    closing = close_and_release(router, pending, HOUR + timedelta(hours=1))
    assert not [o for o in closing if o.topic == FRAUD_TOPIC]  # held: not one record of the failing window
    breach, = [o for o in closing if o.topic == QUALITY_BREACHES_TOPIC]  # within the window's close
    event = json.loads(breach.value)
    assert event["agreements"][0]["dimensions"] == ["completeness"] and event["agreements"][0]["records"] == "held"
    released = [o for o in closing if o.topic == AUDIT_TOPIC and o.key != CLAIM.encode()]
    assert len(released) == 50 and set(outcomes_for(router, released, "fraud")) == {"quality_breach"}
    marker, = [o for o in closing if o.topic == QUALITY_PENDING_TOPIC]
    assert json.loads(dict(marker.headers)[CLOSED_HEADER])["outcomes"] == {"held": 50}
    assert router.gate.due() == []


def test_two_failing_hours_closed_at_once_each_tell_the_provider(catalog: Catalog, tmp_path: Path) -> None:
    """A worker that closes two hours' windows in one go (a lull, a slow batch) sends a breach event for
    each failing hour, not only for the newest."""
    router = gated_router(catalog, tmp_path, "hold")
    route(router, catalog, claims(catalog, HOUR, 50, missing=20, seed=2), HOUR + timedelta(minutes=5))
    route(router, catalog, claims(catalog, HOUR + timedelta(hours=1), 50, missing=20, seed=3), HOUR + timedelta(minutes=65))
    closing = router.quality_outputs(HOUR + timedelta(hours=2))
    hours = sorted(json.loads(o.value)["hour"] for o in closing if o.topic == QUALITY_BREACHES_TOPIC)
    assert hours == [HOUR.isoformat(), (HOUR + timedelta(hours=1)).isoformat()]


def test_a_flagging_agreement_delivers_every_record_of_its_failing_window_flagged(catalog: Catalog, tmp_path: Path) -> None:
    router = gated_router(catalog, tmp_path, "flag")
    routed = route(router, catalog, claims(catalog, HOUR, 40, missing=10, seed=2), HOUR + timedelta(minutes=5))
    assert not [o for o in routed if o.topic == FRAUD_TOPIC]
    shared = [o for o in close_and_release(router, routed, HOUR + timedelta(hours=1)) if o.topic == FRAUD_TOPIC]
    assert len(shared) == 40 and all((QUALITY_HEADER, b"breach:completeness") in o.headers for o in shared)


def test_a_passing_windows_records_arrive_when_it_closes_and_are_audited_as_disclosed_then(catalog: Catalog, tmp_path: Path) -> None:
    router = gated_router(catalog, tmp_path, "hold")
    records = claims(catalog, HOUR, 30, missing=0, seed=3)
    routed = route(router, catalog, records, HOUR + timedelta(minutes=5))
    assert router.quality_outputs(HOUR + timedelta(minutes=59)) == []  # still open: nothing released
    closing = close_and_release(router, routed, HOUR + timedelta(hours=1))
    shared = [o for o in closing if o.topic == FRAUD_TOPIC]
    assert len(shared) == 30 and not any(QUALITY_HEADER == name for o in shared for name, _ in o.headers)
    decode = Decoder(router.schemas)
    releases = [decode(o.value).record for o in closing if o.topic == AUDIT_TOPIC and o.key != CLAIM.encode()]
    assert sorted(str(r["event_id"]) for r in releases) == sorted(release_event_id(r["event_id"]) for r in records)
    for release in releases:
        assert release["decided_at"] == HOUR + timedelta(hours=1)  # disclosed when released
        fraud, = release["decisions"]
        assert fraud["outcome"] == "permit" and fraud["recipient_event_id"] and fraud["key_ids"]
    # a record of the next hour waits for the next window, whatever the last one scored
    later = route(router, catalog, claims(catalog, HOUR, 3, missing=0, seed=4), HOUR + timedelta(hours=1, minutes=1))
    assert not [o for o in later if o.topic == FRAUD_TOPIC]


def scraped(router: Router) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """The processor's metrics as Prometheus reads them: (name, sorted labels) -> value."""
    registry = CollectorRegistry()
    registry.register(metrics.ProcessorCollector(SimpleNamespace(router=router, data_plane=None, readers=[])))
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(generate_latest(registry).decode()) for s in family.samples}


@pytest.mark.parametrize(("missing", "outcome"), [(0, "permit"), (10, "quality_breach")])
def test_a_gated_record_is_counted_as_one_decision_when_released_and_as_waiting_before(
    catalog: Catalog, tmp_path: Path, missing: int, outcome: str,
) -> None:
    """An operator summing `backbone_events_decided_total` for a recipient gets one decision per record:
    the wait is its own counter (and a gauge while it lasts), the release is the decision."""
    router = gated_router(catalog, tmp_path, "hold")
    routed = route(router, catalog, claims(catalog, HOUR, 30, missing=missing, seed=7), HOUR + timedelta(minutes=5))

    def fraud(found: dict) -> dict[str, float]:
        return {dict(labels)["reason"]: v for (name, labels), v in found.items()
                if name == "backbone_events_decided_total" and ("recipient", "fraud") in labels}

    waiting = scraped(router)
    assert fraud(waiting) == {}  # nothing decided for fraud yet: nothing disclosed, nothing refused
    assert waiting[("backbone_records_quality_waited_total", (("recipient", "fraud"),))] == 30
    assert waiting[("backbone_records_quality_waiting", (("event_type", CLAIM),))] == 30
    close_and_release(router, routed, HOUR + timedelta(hours=1))
    released = scraped(router)
    assert fraud(released) == {outcome: 30}  # each record once, as its window decided it
    assert released.get(("backbone_records_released_total", (("recipient", "fraud"),)), 0) == (30 if outcome == "permit" else 0)
    assert released[("backbone_records_quality_waited_total", (("recipient", "fraud"),))] == 30
    assert ("backbone_records_quality_waiting", (("event_type", CLAIM),)) not in released


AT = HOUR + timedelta(hours=1)


@pytest.mark.parametrize(("outcome", "told"), [
    ("permit", "released 2026-12-07 10:00:00"), ("quality_breach", "held 2026-12-07 10:00:00: its window was below"),
    ("consent_withdrawn", "not shared 2026-12-07 10:00:00: consent_withdrawn"),
])
def test_a_wait_and_its_release_pair_from_the_audit_rows_alone(outcome: str, told: str) -> None:
    waited, other = str(uuid.uuid4()), str(uuid.uuid4())
    released = release_event_id(waited)
    rows = [(waited, "fraud", "quality_pending", HOUR), (released, "fraud", outcome, AT), (other, "fraud", "permit", HOUR)]
    became, releases = gated_story([(waited, "fraud")], rows)
    assert set(became) == {(waited, "fraud")}  # the unrelated permit is no wait's
    assert became[(waited, "fraud")].startswith(f"waited for its quality window: {told}") and released in became[(waited, "fraud")]
    assert releases == {(released, "fraud"): f"releases event {waited}, which waited for its quality window"}


def test_a_wait_with_no_release_says_it_is_not_released_yet_and_another_recipients_release_is_not_its() -> None:
    waited = str(uuid.uuid4())
    rows = [(waited, "fraud", "quality_pending", HOUR), (release_event_id(waited), "research", "permit", AT),
            (release_event_id(str(uuid.uuid4())), "fraud", "permit", AT)]  # a release of a wait not this subject's
    became, releases = gated_story([(waited, "fraud")], rows)
    assert became[(waited, "fraud")].startswith("waited for its quality window: not released yet")
    assert "backbone quality pending" in became[(waited, "fraud")] and releases == {}


def test_a_consent_withdrawn_during_the_window_stops_that_subjects_pending_record(catalog: Catalog, tmp_path: Path) -> None:
    router = gated_router(catalog, tmp_path, "hold", gated="welfare_to_research.yaml")
    records = claims(catalog, HOUR, 10, missing=0, seed=5, basis="consent", purpose="scientific_research")
    consent = DictConsent()
    for record in records:
        consent.set(record["national_id"], "scientific_research", "granted", HOUR - timedelta(days=1))
    routed = route(router, catalog, records, HOUR + timedelta(minutes=5), consent)
    assert not [o for o in routed if o.topic == RESEARCH_TOPIC]
    consent.set(records[0]["national_id"], "scientific_research", "withdrawn", HOUR + timedelta(minutes=30))
    closing = close_and_release(router, routed, HOUR + timedelta(hours=1), consent)
    shared = [o for o in closing if o.topic == RESEARCH_TOPIC]
    assert len(shared) == 9
    assert Counter(outcomes_for(router, [o for o in closing if o.key != CLAIM.encode()], "research")) == \
        {"permit": 9, "consent_withdrawn": 1}  # and the audit trail says why


def test_a_subject_erased_during_the_window_has_nothing_released(catalog: Catalog, tmp_path: Path) -> None:
    erasures = DictErasures()
    router = gated_router(catalog, tmp_path, "hold", erasures=erasures)
    records = claims(catalog, HOUR, 5, missing=0, seed=6)
    routed = route(router, catalog, records, HOUR + timedelta(minutes=5))
    erasures.subjects.add(records[0]["national_id"])
    closing = close_and_release(router, routed, HOUR + timedelta(hours=1))
    assert len([o for o in closing if o.topic == FRAUD_TOPIC]) == 4
    assert "erased" in outcomes_for(router, closing, "fraud")


def test_agreements_without_a_bar_are_released_at_once(catalog: Catalog, tmp_path: Path) -> None:
    router = gated_router(catalog, tmp_path, "hold")
    records = claims(catalog, HOUR, 5, missing=0, seed=7, basis="consent", purpose="scientific_research")
    consent = DictConsent()
    for record in records:
        consent.set(record["national_id"], "scientific_research", "granted", HOUR - timedelta(days=1))
    routed = route(router, catalog, records, HOUR + timedelta(minutes=5), consent)
    assert len([o for o in routed if o.topic == RESEARCH_TOPIC]) == 5 and not [o for o in routed if o.topic == QUALITY_PENDING_TOPIC]


def test_a_window_never_judged_fails_every_bar_and_is_listed_as_held() -> None:
    bars = {name: parse_threshold(text) for name, text in BARS.items()}
    assert below_bars(None, bars) == ("completeness",)
    open_window, lost, judged = (PendingWindow.of("w1", CLAIM, HOUR), PendingWindow.of("w0", CLAIM, HOUR - timedelta(hours=1)),
                                 PendingWindow.of("w2", CLAIM, HOUR - timedelta(hours=1)))
    records = [(open_window.key, [("recipients", b"fraud")]), (lost.key, [("recipients", b"fraud")]),
               (judged.key, [("recipients", b"fraud")]), (judged.key, [(CLOSED_HEADER, b'{"outcomes": {"released": 1}}')]),
               (b"not a processor's", None)]
    rows = {w.window.worker: w.row(HOUR + timedelta(minutes=30)) for w in list_pending(records)}
    assert rows["w1"]["state"].startswith("open") and rows["w0"]["state"].startswith("held")
    assert rows["w2"]["state"] == "judged: 1 released" and rows["w0"]["records"] == 1 and rows["w0"]["held"] == 1
    assert rows["w2"]["held"] == rows["w1"]["held"] == 0


@pytest.mark.parametrize(("markers", "state", "held"), [
    ([{"released": 2}, {"released": 3, "consent_withdrawn": 1}], "partly released: 4 of 6 done (1 consent_withdrawn, 3 released", 2),
    ([{}], "held: its worker stopped before judging it", 6),  # a marker of nothing done yet: wholly held
])
def test_a_window_left_mid_release_is_listed_by_its_last_progress_marker(markers: list[dict], state: str, held: int) -> None:
    lost = PendingWindow.of("w0", CLAIM, HOUR - timedelta(hours=1))
    records: list[tuple[bytes | None, list[tuple[str, bytes]] | None]] = [(lost.key, [("recipients", b"fraud")])] * 6
    records += [(lost.key, [(PROGRESS_HEADER, progress_marker(Counter(m)))]) for m in markers]
    row, = [w.row(HOUR + timedelta(minutes=30)) for w in list_pending(records)]
    assert row["state"].startswith(state) and row["records"] == 6 and row["held"] == held


def test_a_worker_stopped_mid_window_releases_nothing_of_it_and_its_window_is_listed(
        catalog: Catalog, tmp_path: Path, settings: Settings, own_kafka: str, unique: str, backbone_cli) -> None:  # noqa: ANN001
    settings = settings.model_copy(update={"kafka_bootstrap": own_kafka})
    Topics(settings).ensure(QUALITY_PENDING_TOPIC, partitions=2, config=pending_topic_config())
    recipient = f"gate{unique}"  # a recipient of this test's own: its shared topic is read from the start
    for topic in (shared_topic(recipient, CLAIM), AUDIT_TOPIC):  # as the processor does at start (no broker auto-creates them)
        Topics(settings).ensure(topic)
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    stopped = gated_router(catalog, tmp_path / "a", recipient=recipient)
    restarted = gated_router(catalog, tmp_path / "b", recipient=recipient)
    # the last hour: records are stamped by the producer's clock, after the window's start
    now = datetime.now(UTC).replace(minute=0, second=0, microsecond=0) - timedelta(hours=1)
    plane = DataPlane(settings, restarted, NoConsent(), f"test-pending-{unique}", checkpoints=lambda: None)
    producer = Producer(settings.producer_config())
    for router, seed in ((stopped, 8), (restarted, 9)):
        for output in route(router, catalog, claims(catalog, now, 4, missing=0, seed=seed), now):
            if output.topic == QUALITY_PENDING_TOPIC:
                producer.produce(output.topic, output.value, output.key, headers=output.headers,
                                 partition=plane.pending.partition(producer, output.key))
    assert producer.flush(10) == 0
    # the first worker dies here: its window is never closed. The restarted worker closes its own
    # and releases its records from Kafka, as its data plane does when an hour ends.
    restarted.quality_outputs(now + timedelta(hours=1))
    window, = restarted.gate.due()
    assert [len(c) for c in plane.pending.read(producer, window, chunk=3)] == [3, 1]  # its own four, a chunk at a time
    plane._release(producer, now + timedelta(hours=1))
    plane.pending.close()
    shared = read_topic(settings, shared_topic(recipient, CLAIM), lambda found: len(found) >= 4, timeout=15)
    assert len(shared) == 4  # the restarted worker's, none of the stopped one's
    rows = {w.window.worker: w.row(now + timedelta(hours=1)) for w in list_pending(listing(settings, f"test-pending-{unique}"))}
    assert rows[stopped.worker_id]["state"].startswith("held") and rows[stopped.worker_id]["records"] == 4
    assert rows[restarted.worker_id]["state"] == "judged: 4 released"
    # the operator sees the held window without seeing a record
    result = backbone_cli("quality", "pending", "--json", BACKBONE_KAFKA_BOOTSTRAP=settings.kafka_bootstrap)
    assert result.returncode == 0, result.stderr
    listed = [json.loads(line) for line in result.stdout.splitlines()]
    held, = [row for row in listed if row["worker"] == stopped.worker_id]
    assert held["records"] == 4 and held["recipients"] == [recipient] and held["state"].startswith("held")


def test_a_worker_dying_mid_release_leaves_its_window_listed_as_partly_released(
        catalog: Catalog, tmp_path: Path, settings: Settings, own_kafka: str, unique: str, monkeypatch: pytest.MonkeyPatch) -> None:
    settings = settings.model_copy(update={"kafka_bootstrap": own_kafka})
    Topics(settings).ensure(QUALITY_PENDING_TOPIC, partitions=2, config=pending_topic_config())
    recipient = f"part{unique}"
    for topic in (shared_topic(recipient, CLAIM), AUDIT_TOPIC):
        Topics(settings).ensure(topic)
    router = gated_router(catalog, tmp_path, recipient=recipient)
    now = datetime.now(UTC).replace(minute=0, second=0, microsecond=0) - timedelta(hours=1)
    plane = DataPlane(settings, router, NoConsent(), f"test-partly-{unique}", checkpoints=lambda: None)
    producer = Producer(settings.producer_config())
    for output in route(router, catalog, claims(catalog, now, 5, missing=0, seed=12), now):
        if output.topic == QUALITY_PENDING_TOPIC:
            producer.produce(output.topic, output.value, output.key, headers=output.headers,
                             partition=plane.pending.partition(producer, output.key))
    assert producer.flush(10) == 0
    router.quality_outputs(now + timedelta(hours=1))
    read, release = plane.pending.read, router.gate.release
    monkeypatch.setattr(plane.pending, "read", lambda client, window: read(client, window, chunk=3))
    chunks = iter(range(2))

    def dies_on_the_second_chunk(*args: Any) -> list[Output]:
        if next(chunks):
            raise KeyboardInterrupt("the worker dies mid-release")
        return release(*args)

    monkeypatch.setattr(router.gate, "release", dies_on_the_second_chunk)
    with pytest.raises(KeyboardInterrupt):
        plane._release(producer, now + timedelta(hours=1))
    plane.pending.close()
    assert len(read_topic(settings, shared_topic(recipient, CLAIM), lambda found: len(found) >= 3, timeout=15)) == 3
    row, = [w.row(now + timedelta(hours=1)) for w in list_pending(listing(settings, f"test-partly-{unique}"))
            if w.window.worker == router.worker_id]
    assert row["state"].startswith("partly released: 3 of 5 done (3 released; see audit), the rest held")
    assert row["records"] == 5 and row["held"] == 2


def test_a_shorter_gate_window_judges_its_own_records_and_tells_the_provider_as_it_closes(catalog: Catalog, tmp_path: Path) -> None:
    router = gated_router(catalog, tmp_path, "hold")
    router.gate.minutes = 15  # BACKBONE_QUALITY_GATE_MINUTES=15: a recipient waits a quarter of an hour, not an hour
    failing = route(router, catalog, claims(catalog, HOUR, 20, missing=10, seed=10), HOUR + timedelta(minutes=5))
    passing = route(router, catalog, claims(catalog, HOUR, 20, missing=0, seed=11), HOUR + timedelta(minutes=20))
    assert {o.key for o in failing if o.topic == QUALITY_PENDING_TOPIC} == {PendingWindow.of(router.worker_id, CLAIM, HOUR, 15).key}
    assert close_and_release(router, failing + passing, HOUR + timedelta(minutes=14)) == []  # the first quarter is open
    first = close_and_release(router, failing + passing, HOUR + timedelta(minutes=15))
    assert not [o for o in first if o.topic == FRAUD_TOPIC]  # held, a quarter of an hour after it started
    breach, = [json.loads(o.value) for o in first if o.topic == QUALITY_BREACHES_TOPIC]
    assert breach["window"] == {"start": HOUR.isoformat(), "minutes": 15} and breach["agreements"][0]["records"] == "held"
    assert breach["below_contract"] == {}  # the contract's thresholds are judged on the hourly scorecard
    second = close_and_release(router, failing + passing, HOUR + timedelta(minutes=30))
    assert len([o for o in second if o.topic == FRAUD_TOPIC]) == 20 and not [o for o in second if o.topic == QUALITY_BREACHES_TOPIC]
    hourly = router.quality_outputs(HOUR + timedelta(hours=1))  # the scorecard's hour is unchanged: all 40 events
    window = WindowState.from_bytes(next(o.value for o in hourly if o.topic == QUALITY_TOPIC))
    assert (window.events, window.missing["bank_account"]) == (40, 10)


def test_the_gate_window_must_divide_the_hour() -> None:
    assert Settings(quality_gate_minutes=15).quality_gate_minutes == 15
    with pytest.raises(ValidationError, match="7 does not divide the hour; use 1, 2, 3"):
        Settings(quality_gate_minutes=7)


@given(moment=st.datetimes(min_value=datetime(2000, 1, 1), max_value=datetime(2100, 1, 1), timezones=st.just(UTC)),
       minutes=st.sampled_from([1, 2, 3, 4, 5, 6, 10, 12, 15, 20, 30, 60]), worker=st.text("abcdef0123456789", min_size=1, max_size=12))
def test_a_pending_window_holds_its_moment_and_its_key_names_it_back(moment: datetime, minutes: int, worker: str) -> None:
    window = PendingWindow.of(worker, CLAIM, moment, minutes)
    assert window.start_ms <= moment.timestamp() * 1000 < window.end_ms and window.start % minutes == 0
    assert PendingWindow.from_key(window.key) == window
    if minutes == 60:  # hourly gating: the window is the scorecard's hour
        assert window.start == hour_of(moment) * 60
