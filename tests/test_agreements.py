"""The charter loader: the demo's agreements load, and each kind of bad agreement is refused with
a message naming file, agreement (id@version) and field, all problems at once."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
import yaml

from backbone.errors import AgreementError
from backbone.events.catalog import Catalog, default_catalog, load_catalog
from backbone.policy.agreements import load_agreements
from backbone.settings import PROJECT_ROOT
from tests.cli import run_backbone

AGREEMENTS_DIR = PROJECT_ROOT / "agreements"


@pytest.fixture(scope="module")
def catalog() -> Catalog:
    return load_catalog(PROJECT_ROOT / "schemas")


def base_agreement(**changes: object) -> dict:
    """A valid tax -> fraud agreement; tests change one thing each."""
    data = {
        "id": "tax-to-fraud",
        "version": 3,
        "title": "Incomes for fraud detection",
        "provider": "tax",
        "recipient": "fraud",
        "event_types": ["tax.income_declared"],
        "purposes": ["fraud_prevention_and_detection"],
        "lawful_basis": "legal_obligation",
        "valid_from": "2024-01-01",
        "status": "active",
        "domain": "fraud",
        "retention_days": 365,
        "fields": {"national_id": "pseudonymise", "period": "keep", "declared_income": "keep"},
    }
    data.update(changes)
    return data


def write(directory: Path, name: str, data: object) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / name
    path.write_text(data if isinstance(data, str) else yaml.safe_dump(data))
    return path


def refusal(tmp_path: Path, catalog: Catalog, *agreements: dict) -> list[str]:
    for index, data in enumerate(agreements):
        write(tmp_path, f"a{index}.yaml", data)
    with pytest.raises(AgreementError) as caught:
        load_agreements(tmp_path, catalog)
    return caught.value.problems


def test_demo_charter_loads_against_the_event_schemas(catalog: Catalog) -> None:
    charter = load_agreements(AGREEMENTS_DIR, catalog)
    ids = {agreement.id for agreement in charter.agreements}
    assert {"tax-to-fraud", "welfare-to-fraud", "registry-to-welfare", "registry-to-fraud", "police-to-statistics"} <= ids
    assert any(agreement.lawful_basis == "consent" for agreement in charter.agreements)


def test_fraud_domain_is_shared_by_tax_and_welfare_and_by_nobody_else(catalog: Catalog) -> None:
    charter = load_agreements(AGREEMENTS_DIR, catalog)
    domain = {a.id: a.domain for a in charter.agreements}
    assert domain["tax-to-fraud"] == domain["welfare-to-fraud"] == "fraud"
    others = {d for a, d in domain.items() if a not in {"tax-to-fraud", "welfare-to-fraud", "registry-to-fraud"} and d}
    assert "fraud" not in others
    assert domain["welfare-to-research"] != "fraud"


def test_valid_agreement_loads(tmp_path: Path, catalog: Catalog) -> None:
    write(tmp_path, "tax.yaml", base_agreement())
    charter = load_agreements(tmp_path, catalog)
    assert charter.get("tax-to-fraud").key == "tax-to-fraud@3"


def test_unknown_field_is_refused_naming_file_agreement_and_field(tmp_path: Path, catalog: Catalog) -> None:
    problems = refusal(tmp_path, catalog, base_agreement(fields={"salary": "keep"}))
    assert len(problems) == 1
    assert "agreement tax-to-fraud@3 in " in problems[0] and "a0.yaml" in problems[0]
    assert "field salary is not in tax.income_declared" in problems[0]


@pytest.mark.parametrize(
    ("field", "treatment", "expected"),
    [
        ("period", {"generalise": "year"}, "needs a date or timestamp field"),
        ("period", {"generalise": {"bands": [0, 10]}}, "needs a number field"),
        ("declared_income", {"generalise": {"prefix": 2}}, "needs a string field"),
        ("declared_income", "pseudonymise", "needs a string, enum or integer field"),
        ("declared_income", {"generalise": {"bands": [10, 0]}}, "increasing numbers"),
        ("period", {"mask": -1}, "mask needs the number"),
        ("period", "scramble", "unknown treatment 'scramble'"),
    ],
)
def test_treatment_that_does_not_fit_the_field_type_is_refused(
    tmp_path: Path, catalog: Catalog, field: str, treatment: object, expected: str
) -> None:
    problems = refusal(tmp_path, catalog, base_agreement(fields={field: treatment}))
    assert len(problems) == 1
    assert f"field {field}" in problems[0] and expected in problems[0] and "tax-to-fraud@3" in problems[0]


def test_unknown_purpose_is_refused(tmp_path: Path, catalog: Catalog) -> None:
    problems = refusal(tmp_path, catalog, base_agreement(purposes=["marketing"]))
    assert any("unknown purpose 'marketing'" in p and "tax-to-fraud@3" in p for p in problems)


def test_condition_that_does_not_compile_is_refused(tmp_path: Path, catalog: Catalog) -> None:
    problems = refusal(tmp_path, catalog, base_agreement(condition="declared_income >"))
    assert len(problems) == 1 and "condition" in problems[0] and "does not compile" in problems[0]


def test_condition_naming_an_unknown_field_is_refused(tmp_path: Path, catalog: Catalog) -> None:
    problems = refusal(tmp_path, catalog, base_agreement(condition="salary > 1000.0"))
    assert len(problems) == 1
    assert problems[0].startswith("agreement tax-to-fraud@3 in ") and "a0.yaml" in problems[0]
    assert problems[0].endswith("field salary named in the condition is not a field of tax.income_declared")


def test_condition_may_use_macro_variables(tmp_path: Path, catalog: Catalog) -> None:
    write(tmp_path, "a.yaml", base_agreement(condition='governance.purposes.exists(p, p == "legal_compliance")'))
    assert load_agreements(tmp_path, catalog).get("tax-to-fraud").condition


def test_overlapping_active_versions_of_one_agreement_are_refused(tmp_path: Path, catalog: Catalog) -> None:
    first = base_agreement(version=1, valid_from="2024-01-01", valid_until="2025-06-01")
    second = base_agreement(version=2, valid_from="2025-01-01")
    problems = refusal(tmp_path, catalog, first, second)
    assert len(problems) == 1
    assert "tax-to-fraud@2" in problems[0] and "overlaps active version tax-to-fraud@1" in problems[0]


def test_consecutive_versions_and_suspended_overlaps_are_accepted(tmp_path: Path, catalog: Catalog) -> None:
    write(tmp_path, "v1.yaml", base_agreement(version=1, valid_from="2024-01-01", valid_until="2025-01-01"))
    write(tmp_path, "v2.yaml", base_agreement(version=2, valid_from="2025-01-01"))
    write(tmp_path, "v3.yaml", base_agreement(version=3, valid_from="2024-06-01", status="suspended"))
    assert len(load_agreements(tmp_path, catalog).versions("tax-to-fraud")) == 3


def test_two_active_agreements_for_the_same_recipient_and_event_type_are_refused(tmp_path: Path, catalog: Catalog) -> None:
    problems = refusal(tmp_path, catalog, base_agreement(), base_agreement(id="tax-to-fraud-extra", version=1))
    assert len(problems) == 1 and "one agreement per provider, recipient and event type" in problems[0]


def test_pii_kept_in_clear_without_identified_is_refused(tmp_path: Path, catalog: Catalog) -> None:
    problems = refusal(tmp_path, catalog, base_agreement(fields={"bank_account": "keep"}))
    assert len(problems) == 1
    assert "field bank_account is PII; keep needs identified: true and a legal_obligation or public_task basis" in problems[0]
    assert problems[0].startswith("agreement tax-to-fraud@3 in ")


def test_pii_kept_in_clear_on_a_consent_basis_is_refused_even_if_identified(tmp_path: Path, catalog: Catalog) -> None:
    problems = refusal(tmp_path, catalog, base_agreement(identified=True, lawful_basis="consent", fields={"national_id": "keep"}))
    assert any("field national_id is PII" in p for p in problems)


def test_pii_kept_in_clear_with_identified_public_task_is_accepted(tmp_path: Path, catalog: Catalog) -> None:
    write(tmp_path, "a.yaml", base_agreement(identified=True, lawful_basis="public_task", fields={"national_id": "keep"}))
    assert load_agreements(tmp_path, catalog).get("tax-to-fraud").identified


def test_pseudonymise_without_a_domain_is_refused(tmp_path: Path, catalog: Catalog) -> None:
    data = base_agreement()
    del data["domain"]
    problems = refusal(tmp_path, catalog, data)
    assert any("field national_id" in p and "domain" in p for p in problems)


def test_header_and_governance_fields_cannot_be_listed(tmp_path: Path, catalog: Catalog) -> None:
    problems = refusal(tmp_path, catalog, base_agreement(fields={"event_id": "keep", "occurred_at": "drop", "governance": "keep"}))
    assert len(problems) == 3
    assert any("field event_id is a header field" in p for p in problems)
    assert any("field occurred_at is an envelope field: keep it or generalise it" in p for p in problems)
    assert any("field governance is never released" in p for p in problems)


def test_event_type_of_another_provider_is_refused(tmp_path: Path, catalog: Catalog) -> None:
    problems = refusal(tmp_path, catalog, base_agreement(event_types=["welfare.benefit_claimed"], fields={}))
    assert any("published by welfare, not by provider tax" in p for p in problems)


def test_bad_yaml_is_refused_naming_the_file_and_line(tmp_path: Path, catalog: Catalog) -> None:
    write(tmp_path, "broken.yaml", "id: x\nfields: [unclosed\n")
    with pytest.raises(AgreementError) as caught:
        load_agreements(tmp_path, catalog)
    assert len(caught.value.problems) == 1
    assert "broken.yaml: not valid YAML at line" in caught.value.problems[0]


def test_schema_errors_name_the_file_agreement_and_field(tmp_path: Path, catalog: Catalog) -> None:
    data = base_agreement(status="paused")
    del data["retention_days"]
    problems = refusal(tmp_path, catalog, data)
    assert any("tax-to-fraud@3" in p and "field status" in p for p in problems)
    assert any("tax-to-fraud@3" in p and "field retention_days" in p and "required" in p for p in problems)


def test_every_problem_in_every_file_is_reported_at_once(tmp_path: Path, catalog: Catalog) -> None:
    write(tmp_path, "broken.yaml", "::: not yaml :::\n  - [")
    problems = refusal(
        tmp_path,
        catalog,
        base_agreement(purposes=["marketing"], fields={"salary": "keep", "bank_account": "keep"}),
    )
    assert len(problems) == 4
    message = str(AgreementError(problems))
    assert message.startswith("4 problems in agreements:")


def test_problems_never_carry_yaml_values_other_than_names(tmp_path: Path, catalog: Catalog) -> None:
    problems = refusal(tmp_path, catalog, base_agreement(retention_days="123456782-secret"))
    assert not any("123456782-secret" in p for p in problems)


def _backbone(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return run_backbone(*args, env=env, timeout=60)


def test_cli_validate_accepts_the_demo_charter() -> None:
    result = _backbone("agreements", "validate", str(AGREEMENTS_DIR))
    assert result.returncode == 0, result.stderr
    assert "valid" in result.stdout


def test_cli_validate_lists_every_problem_and_exits_1(tmp_path: Path) -> None:
    write(tmp_path, "bad.yaml", base_agreement(purposes=["marketing"], fields={"salary": "keep"}))
    write(tmp_path, "broken.yaml", "id: [")
    result = _backbone("agreements", "validate", str(tmp_path))
    assert result.returncode == 1
    assert "3 problem(s)" in result.stderr
    assert "unknown purpose 'marketing'" in result.stderr and "field salary" in result.stderr
    assert "broken.yaml: not valid YAML" in result.stderr


def test_cli_list_shows_who_shares_what_with_whom() -> None:
    result = _backbone("agreements", "list", str(AGREEMENTS_DIR))
    assert result.returncode == 0, result.stderr
    assert "tax -> fraud" in result.stdout and "welfare-to-research" in result.stdout and "draft" in result.stdout


def test_default_catalog_is_the_repository_schemas() -> None:
    assert "tax.income_declared" in default_catalog().events


def test_every_demo_agreement_round_trips_through_its_yaml_text(catalog: Catalog) -> None:
    from backbone.policy.agreements import parse_agreement, to_yaml

    for agreement in load_agreements(AGREEMENTS_DIR, catalog).agreements:
        parsed, problems = parse_agreement(yaml.safe_load(to_yaml(agreement)), "agreements.changes")
        assert problems == [] and parsed == agreement


@pytest.mark.parametrize("name", ["audit", "oversight", "operator", "processor", "schema-registry", "schema_registry", "consent",
                                  "system", "default", "information_schema", "backbone", "backbone-ops", "sink-fraud", "sink_fraud"])
def test_a_name_the_backbone_keeps_for_itself_is_refused_as_a_recipient(tmp_path: Path, catalog: Catalog, name: str) -> None:
    problems = refusal(tmp_path, catalog, base_agreement(recipient=name))
    assert any(p.startswith("agreement tax-to-fraud@3 in ") and f"field recipient: {name} is reserved for " in p for p in problems), problems


def test_the_consent_publisher_may_provide_its_own_events_but_no_one_may_receive_as_it(tmp_path: Path, catalog: Catalog) -> None:
    data = base_agreement(provider="consent", event_types=["consent.changed"], lawful_basis="public_task", fields={})
    write(tmp_path, "consent.yaml", data)
    assert load_agreements(tmp_path, catalog).agreements[0].provider == "consent"
    problems = refusal(tmp_path / "other", catalog, base_agreement(recipient="consent"))
    assert any("field recipient: consent is reserved for the consent publisher's Kafka principal" in p for p in problems), problems


def test_two_recipients_that_become_one_database_are_refused_naming_both_files(tmp_path: Path, catalog: Catalog) -> None:
    write(tmp_path, "x.yaml", base_agreement(id="x", version=1, recipient="fraud-x"))
    write(tmp_path, "y.yaml", base_agreement(id="y", version=1, recipient="fraud_x"))
    with pytest.raises(AgreementError) as caught:
        load_agreements(tmp_path, catalog)
    assert [p for p in caught.value.problems if "both become" in p] == [
        f"agreement y@1 in {tmp_path / 'y.yaml'}: field recipient: fraud_x and fraud-x (in {tmp_path / 'x.yaml'})"
        " both become database fraud_x; rename one"
    ]


def test_agreement_ids_that_become_one_view_of_a_recipient_are_refused(tmp_path: Path, catalog: Catalog) -> None:
    problems = refusal(tmp_path, catalog, base_agreement(id="tax-to-x", version=1),
                       base_agreement(id="tax_to_x", version=1, status="suspended"))
    assert any("field id: tax_to_x and tax-to-x (in " in p and "both become view tax_to_x in database fraud; rename one" in p
               for p in problems), problems


@pytest.mark.parametrize(("agreement_id", "taken"), [("tax-income-declared", "table of tax.income_declared"),
                                                      ("alerts", "table alerts of the fraud rules")])
def test_a_view_that_would_take_a_table_s_name_is_refused(tmp_path: Path, catalog: Catalog, agreement_id: str, taken: str) -> None:
    problems = refusal(tmp_path, catalog, base_agreement(id=agreement_id, version=1))
    assert any(f"field id: its view {agreement_id.replace('-', '_')} in database fraud would take the name of the {taken}" in p
               for p in problems), problems


def test_distinct_names_that_stay_distinct_are_accepted(tmp_path: Path, catalog: Catalog) -> None:
    write(tmp_path, "a.yaml", base_agreement(id="tax-to-fraud-x", version=1, recipient="fraud-x"))
    write(tmp_path, "b.yaml", base_agreement(id="tax-to-fraudx", version=1, recipient="fraudx"))
    assert {a.recipient for a in load_agreements(tmp_path, catalog).agreements} == {"fraud-x", "fraudx"}
