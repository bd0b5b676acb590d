"""The quality checks compiled into one function per event type, and the compact uniqueness markers
(issues 32 and 30): the windows hold exactly the counts the contract defines, whether a window's
markers are all in the recent set or mostly in sorted blocks (its decisions deferred to the batch's
end), and nothing in a contract runs as code."""

from __future__ import annotations

import math
import re
import tracemalloc
import uuid
from collections import Counter
from datetime import UTC, datetime, timedelta

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from backbone.quality import checks, keyset
from backbone.quality.checks import QualityMonitor
from backbone.quality.contract import QualityContract, QualitySection
from backbone.quality.keyset import KeySet
from backbone.quality.reference import ReferenceSet
from backbone.quality.window import hour_of

NOW = datetime(2026, 12, 7, 10, 0, 1, tzinfo=UTC)
EVENT = "welfare.benefit_claimed"
PATTERN = r"^[1-9]\d{3} [A-Z]{2}$"
KNOWN = {"1234 AB", "0123 AB"}
BUSINESS = "national_id+benefit_type+period"
CONTRACT = QualityContract(EVENT, "test", QualitySection.model_validate({
    "references": {"postcodes": "reference/postcodes.txt"},
    "completeness": {"fields": ["postcode", "monthly_amount"]},
    "validity": {"rules": [
        {"field": "postcode", "pattern": PATTERN},
        {"field": "postcode", "reference": "postcodes"},
        {"field": "monthly_amount", "min": 0, "max": 20000},
        {"field": "benefit_type", "values": ["unemployment", "child_benefit"]}]},
    "uniqueness": {"key": "event_id", "business_key": ["national_id", "benefit_type", "period"]},
    "timeliness": {"max_delay_seconds": 3600},
}), {"postcodes": ReferenceSet.of("postcodes", KNOWN)})
FIELDS = ("postcode", "monthly_amount", "benefit_type")  # the plan: completeness's fields, then validity's

records = st.lists(st.fixed_dictionaries({
    # a small pool of ids, read as UUIDs or kept as text: duplicates, within and across hours
    "event_id": st.one_of(st.integers(1, 30).map(lambda n: uuid.UUID(int=n << 70 | 7)), st.integers(1, 5).map(lambda n: f"id-{n}"),
                          st.none()),
    "national_id": st.sampled_from(["123456782", "987654321", "", None]),
    "postcode": st.sampled_from(["1234 AB", "", None, "12345", "0123 AB", "9999 ZZ"]),
    "monthly_amount": st.sampled_from([0.0, 950.5, -1.0, 20001.0, float("nan"), float("inf"), None, True, 12]),
    "benefit_type": st.sampled_from(["unemployment", "child_benefit", "disability", None]),
    "period": st.sampled_from(["2026-01", "2026-02", "", None]),
    "delay_s": st.floats(-60, 10_000, allow_nan=False),
    "hour": st.integers(0, 2),
}), max_size=80)


def absent(value: object) -> bool:
    return value is None or value == "" or (isinstance(value, float) and math.isnan(value))


def expected(batch: list[dict]) -> dict[int, dict]:
    """The contract's counts per hour, computed one record at a time from its definitions."""
    out: dict[int, dict] = {}
    seen: dict[int, set] = {}
    seen_keys: dict[int, set] = {}
    for record in batch:
        hour = record["hour"]
        counts = out.setdefault(hour, {"events": 0, "missing": Counter(), "invalid": Counter(), "duplicates": 0, "late": 0,
                                       "inconsistent": {}, "key_duplicates": Counter()})
        counts["events"] += 1
        for name in FIELDS:
            value = record[name]
            if absent(value):
                counts["missing"][name] += 1
                continue
            if name == "postcode":
                if not (isinstance(value, str) and re.fullmatch(PATTERN, value)):
                    counts["invalid"]["postcode:pattern"] += 1
                if value not in KNOWN:
                    counts["invalid"]["postcode:reference"] += 1
            elif name == "monthly_amount":
                if isinstance(value, bool) or not math.isfinite(value) or not 0 <= value <= 20000:
                    counts["invalid"]["monthly_amount:range"] += 1
            elif value not in ("unemployment", "child_benefit"):
                counts["invalid"]["benefit_type:values"] += 1
        key = record["event_id"]
        earlier = seen.get(hour, set()) | seen.get(hour - 1, set())
        if key is not None and key in earlier:
            counts["duplicates"] += 1
        else:
            if key is not None:
                seen.setdefault(hour, set()).add(key)
            business = (record["national_id"], record["benefit_type"], record["period"])
            if all(not (v is None or v == "") for v in business):
                if business in seen_keys.get(hour, set()) | seen_keys.get(hour - 1, set()):
                    counts["key_duplicates"][BUSINESS] += 1
                else:
                    seen_keys.setdefault(hour, set()).add(business)
        if record["delay_s"] > 3600:
            counts["late"] += 1
    for counts in out.values():
        checked = {f"{r}:{k}": counts["events"] - counts["missing"][r] for r, k in
                   (("postcode", "pattern"), ("postcode", "reference"), ("monthly_amount", "range"), ("benefit_type", "values"))}
        counts["checked"] = {label: n for label, n in checked.items() if n > 0}
        for name in ("missing", "invalid", "key_duplicates"):
            counts[name] = dict(+counts[name])
    return out


def observed(batch: list[dict], recent_max: int, pending: int, later_max: int = keyset.LATER_MAX) -> dict[int, dict]:
    before = checks.RECENT_MAX, checks.MAX_PENDING, keyset.LATER_MAX
    # markers past RECENT_MAX go into sorted blocks at a flush (every MAX_PENDING records): then decisions
    # are deferred, and made once LATER_MAX records wait, or as the window is replaced or handed over
    checks.RECENT_MAX, checks.MAX_PENDING, keyset.LATER_MAX = recent_max, pending, later_max
    try:
        monitor = QualityMonitor([CONTRACT])
        nows = {hour: NOW + timedelta(hours=hour) for hour in range(3)}  # the data plane's one `now` a batch
        for record in batch:
            now = nows[record["hour"]]
            monitor.observe(EVENT, {**record, "occurred_at": now - timedelta(seconds=record["delay_s"])}, now)
        windows = monitor.closed(NOW + timedelta(hours=3), everything=True)
    finally:
        checks.RECENT_MAX, checks.MAX_PENDING, keyset.LATER_MAX = before
    return {window.hour - hour_of(NOW): window.counters() for window in windows}


@settings(max_examples=150, deadline=None)
@given(records)
def test_the_compiled_checks_count_what_the_contract_defines_with_or_without_compacted_markers(batch: list[dict]) -> None:
    batch = sorted(batch, key=lambda r: r["hour"])  # the processor's clock goes forward
    want = expected(batch)
    assert observed(batch, recent_max=1 << 14, pending=64) == want  # every marker in the recent sets
    assert observed(batch, recent_max=2, pending=3) == want         # nearly all in blocks: decided as the window closes
    assert observed(batch, recent_max=2, pending=3, later_max=2) == want  # ... and at a batch's end


@settings(max_examples=100, deadline=None)
@given(st.lists(st.lists(st.integers(0, (1 << 64) - 1) | st.integers(0, 40), max_size=30), max_size=12))
def test_a_keyset_holds_exactly_the_markers_added_across_compactions(rounds: list[list[int]]) -> None:
    keys, reference = KeySet(), set()
    for markers in rounds:
        keys.recent.update(m for m in markers if m not in reference)  # the monitor adds a marker it has not seen
        reference.update(markers)
        probe = np.array(sorted(reference | {0, 1, 41, (1 << 64) - 1}), dtype=np.uint64)
        in_blocks = keys.isin(probe).tolist()
        assert [bool(b) or int(p) in keys.recent for p, b in zip(probe.tolist(), in_blocks, strict=True)] == \
            [int(p) in reference for p in probe.tolist()]
        keys.compact()
        assert len(keys) == len(reference) and set(keys) == reference and not keys.recent
        assert all(block.size >= 2 * newer.size for block, newer in zip(keys.blocks, keys.blocks[1:], strict=False))


def test_a_field_name_in_a_contract_is_a_name_never_code() -> None:
    name = "x') or __import__('os').system('touch /tmp/pwned') #\n"
    contract = QualityContract(EVENT, "test", QualitySection.model_validate({
        "completeness": {"fields": [name]}, "validity": {"rules": [{"field": name, "values": ["a"]}]},
        "uniqueness": {"key": name, "business_key": [name, "period"]}}))
    monitor = QualityMonitor([contract])
    for record in ({}, {name: "a", "period": "p"}, {name: "a", "period": "p"}, {name: "b", "period": "p"}):
        monitor.observe(EVENT, record, NOW)
    (window,) = monitor.closed(NOW, everything=True)
    assert window.counters()["missing"] == {name: 1}
    assert window.counters()["invalid"] == {f"{name}:values": 1}
    assert window.duplicates == 1  # the second "a": the key's duplicate (and so not the business key's)
    assert repr(name) in monitor.checkers[EVENT].check.source


def test_the_uniqueness_state_holds_a_few_bytes_an_event() -> None:
    """100,000 distinct events' markers (event id and business key) of one hour, with the blocks
    as they are after the last compaction: the old sets held ~121 B an event."""
    contract = QualityContract(EVENT, "test", QualitySection.model_validate({
        "uniqueness": {"key": "event_id", "business_key": ["national_id", "period"]}}))
    monitor = QualityMonitor([contract])
    events = 100_000
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for n in range(events):
            monitor.observe(EVENT, {"event_id": uuid.UUID(int=n << 65 | n), "national_id": f"{n:09d}", "period": "2026-01"}, NOW)
        monitor.flush()
        held = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    (window,) = monitor.closed(NOW, everything=True)
    assert (window.events, window.duplicates, window.key_duplicates) == (events, 0, {})
    assert held / events < 40, f"{held / events:.0f} B an event"


@pytest.mark.parametrize("copies", [2, 3])
def test_a_duplicate_of_a_compacted_marker_is_found_in_its_block(copies: int) -> None:
    monitor = QualityMonitor([CONTRACT])
    events = 40_000  # past RECENT_MAX: most markers are in blocks when the copies arrive
    ids = [uuid.UUID(int=n << 66 | 5) for n in range(events)]
    for event_id in ids + ids[:100] * (copies - 1):
        monitor.observe(EVENT, {"event_id": event_id, "national_id": "1", "benefit_type": "x", "period": "p"}, NOW)
    (window,) = monitor.closed(NOW, everything=True)
    assert (window.events, window.duplicates) == (events + 100 * (copies - 1), 100 * (copies - 1))
    assert window.key_duplicates == {BUSINESS: events - 1}


@pytest.mark.parametrize("wait_s", [0.0, 3600.0])
def test_delays_reach_an_open_windows_sketch_within_their_bound_and_all_of_them_at_hand_over(
        monkeypatch: pytest.MonkeyPatch, wait_s: float) -> None:
    monkeypatch.setattr(keyset, "DELAYS_S", wait_s)
    monitor = QualityMonitor([CONTRACT])
    for n in range(3):  # a quiet event type: far fewer than DELAYS_MAX records an hour
        monitor.observe(EVENT, {"event_id": uuid.UUID(int=n + 1 << 70), "occurred_at": NOW - timedelta(seconds=60)}, NOW)
    monitor.flush()
    (window,) = monitor.windows.values()
    assert window.delays.n == (3 if wait_s == 0 else 0)  # for metrics of the open hour: at most DELAYS_S late
    (closed,) = monitor.closed(NOW, everything=True)
    assert closed.delays.n == 3 and closed.delay_quantiles()["p50"] == 60.0
