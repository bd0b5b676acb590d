"""`backbone contract export --odcs` (issue 32): an event type's contract as an Open Data Contract
Standard v3.1.0 document that validates against the vendored JSON schema of the standard."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import yaml
from jsonschema import Draft201909Validator

from backbone.events.catalog import load_catalog
from backbone.quality.contract import load_quality
from backbone.quality.errors import QualityContractError
from backbone.quality.odcs import SCHEMA_FILE, odcs_document, validate_odcs
from backbone.settings import PROJECT_ROOT

CATALOG = load_catalog(PROJECT_ROOT / "schemas")
CONTRACTS = load_quality(PROJECT_ROOT / "schemas", CATALOG)


def document(event_type: str) -> dict:
    return odcs_document(CATALOG.event(event_type), CONTRACTS.get(event_type))


@pytest.mark.parametrize("event_type", sorted(CATALOG.events))
def test_every_event_type_exports_a_document_the_published_schema_accepts(event_type: str) -> None:
    validator = Draft201909Validator(json.loads(SCHEMA_FILE.read_text()))
    assert list(validator.iter_errors(document(event_type))) == []


def test_the_validation_is_real_a_metric_odcs_does_not_know_is_refused() -> None:
    broken = copy.deepcopy(document("welfare.benefit_claimed"))
    postcode = next(p for p in broken["schema"][0]["properties"] if p["name"] == "postcode")
    postcode["quality"][0]["metric"] = "nullCount"
    with pytest.raises(QualityContractError, match="ODCS document at schema/0/properties/"):
        validate_odcs(broken)


def test_the_quality_rules_become_odcs_metrics_with_their_bars() -> None:
    doc = document("welfare.benefit_claimed")
    props = {p["name"]: p for p in doc["schema"][0]["properties"]}
    nulls, invalid, known = props["postcode"]["quality"]
    assert (nulls["metric"], nulls["unit"], nulls["mustBeLessOrEqualTo"], nulls["dimension"]) == ("nullValues", "percent", 2.0, "completeness")
    assert (invalid["metric"], invalid["arguments"]) == ("invalidValues", {"pattern": r"^[1-9]\d{3} [A-Z]{2}$"})
    reference = CONTRACTS["welfare.benefit_claimed"].references["postcodes"]
    assert (known["metric"], known["arguments"]) == ("invalidValues", {"reference": {
        "name": "postcodes", "file": "reference/postcodes.v1.txt", "values": 18_000, "sha256": reference.sha256}})
    assert props["monthly_amount"]["quality"][1]["arguments"] == {"minimum": 0.0, "maximum": 20000.0}
    assert props["event_id"]["quality"][0]["metric"] == "duplicateValues"
    assert props["national_id"]["classification"] == "restricted" and props["national_id"]["tags"] == ["PII"]
    assert doc["schema"][0]["quality"][0]["metric"] == "rowCount"
    assert [(c["name"], c["dimension"]) for c in doc["schema"][0]["quality"][2:]] == [
        ("claim_after_death", "consistency"), ("national_id_benefit_type_period_uniqueness", "uniqueness")]
    business = doc["schema"][0]["quality"][3]
    assert (business["metric"], business["arguments"], business["mustBeLessOrEqualTo"]) == (
        "duplicateValues", {"properties": ["national_id", "benefit_type", "period"]}, 0.5)
    assert doc["slaProperties"] == [{"property": "latency", "value": 3600.0, "unit": "s", "element": "welfare_benefit_claimed.occurred_at",
                                     "description": "from occurred_at to the backbone's decision"}]


def test_the_cli_writes_a_valid_document_or_names_the_unknown_event_type(backbone_cli, tmp_path: Path) -> None:  # noqa: ANN001
    out = tmp_path / "claims.odcs.yaml"
    result = backbone_cli("contract", "export", "--odcs", "welfare.benefit_claimed", "-o", str(out))
    assert result.returncode == 0, result.stdout + result.stderr
    validate_odcs(yaml.safe_load(out.read_text()))
    result = backbone_cli("contract", "export", "--odcs", "welfare.claimed")
    assert result.returncode == 1 and "unknown event type 'welfare.claimed'" in result.stderr + result.stdout
