"""The cross-provider consistency dimension (issue 32): no benefit claimed for a month after the
claimant's registered death, checked in the worker on both raw streams, keyed by pseudonyms only."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from backbone.quality import checks
from backbone.quality.checks import QualityMonitor, month_index
from backbone.quality.contract import QualityContract, QualitySection
from backbone.quality.scorecard import score

NOW = datetime(2026, 12, 7, 10, 30, tzinfo=UTC)
CLAIM, DEATH = "welfare.benefit_claimed", "registry.death_registered"
RULE = {"name": "claim_after_death", "after": DEATH, "at": "date_of_death", "field": "period"}
CONTRACT = QualityContract(CLAIM, "test", QualitySection.model_validate(
    {"consistency": {"threshold": ">= 99", "rules": [RULE]}}))
SUBJECTS = {CLAIM: "national_id", DEATH: "national_id"}


def monitor() -> QualityMonitor:
    found = QualityMonitor([CONTRACT])
    found.bind(SUBJECTS, lambda subject: f"p:{subject[::-1]}")
    return found


def claim(subject: str, period: str) -> dict:
    return {"national_id": subject, "period": period}


def death(subject: str, day: date) -> dict:
    return {"national_id": subject, "date_of_death": day}


def inconsistent(events: list[tuple[str, dict]]) -> int:
    found = monitor()
    for event_type, record in events:
        found.observe(event_type, record, NOW)
    windows = found.closed(NOW + timedelta(hours=1))
    return sum(w.inconsistent["claim_after_death"] for w in windows)


def test_only_a_claim_for_a_month_after_a_registered_death_is_inconsistent() -> None:
    died = death("123456782", date(2026, 5, 14))
    assert inconsistent([(DEATH, died), (CLAIM, claim("123456782", "2026-06"))]) == 1
    assert inconsistent([(DEATH, died), (CLAIM, claim("123456782", "2026-05"))]) == 0   # the month of death
    assert inconsistent([(DEATH, died), (CLAIM, claim("123456782", "2025-12"))]) == 0   # a late claim for an earlier month
    assert inconsistent([(DEATH, died), (CLAIM, claim("987654321", "2026-06"))]) == 0   # somebody else
    assert inconsistent([(CLAIM, claim("123456782", "2026-06")), (DEATH, died)]) == 0   # not yet known dead
    assert inconsistent([(DEATH, died), (CLAIM, claim("123456782", "06/2026"))]) == 0   # no month: validity's concern
    assert [month_index(v) for v in ("2026-06", date(2026, 6, 1), "2026", None)] == [2026 * 12 + 5, 2026 * 12 + 5, None, None]


def test_the_score_and_the_counts_behind_it() -> None:
    found = monitor()
    found.observe(DEATH, death("1", date(2026, 1, 3)), NOW)
    for n in range(199):
        found.observe(CLAIM, claim(str(n + 2), "2026-03"), NOW)
    found.observe(CLAIM, claim("1", "2026-03"), NOW)
    window, = [w for w in found.closed(NOW + timedelta(hours=1)) if w.event_type == CLAIM]
    dimension = score(window, CONTRACT).dimensions["consistency"]
    assert (dimension.checked, dimension.failed, dimension.score, dimension.met) == (200, 1, 99.5, True)
    assert dimension.detail == {"claim_after_death": (200, 1)}


def test_the_marks_hold_pseudonyms_and_months_only_and_are_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(checks, "MAX_MARKS", 3)
    found = monitor()
    for subject in ("100000001", "100000002", "100000003", "100000004"):
        found.observe(DEATH, death(subject, date(2026, 1, 1)), NOW)
    found.flush()
    (at, marks), = found.marking[DEATH]
    assert at == "date_of_death" and list(marks) == ["p:200000001", "p:300000001", "p:400000001"]  # the oldest forgotten
    assert not any(key.startswith("1000") for key in marks) and set(marks.values()) == {2026 * 12}
    found.observe(CLAIM, claim("100000001", "2026-02"), NOW)   # forgotten: no evidence
    found.observe(CLAIM, claim("100000004", "2026-02"), NOW)
    window, = [w for w in found.closed(NOW + timedelta(hours=1)) if w.event_type == CLAIM]
    assert window.inconsistent["claim_after_death"] == 1


people = st.lists(st.tuples(st.sampled_from([DEATH, CLAIM]), st.integers(0, 9), st.integers(1, 12)), max_size=50)


@settings(max_examples=50, deadline=None)
@given(people)
def test_two_workers_split_by_subject_merge_into_the_window_of_their_union(stream: list[tuple[str, int, int]]) -> None:
    """The raw topics are keyed by the subject, so a person's death and claims meet one worker."""
    events = [(t, death(f"{s:09d}", date(2026, m, 1)) if t == DEATH else claim(f"{s:09d}", f"2026-{m:02d}"))
              for t, s, m in stream]

    def window(batch: list[tuple[str, dict]]) -> int:
        return inconsistent(batch)

    a = [e for e in events if int(e[1]["national_id"]) % 2 == 0]
    b = [e for e in events if int(e[1]["national_id"]) % 2 == 1]
    assert window(a) + window(b) == window(events)


def test_the_router_marks_subjects_by_their_oversight_pseudonym_only() -> None:
    import random
    import uuid as uuids

    from backbone.events.catalog import load_catalog
    from backbone.events.serde import LocalSchemas, encoder_for
    from backbone.kafka.topics import raw_topic
    from backbone.keys.keyring import Keyring
    from backbone.policy.agreements import load_agreements
    from backbone.policy.decision import NoConsent
    from backbone.policy.engine import PolicyEngine
    from backbone.quality.contract import load_quality
    from backbone.settings import PROJECT_ROOT
    from processors.router import Router
    from producers.synthetic.samples import sample_event

    catalog = load_catalog(PROJECT_ROOT / "schemas")
    charter = load_agreements(PROJECT_ROOT / "agreements", catalog)
    keyring = Keyring.for_charter(charter)
    router = Router(catalog, PolicyEngine(charter, keyring), LocalSchemas(), keyring)
    router.quality = QualityMonitor(load_quality(PROJECT_ROOT / "schemas", catalog).values())
    rng, subject = random.Random(3), "123456782"
    died = {**sample_event(catalog.events[DEATH], rng), "national_id": subject, "date_of_death": date(2026, 5, 14)}
    claimed = {**sample_event(catalog.events[CLAIM], rng), "national_id": subject, "period": "2026-07"}
    for event_type, record in ((DEATH, died), (CLAIM, claimed)):
        record = {**record, "event_id": str(uuids.UUID(int=rng.getrandbits(128))), "occurred_at": NOW}
        encode = encoder_for(router.schemas, f"{raw_topic(event_type)}-value", catalog.events[event_type].avro)
        router.route(raw_topic(event_type), b"k", encode(record), None, NoConsent(), NOW)
    router.quality.flush()  # type: ignore[union-attr]
    (_, marks), = router.quality.marking[DEATH]  # type: ignore[union-attr]
    assert list(marks) == [router._oversight(subject)] and subject not in repr(marks)  # noqa: SLF001
    window, = [w for w in router.quality.closed(NOW + timedelta(hours=1)) if w.event_type == CLAIM]  # type: ignore[union-attr]
    assert window.inconsistent == {"claim_after_death": 1} and subject not in window.to_bytes().decode()
