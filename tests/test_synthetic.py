"""The synthetic agency data: deterministic for a seed, realistic identifiers, schema-valid events,
and planted fraud whose ground truth matches exactly what plain rules find in the events."""

from __future__ import annotations

import json
import re
from collections import defaultdict

import pytest
from fastavro.validation import validate

from backbone.events.catalog import load_catalog
from backbone.settings import PROJECT_ROOT
from producers.synthetic import (
    CLAIM_AFTER_DEATH,
    FRAUD_KINDS,
    INCOME_THRESHOLD_EUR,
    MEANS_TESTED,
    SHARED_BANK_ACCOUNT,
    UNDECLARED_INCOME,
    generate,
    read_ground_truth,
    write_ground_truth,
)
from producers.synthetic.identities import is_valid_iban, is_valid_national_id

CATALOG = load_catalog(PROJECT_ROOT / "schemas")


def fraud_found_by_rules(events: list[tuple[str, dict]]) -> set[tuple[str, str, str]]:
    """The three fraud rules, written independently of the generator, over the generated events."""
    income: dict[tuple[str, str], float] = defaultdict(float)
    claims: list[dict] = []
    died_in: dict[str, str] = {}
    for event_type, record in events:
        if event_type == "tax.income_declared":
            income[(record["national_id"], record["period"])] += record["declared_income"]
        elif event_type == "welfare.benefit_claimed":
            claims.append(record)
        elif event_type == "registry.death_registered":
            died_in[record["national_id"]] = record["date_of_death"].strftime("%Y-%m")
    found = set()
    claimants_per_account: dict[tuple[str, str], set[str]] = defaultdict(set)
    for claim in claims:
        person, period = claim["national_id"], claim["period"]
        if claim["benefit_type"] in MEANS_TESTED and income.get((person, period), 0.0) > INCOME_THRESHOLD_EUR:
            found.add((UNDECLARED_INCOME, person, period))
        if person in died_in and period > died_in[person]:
            found.add((CLAIM_AFTER_DEATH, person, period))
        claimants_per_account[(claim["bank_account"], period)].add(person)
    for (_, period), people in claimants_per_account.items():
        if len(people) >= 3:
            found.update((SHARED_BANK_ACCOUNT, person, period) for person in people)
    return found


@pytest.mark.parametrize(("seed", "population", "events"), [(1, 2_000, 20_000), (7, 3_000, 4_321), (42, 500, 9_000)])
def test_ground_truth_is_exactly_what_the_fraud_rules_find(seed: int, population: int, events: int) -> None:
    stream = generate(seed=seed, population=population, events=events, fraud_rate=0.02)
    produced = list(stream)
    assert len(produced) == events
    truth = {case.key for case in stream.ground_truth}
    assert truth == fraud_found_by_rules(produced)
    assert len(truth) == len(stream.ground_truth)


def test_the_generator_plants_what_the_fraud_rules_look_for_by_importing_their_constants() -> None:
    from consumers.fraud.rules import claim_after_death, shared_bank_account, undeclared_income
    from producers import synthetic

    assert FRAUD_KINDS == (undeclared_income.KIND, shared_bank_account.KIND, claim_after_death.KIND)
    assert INCOME_THRESHOLD_EUR is undeclared_income.INCOME_THRESHOLD_EUR
    assert MEANS_TESTED is undeclared_income.MEANS_TESTED
    assert synthetic.SHARED_ACCOUNT_MIN_CLAIMANTS is shared_bank_account.MIN_CLAIMANTS


def test_every_fraud_kind_is_planted() -> None:
    stream = generate(seed=3, population=2_000, events=15_000, fraud_rate=0.01)
    list(stream)
    kinds = {case.kind for case in stream.ground_truth}
    assert kinds == set(FRAUD_KINDS)


def test_no_fraud_is_planted_at_rate_zero_and_honest_people_match_no_rule() -> None:
    stream = generate(seed=5, population=3_000, events=30_000, fraud_rate=0.0)
    produced = list(stream)
    assert stream.ground_truth == []
    assert fraud_found_by_rules(produced) == set()


def test_same_seed_same_events_other_seed_other_events() -> None:
    first = list(generate(seed=11, population=500, events=3_000))
    again = list(generate(seed=11, population=500, events=3_000))
    other = list(generate(seed=12, population=500, events=3_000))
    assert first == again
    assert first != other


def test_filtering_by_agency_changes_which_events_not_their_content() -> None:
    everything = [r for t, r in generate(seed=2, population=800, events=20_000) if t == "welfare.benefit_claimed"]
    welfare = list(generate(seed=2, population=800, events=1_000, agencies=["welfare"]))
    assert {t for t, _ in welfare} == {"welfare.benefit_claimed"}
    assert [r for _, r in welfare] == everything[:1_000]


def test_events_fit_their_schemas_and_carry_vocabulary_purposes() -> None:
    for event_type, record in generate(seed=4, population=1_000, events=8_000):
        schema = CATALOG.event(event_type)
        assert validate(record, schema.parsed, raise_errors=False), event_type
        assert record["provider"] == schema.provider
        assert record["governance"]["purposes"]
        assert set(record["governance"]["purposes"]) <= set(CATALOG.purposes)


def test_identifiers_are_realistic_and_check_digits_hold() -> None:
    postcode = re.compile(r"^[1-9]\d{3} [A-Z]{2}$")
    for event_type, record in generate(seed=6, population=1_000, events=6_000):
        if event_type in {"tax.income_declared", "welfare.benefit_claimed"}:
            assert is_valid_national_id(record["national_id"])
            assert is_valid_iban(record["bank_account"])
            assert re.fullmatch(r"\d{4}-\d{2}", record["period"])
        if event_type == "welfare.benefit_claimed":
            assert postcode.match(record["postcode"])


def test_stream_is_in_time_order_and_deaths_precede_claims_after_death() -> None:
    stream = generate(seed=8, population=2_000, events=20_000, fraud_rate=0.02)
    produced = list(stream)
    times = [record["occurred_at"] for _, record in produced]
    assert times == sorted(times)
    death_at = {r["national_id"]: i for i, (t, r) in enumerate(produced) if t == "registry.death_registered"}
    died_in = {nid: produced[i][1]["date_of_death"].strftime("%Y-%m") for nid, i in death_at.items()}
    claims_after_death = [
        (index, record["national_id"]) for index, (event_type, record) in enumerate(produced)
        if event_type == "welfare.benefit_claimed" and record["period"] > died_in.get(record["national_id"], "9999")
    ]
    assert claims_after_death
    assert all(index > death_at[national_id] for index, national_id in claims_after_death)


def test_ground_truth_file_round_trips(tmp_path) -> None:  # noqa: ANN001 - pytest fixture
    stream = generate(seed=9, population=1_000, events=10_000, fraud_rate=0.02)
    list(stream)
    path = tmp_path / "truth.json"
    assert write_ground_truth(path, stream.ground_truth) == len(stream.ground_truth)
    rows = json.loads(path.read_text())
    assert set(rows[0]) == {"kind", "national_id", "period", "details"}
    assert [case.key for case in read_ground_truth(path)] == [case.key for case in stream.ground_truth]


def test_invalid_parameters_are_refused() -> None:
    with pytest.raises(ValueError, match="agencies"):
        generate(agencies=["customs"])
    with pytest.raises(ValueError, match="start"):
        generate(start="2024/01")
    with pytest.raises(ValueError, match="fraud_rate"):
        generate(fraud_rate=0.5)


def test_events_are_dated_within_the_last_year_by_default() -> None:
    # The demo's size: a year of data ends about now, so a 365-day retention counted from the event's
    # time keeps all of it (dated from 2024-01, the demo's welfare sink dropped 157 of 158 rows).
    from datetime import UTC, datetime, timedelta

    now = datetime.now(UTC)
    stream = generate(seed=4, population=2_500 // 11, events=2_500)
    moments = [datetime.fromtimestamp(record["occurred_at"] / 1000, UTC) for _, record in stream]
    assert len(moments) == 2_500
    assert min(moments) > now - timedelta(days=365)
    assert max(moments) < now + timedelta(days=31)


def test_the_default_start_is_eleven_months_before_this_one() -> None:
    from datetime import date

    from producers.synthetic.stream import recent_start

    assert recent_start(date(2026, 12, 6)) == "2026-01"
    assert recent_start(date(2026, 3, 31)) == "2025-04"
    assert generate(start="2024-01", events=10).start == "2024-01"  # an explicit start is kept
