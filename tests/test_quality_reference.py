"""Reference checks and business keys in the quality contract (issue 32): a validity rule
`reference: <name>` against a versioned file the contract names (exact as a frozenset, a Bloom
filter above a size with its false-positive rate), and `uniqueness.business_key`."""

from __future__ import annotations

import random
import shutil
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from backbone.events.catalog import load_catalog
from backbone.quality import reference
from backbone.quality.checks import QualityMonitor
from backbone.quality.contract import QualitySection, load_quality, parse_quality
from backbone.quality.reference import BLOOM_FPR, ReferenceSet, read_reference
from backbone.settings import PROJECT_ROOT
from producers.synthetic import generate
from producers.synthetic.identities import known_postcodes, unknown_postcode

SCHEMAS = PROJECT_ROOT / "schemas"
CATALOG = load_catalog(SCHEMAS)
CLAIM = CATALOG.event("welfare.benefit_claimed")
NOW = datetime(2026, 12, 7, 10, 30, tzinfo=UTC)


def problems(section: dict, base: Path = SCHEMAS) -> list[str]:
    return parse_quality({"quality": section}, CLAIM, "claim.quality.yaml", CATALOG, base)[1]


def test_the_postcode_file_is_the_set_the_generator_draws_from() -> None:
    known = read_reference("postcodes", SCHEMAS / "reference" / "postcodes.v1.txt")
    assert known.exact and known.size == 18_000 and "postcodes.v1.txt" in known.source
    drawn = [r[field] for _, r in generate(seed=3, population=400, events=1_500) for field in
             ("postcode", "old_postcode", "new_postcode", "location_postcode") if r.get(field)]
    assert len(drawn) > 500 and all(value in known for value in drawn)
    assert all(unknown_postcode(value) not in known for value in drawn[:200])
    assert len(known_postcodes()) == 9_000  # every area keeps its digits: regions (DP releases) are unchanged


def test_an_unknown_postcode_is_invalid_and_a_known_one_valid_in_flight() -> None:
    contracts = load_quality(SCHEMAS, CATALOG)
    monitor = QualityMonitor([contracts["welfare.benefit_claimed"]])
    for postcode in ("1000 DP", "1000 ZZ", "1000 dp", "1000 DP ", "1000 HJ"):
        monitor.observe("welfare.benefit_claimed", {"postcode": postcode, "occurred_at": NOW}, NOW)
    window, = monitor.closed(NOW + timedelta(hours=1))
    assert window.invalid["postcode:reference"] == 3 and window.checked["postcode:reference"] == 5


def test_a_large_set_is_a_bloom_filter_whose_false_positives_stay_within_the_stated_rate(monkeypatch: pytest.MonkeyPatch) -> None:
    rng = random.Random(11)
    members = {f"{rng.getrandbits(64):016x}" for _ in range(50_000)}
    bloom = ReferenceSet.of("ids", members, bloom_above=10_000)
    exact = ReferenceSet.of("ids", members)
    assert not bloom.exact and bloom.false_positive_rate == BLOOM_FPR and exact.exact and bloom.sha256 == exact.sha256
    assert all(value in bloom for value in members)  # a known value is never refused
    strangers = [f"{rng.getrandbits(64):016x}" for _ in range(100_000)]
    passed = sum(1 for value in strangers if value in bloom and value not in members)
    # binomial(100,000, 0.001): mean 100, sd ~10; 5 standard deviations above the stated rate
    assert passed <= 100_000 * BLOOM_FPR + 50, passed
    assert 12 not in bloom and None not in exact  # not text: never a member
    monkeypatch.setattr(reference, "BLOOM_ABOVE", 100)
    assert not ReferenceSet.of("ids", list(members)[:101]).exact


def test_a_reference_rule_names_a_set_and_a_file_under_the_schemas_directory(tmp_path: Path) -> None:
    rule = {"field": "postcode", "reference": "postcodes"}
    assert problems({"references": {"postcodes": "reference/postcodes.v1.txt"}, "validity": {"rules": [rule]}}) == []
    assert "no reference set 'postcodes'; name its file in `references: {postcodes: reference/<file>}`" in \
        problems({"validity": {"rules": [rule]}})[0]
    assert "no file" in problems({"references": {"postcodes": "reference/postcodes.v9.txt"}, "validity": {"rules": [rule]}})[0]
    assert "a relative path such as reference/postcodes.v1.txt" in \
        problems({"references": {"postcodes": "../agreements/welfare_to_fraud.yaml"}, "validity": {"rules": [rule]}})[0]
    assert "a relative path" in problems({"references": {"postcodes": "/etc/passwd"}, "validity": {"rules": [rule]}})[0]
    assert "a reference set holds text; monthly_amount is double" in problems(
        {"references": {"postcodes": "reference/postcodes.v1.txt"}, "validity": {"rules": [{"field": "monthly_amount", "reference": "postcodes"}]}})[0]
    (tmp_path / "reference").mkdir()
    (tmp_path / "reference" / "empty.txt").write_text("# nothing yet\n")
    assert "holds no values" in problems({"references": {"postcodes": "reference/empty.txt"}, "validity": {"rules": [rule]}}, tmp_path)[0]


def test_a_missing_reference_file_leaves_only_that_contract_out(tmp_path: Path) -> None:
    shutil.copytree(SCHEMAS, tmp_path, dirs_exist_ok=True)
    (tmp_path / "reference" / "postcodes.v1.txt").unlink()
    from backbone.quality.contract import load_quality_checked

    contracts, found = load_quality_checked(tmp_path, load_catalog(tmp_path))
    assert "welfare.benefit_claimed" not in contracts and "tax.income_declared" in contracts
    assert any("references.postcodes: reference postcodes: no file" in problem for problem in found)


def test_a_business_key_names_fields_of_the_event() -> None:
    section = QualitySection.model_validate({"uniqueness": {"key": ["national_id", "period"]}})
    assert (section.uniqueness.key, section.uniqueness.business_key) == ("event_id", ["national_id", "period"])
    assert section.uniqueness.business_label == "national_id+period"
    assert "uniqueness.business_key: welfare.benefit_claimed has no field 'month'" in \
        problems({"uniqueness": {"business_key": ["national_id", "month"]}})[0]
    assert "give the business key once" in problems({"uniqueness": {"key": ["a"], "business_key": ["b"]}})[0]


def test_a_business_key_is_counted_once_per_repeat_and_never_kept_raw() -> None:
    contracts = load_quality(SCHEMAS, CATALOG)
    monitor = QualityMonitor([contracts["welfare.benefit_claimed"]])
    monitor.bind({"welfare.benefit_claimed": "national_id"}, lambda subject: f"k1.{subject[::-1]}")
    claims = [("e1", "123456782", "unemployment", "2026-05"), ("e2", "123456782", "unemployment", "2026-05"),  # a double claim
              ("e2", "123456782", "unemployment", "2026-05"),  # e2 re-sent: the event id's duplicate, not counted again
              ("e3", "123456782", "child_benefit", "2026-05"), ("e4", "987654321", "unemployment", "2026-05"),
              ("e5", "123456782", "unemployment", "")]  # no period: completeness's concern
    for event_id, subject, benefit, period in claims:
        monitor.observe("welfare.benefit_claimed", {"event_id": event_id, "national_id": subject, "benefit_type": benefit,
                                                    "period": period, "occurred_at": NOW}, NOW)
    monitor.flush()
    seen = [marker for markers in monitor._seen_keys.values() for marker in markers]  # noqa: SLF001
    assert len(seen) == 3 and all(isinstance(marker, int) for marker in seen)
    window, = monitor.closed(NOW + timedelta(hours=1))
    assert (window.duplicates, window.key_duplicates) == (1, {"national_id+benefit_type+period": 1})
    assert round(window.key_distinct_estimate("national_id+benefit_type+period")[0]) == 3
    assert b"123456782" not in window.to_bytes() and b"2026-05" not in window.to_bytes()


def test_the_odcs_export_writes_a_small_reference_set_out_as_valid_values() -> None:
    from backbone.quality.contract import QualityContract
    from backbone.quality.odcs import odcs_document, validate_odcs

    section = QualitySection.model_validate({"references": {"postcodes": "reference/small.v1.txt"},
                                             "validity": {"rules": [{"field": "postcode", "reference": "postcodes"}]}})
    small = ReferenceSet.of("postcodes", ["1000 DP", "1000 HJ"], "reference/small.v1.txt")
    document = odcs_document(CLAIM, QualityContract(CLAIM.event_type, "test", section, {"postcodes": small}))
    validate_odcs(document)
    check, = next(p for p in document["schema"][0]["properties"] if p["name"] == "postcode")["quality"]
    assert check["metric"] == "invalidValues" and check["arguments"]["validValues"] == ["1000 DP", "1000 HJ"]
    assert check["arguments"]["reference"] == {"name": "postcodes", "file": "reference/small.v1.txt", "values": 2,
                                               "sha256": small.sha256}
