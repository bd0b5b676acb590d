"""The `quality:` section of an event type's contract (issue 32): loaded once, every problem named."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import yaml

from backbone.events.catalog import load_catalog
from backbone.quality.contract import ODCS_METRICS, load_quality, parse_quality, parse_threshold
from backbone.quality.errors import QualityContractError
from backbone.settings import PROJECT_ROOT

SCHEMAS = PROJECT_ROOT / "schemas"
CATALOG = load_catalog(SCHEMAS)
CLAIM = CATALOG.event("welfare.benefit_claimed")


def problems(section: object) -> list[str]:
    contract, found = parse_quality({"quality": section}, CLAIM, "claim.quality.yaml")
    assert (contract is None) == bool(found)
    return found


def test_every_raw_event_type_of_the_repository_has_a_valid_quality_section() -> None:
    contracts = load_quality(SCHEMAS, CATALOG)
    assert set(contracts) == set(CATALOG.raw_event_types)
    claim = contracts["welfare.benefit_claimed"].quality
    assert claim.dimensions() == ["completeness", "validity", "uniqueness", "timeliness", "volume", "consistency"]
    assert str(claim.completeness.threshold) == ">= 98"
    assert set(ODCS_METRICS) <= set(claim.dimensions())


def test_a_field_the_schema_lacks_is_named_with_the_fields_it_has() -> None:
    found = problems({"completeness": {"fields": ["postcod"]}})
    assert len(found) == 1
    assert "claim.quality.yaml (welfare.benefit_claimed): completeness.fields" in found[0]
    assert "no field 'postcod'" in found[0] and "postcode" in found[0]


@pytest.mark.parametrize(("rule", "says"), [
    ({"field": "postcode", "min": 0}, "min/max need a number; postcode is string"),
    ({"field": "monthly_amount", "pattern": "^1"}, "a pattern needs a string; monthly_amount is double"),
    ({"field": "benefit_type", "values": ["pension"]}, "['pension'] are not symbols of benefit_type"),
    ({"field": "period", "pattern": "(unclosed"}, "is not a regular expression"),
    ({"field": "monthly_amount", "min": 10, "max": 1}, "min 10 is above max 1"),
    ({"field": "period", "pattern": "^x", "values": ["a"]}, "give exactly one of values, min/max, pattern or reference"),
    ({"field": "period"}, "give exactly one of values, min/max, pattern or reference (got none)"),
])
def test_a_validity_rule_that_cannot_work_is_refused_with_the_fix(rule: dict, says: str) -> None:
    found = problems({"validity": {"rules": [rule]}})
    assert any(says in problem for problem in found), found
    assert all(problem.startswith("claim.quality.yaml (welfare.benefit_claimed): quality.validity") or
               "validity.rules[0]" in problem for problem in found)


@pytest.mark.parametrize("bad", ["98", ">= 101", "=> 98", "at least 98", -1])
def test_a_threshold_is_a_bar_on_a_0_to_100_score(bad: object) -> None:
    with pytest.raises(ValueError, match=r'write it as ">= 98"'):
        parse_threshold(bad)
    assert any("write it as" in p for p in problems({"uniqueness": {"threshold": bad}}))


def test_thresholds_compare_as_written() -> None:
    assert parse_threshold(98) == parse_threshold(">= 98")  # a bare YAML number reads as ">="
    assert parse_threshold(">= 98").met(98.0) and not parse_threshold("> 98").met(98.0)
    assert parse_threshold("> 99.5").met(99.6)


def test_unknown_dimensions_and_keys_are_refused() -> None:
    assert any("freshness" in p for p in problems({"freshness": {"max_delay_seconds": 3}}))
    assert any("max_delay" in p for p in problems({"timeliness": {"max_delay": 3}}))
    found, = [parse_quality({"rules": []}, CLAIM, "x.yaml")[1]]
    assert found == ["x.yaml (welfare.benefit_claimed): expected one top-level key `quality:` holding any of "
                     "completeness, validity, uniqueness, timeliness, volume, consistency"]


def test_the_loader_lists_every_problem_of_every_file(tmp_path: Path) -> None:
    shutil.copytree(SCHEMAS, tmp_path, dirs_exist_ok=True)
    (tmp_path / "welfare.benefit_claimed.quality.yaml").write_text(yaml.safe_dump({"quality": {"uniqueness": {"key": "nope"}}}))
    (tmp_path / "tax.income_declared.quality.yaml").write_text("quality: [unclosed\n")
    (tmp_path / "tax.income_filed.quality.yaml").write_text("quality: {}\n")
    with pytest.raises(QualityContractError) as caught:
        load_quality(tmp_path, load_catalog(tmp_path))
    text = str(caught.value)
    assert "3 problems in quality contracts" in text
    assert "uniqueness.key: welfare.benefit_claimed has no field 'nope'" in text
    assert "tax.income_declared.quality.yaml: not valid YAML at line" in text
    assert "no event type 'tax.income_filed' in the catalog" in text


def test_a_consistency_rule_names_real_events_and_fields_of_the_catalog() -> None:
    def found(rule: dict) -> list[str]:
        return parse_quality({"quality": {"consistency": {"rules": [rule]}}}, CLAIM, "c.yaml", CATALOG)[1]

    good = {"name": "claim_after_death", "after": "registry.death_registered", "at": "date_of_death", "field": "period"}
    assert found(good) == []
    assert found({**good, "after": "registry.deaths"}) == ["c.yaml (welfare.benefit_claimed): consistency.rules[0]: "
                                                           "after: no event type 'registry.deaths' in the catalog"]
    assert "registry.death_registered has no field 'died_on'" in found({**good, "at": "died_on"})[0]
    assert "welfare.benefit_claimed has no field 'month'" in found({**good, "field": "month"})[0]
    twice = parse_quality({"quality": {"consistency": {"rules": [good, good]}}}, CLAIM, "c.yaml", CATALOG)[1]
    assert "names ['claim_after_death'] repeat" in twice[0]
