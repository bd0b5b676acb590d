"""Quality windows (issue 32): checks compiled from the contract, mergeable state, scorecards."""

from __future__ import annotations

import random
import uuid
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from backbone.quality.checks import QualityMonitor
from backbone.quality.contract import QualityContract, QualitySection
from backbone.quality.errors import QualityStateError
from backbone.quality.reference import ReferenceSet
from backbone.quality.scorecard import score, volume_baseline
from backbone.quality.window import HLL_REL_ERR, KLL_RANK_ERR, WindowState, hour_of, merge_all

NOW = datetime(2026, 12, 7, 10, 30, tzinfo=UTC)
BUSINESS = "national_id+benefit_type+period"
CONTRACT = QualityContract("welfare.benefit_claimed", "test", QualitySection.model_validate({
    "references": {"postcodes": "reference/postcodes.txt"},
    "completeness": {"fields": ["postcode", "monthly_amount"], "threshold": ">= 98"},
    "validity": {"threshold": ">= 99", "rules": [
        {"field": "postcode", "pattern": r"^[1-9]\d{3} [A-Z]{2}$"},
        {"field": "postcode", "reference": "postcodes"},
        {"field": "monthly_amount", "min": 0, "max": 20000},
        {"field": "benefit_type", "values": ["unemployment", "child_benefit"]}]},
    "uniqueness": {"key": "event_id", "business_key": ["national_id", "benefit_type", "period"], "threshold": ">= 99.5"},
    "timeliness": {"max_delay_seconds": 3600, "threshold": ">= 97"},
    "volume": {"weeks": 4, "threshold": ">= 50"},
}), {"postcodes": ReferenceSet.of("postcodes", ["1234 AB", "0123 AB"])})

events = st.lists(st.fixed_dictionaries({
    "event_id": st.integers(0, 40).map(lambda n: str(uuid.UUID(int=n))),  # a small pool: duplicates
    "postcode": st.sampled_from(["1234 AB", "", None, "12345", "0123 AB", "9999 ZZ"]),  # 9999 ZZ: well-formed, unknown
    "monthly_amount": st.sampled_from([0.0, 950.5, -1.0, 20001.0, float("nan"), None]),
    "benefit_type": st.sampled_from(["unemployment", "child_benefit", "disability"]),
    "period": st.sampled_from(["2026-01", "2026-02", None]),
    "delay_s": st.floats(-60, 10_000, allow_nan=False),
}), max_size=60)


def subject(event: dict) -> str:
    """An event's subject: one per event id (a re-sent event is about the same person), 7 people in all."""
    return f"{uuid.UUID(event['event_id']).int % 7 + 100_000_000}"


def run(monitor: QualityMonitor, batch: list[dict]) -> None:
    for event in batch:
        record = {**event, "occurred_at": NOW - timedelta(seconds=event["delay_s"])}
        if "national_id" not in record:
            record["national_id"] = subject(event)
        monitor.observe("welfare.benefit_claimed", record, NOW)


def window_of(batch: list[dict]) -> WindowState:
    monitor = QualityMonitor([CONTRACT])
    run(monitor, batch)
    closed = monitor.closed(NOW + timedelta(hours=1))
    return closed[0] if closed else WindowState("welfare.benefit_claimed", hour_of(NOW))


def worker_of(event: dict) -> int:
    """Two workers split the stream as Kafka does: by the key, the subject, so every copy of an event
    and every event of a person (whose business keys can repeat) meet one worker."""
    return int(subject(event)) % 2


@settings(max_examples=60, deadline=None)
@given(events)
def test_merging_two_workers_windows_equals_the_window_of_their_union(stream: list[dict]) -> None:
    a = [e for e in stream if worker_of(e) == 0]
    b = [e for e in stream if worker_of(e) == 1]
    merged, whole = window_of(a).merge(window_of(b)), window_of(stream)
    assert merged.counters() == whole.counters()  # every counter: missing, invalid (a reference too), duplicates by key
    # the exact counts, recomputed here from the stream: unknown postcodes and business-key duplicates
    assert merged.invalid.get("postcode:reference", 0) == sum(1 for e in stream if e["postcode"] in ("12345", "9999 ZZ"))
    ids: set[str] = set()
    keys: set[tuple] = set()
    repeated = 0
    for e in stream:
        if e["event_id"] in ids:
            continue
        ids.add(e["event_id"])
        key = (subject(e), e["benefit_type"], e["period"])
        if e["period"] is not None:
            repeated += key in keys
            keys.add(key)
    assert merged.key_duplicates.get(BUSINESS, 0) == repeated
    estimate, low, high = merged.key_distinct_estimate(BUSINESS)
    assert low <= len(keys) <= high and abs(estimate - len(keys)) <= max(1.0, HLL_REL_ERR * len(keys))
    back = WindowState.from_bytes(merged.to_bytes())
    assert back.counters() == whole.counters() and back.key_distinct_estimate(BUSINESS) == merged.key_distinct_estimate(BUSINESS)
    assert merged.delays.n == whole.delays.n == len(stream)
    distinct = len({e["event_id"] for e in stream})
    estimate, low, high = merged.distinct_estimate()
    assert low <= distinct <= high and abs(estimate - distinct) <= max(1.0, HLL_REL_ERR * distinct)
    if stream:  # below KLL's k every delay is kept: quantiles are exact
        assert merged.delays.get_quantile(0.5) == whole.delays.get_quantile(0.5)


@settings(max_examples=30, deadline=None)
@given(events)
def test_a_window_reads_back_what_it_wrote(stream: list[dict]) -> None:
    window = window_of(stream)
    back = WindowState.from_bytes(window.to_bytes())
    assert back.counters() == window.counters() and back.key == window.key
    assert back.distinct_estimate() == window.distinct_estimate() and back.delays.n == window.delays.n


def test_sketches_stay_within_their_stated_bounds_on_a_large_merged_window() -> None:
    rng = random.Random(7)
    delays = [rng.expovariate(1 / 600) for _ in range(40_000)]
    stream = [{"event_id": str(uuid.UUID(int=rng.getrandbits(128))), "postcode": "1234 AB", "monthly_amount": 1.0,
               "benefit_type": "unemployment", "delay_s": delay} for delay in delays]
    parts = [window_of(stream[i::4]) for i in range(4)]  # four workers
    merged, = merge_all(parts)
    estimate, low, high = merged.distinct_estimate()
    assert abs(estimate - 40_000) <= HLL_REL_ERR * 40_000 and low <= 40_000 <= high
    ordered = sorted(delays)
    for rank in (0.5, 0.95, 0.99):
        quantile = merged.delays.get_quantile(rank)
        true_rank = sum(1 for d in ordered if d <= quantile) / len(ordered)
        assert abs(true_rank - rank) <= KLL_RANK_ERR
    assert merged.late == sum(1 for d in delays if d > 3600)


def test_the_scorecard_gives_each_dimension_its_counts_and_score() -> None:
    stream = [{"event_id": str(uuid.UUID(int=i)), "postcode": "1234 AB", "monthly_amount": 100.0,
               "benefit_type": "unemployment", "delay_s": 10.0} for i in range(200)]
    stream[0]["postcode"] = ""                  # missing: completeness, not validity
    stream[1]["monthly_amount"] = -5.0          # invalid
    stream[2]["benefit_type"] = "pension"       # invalid
    stream[3]["delay_s"] = 7200.0               # late
    stream.append(dict(stream[4]))              # a duplicate
    card = score(window_of(stream), CONTRACT, baseline=volume_baseline([400, 402, 390]))
    dims = card.dimensions
    assert (dims["completeness"].checked, dims["completeness"].failed) == (402, 1)
    assert dims["completeness"].detail == {"postcode": (201, 1), "monthly_amount": (201, 0)}
    assert dims["completeness"].score == pytest.approx(100 * 401 / 402) and dims["completeness"].met
    assert (dims["validity"].checked, dims["validity"].failed) == (802, 2)  # four rules on the values present
    assert dims["validity"].detail["benefit_type:values"] == (201, 1)
    assert (dims["uniqueness"].checked, dims["uniqueness"].failed) == (402, 1)  # the event id, and the business key
    assert dims["uniqueness"].detail == {"event_id": (201, 1), BUSINESS: (201, 0)}
    assert (dims["timeliness"].checked, dims["timeliness"].failed) == (201, 1)
    assert dims["volume"].score == pytest.approx(100 * 201 / 400) and dims["volume"].met
    assert card.breaches() == [] and card.provider == "welfare" and card.events == 201
    assert card.delay_s["p50"] == 10.0


def test_a_window_closes_once_its_hour_is_over_and_duplicates_are_seen_across_the_boundary() -> None:
    monitor = QualityMonitor([CONTRACT])
    record = {"event_id": "e1", "postcode": "1234 AB", "monthly_amount": 1.0, "benefit_type": "unemployment",
              "occurred_at": NOW}
    monitor.observe("welfare.benefit_claimed", record, NOW)
    assert monitor.closed(NOW + timedelta(minutes=20)) == []
    later = NOW + timedelta(minutes=40)  # the next hour
    monitor.observe("welfare.benefit_claimed", record, later)
    first, = monitor.closed(later)
    assert first.events == 1 and first.duplicates == 0 and first.hour == hour_of(NOW)
    second, = monitor.closed(later + timedelta(hours=1))
    assert second.duplicates == 1 and monitor.windows == {}
    monitor.observe("tax.income_declared", record, NOW)  # no contract: not observed
    assert monitor.windows == {}


def test_an_empty_window_has_no_score_rather_than_a_perfect_one() -> None:
    card = score(WindowState("welfare.benefit_claimed", hour_of(NOW)), CONTRACT)
    assert all(d.score is None and d.met is None for d in card.dimensions.values())


def test_a_corrupt_or_foreign_window_is_refused() -> None:
    with pytest.raises(QualityStateError, match="corrupt"):
        WindowState.from_bytes(b"\x00not json")
    with pytest.raises(QualityStateError, match="another version"):
        WindowState.from_dict({"format": 99})
    with pytest.raises(ValueError, match="merge windows of one event type and hour"):
        WindowState("a.b", 1).merge(WindowState("a.b", 2))
