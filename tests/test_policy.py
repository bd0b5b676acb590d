"""Policy decisions on the demo charter: what each recipient receives, and every denial reason."""

from __future__ import annotations

import io
import random
import uuid
from datetime import UTC, date, datetime

import pytest
import yaml
from fastavro import parse_schema, schemaless_reader, schemaless_writer
from fastavro.validation import validate

from backbone.errors import AgreementError, KeyringError
from backbone.events.catalog import Catalog, load_catalog
from backbone.keys import pseudonym
from backbone.keys.keyring import Keyring
from backbone.policy import REASONS, Charter, ConsentRecord, DictConsent, NoConsent, PolicyEngine, load_agreements
from backbone.policy.decision import DictErasures
from backbone.settings import PROJECT_ROOT
from producers.synthetic.samples import sample_event
from tests.keys import AutoKeyring

NOW = datetime(2026, 3, 1, tzinfo=UTC)
HEADER = ("event_id", "event_type", "occurred_at", "provider")


@pytest.fixture(scope="module")
def catalog() -> Catalog:
    return load_catalog(PROJECT_ROOT / "schemas")


@pytest.fixture(scope="module")
def charter(catalog: Catalog) -> Charter:
    return load_agreements(PROJECT_ROOT / "agreements", catalog)


@pytest.fixture
def keyring() -> Keyring:
    return AutoKeyring()


@pytest.fixture
def engine(charter: Charter, keyring: Keyring) -> PolicyEngine:
    return PolicyEngine(charter, keyring)


def event(catalog: Catalog, event_type: str, seed: int = 1, **values: object) -> dict:
    record = sample_event(catalog.events[event_type], random.Random(seed))
    record.update(values)
    return record


def claim(catalog: Catalog, **values: object) -> dict:
    values = {
        "national_id": "123456782",
        "benefit_type": "housing_allowance",
        "governance": {
            "lawful_basis": "public_task",
            "purposes": ["fraud_prevention_and_detection", "scientific_research"],
            "consent_id": "consent-1",
        },
        **values,
    }
    return event(catalog, "welfare.benefit_claimed", **values)


def _granted(status: str = "granted") -> ConsentRecord:
    return ConsentRecord(status, NOW)  # type: ignore[arg-type]


def by_recipient(decisions: list) -> dict:
    return {decision.recipient: decision for decision in decisions}


def test_tax_income_reaches_fraud_pseudonymised_without_name(catalog: Catalog, engine: PolicyEngine, keyring: Keyring) -> None:
    income = event(catalog, "tax.income_declared")
    decision = by_recipient(engine.decide(income, NoConsent(), NOW))["fraud"]
    assert decision.permitted and decision.reason is None
    assert (decision.agreement_id, decision.agreement_version) == ("tax-to-fraud", 2)
    record = decision.record
    assert record["national_id"] == pseudonym.token("fraud", income["national_id"], keyring=keyring)
    assert record["bank_account"] == pseudonym.token("fraud", income["bank_account"], keyring=keyring)
    assert "name" not in record and "governance" not in record
    assert record["period"] == income["period"] and record["declared_income"] == income["declared_income"]
    assert decision.purposes == ("fraud_prevention_and_detection",)
    assert decision.key_ids == (record["national_id"].split(".")[0],)


def test_header_fields_are_released_with_the_recipients_own_event_id(catalog: Catalog, engine: PolicyEngine) -> None:
    income = event(catalog, "tax.income_declared")
    record = by_recipient(engine.decide(income, NoConsent(), NOW))["fraud"].record
    assert {name: record[name] for name in HEADER[1:]} == {name: income[name] for name in HEADER[1:]}
    assert tuple(record)[:4] == HEADER
    # the recipient's own id for the event: a UUID, not the source id, the same on every replay
    assert uuid.UUID(record["event_id"]) != income["event_id"]
    assert by_recipient(engine.decide(income, NoConsent(), NOW))["fraud"].record["event_id"] == record["event_id"]


def test_released_fields_name_exactly_the_record_keys(catalog: Catalog, engine: PolicyEngine) -> None:
    for event_type in catalog.events:
        for decision in engine.decide(event(catalog, event_type), NoConsent(), NOW):
            if decision.permitted:
                assert tuple(decision.record) == decision.released_fields


def test_tax_and_welfare_pseudonyms_of_one_person_join_in_the_fraud_domain(catalog: Catalog, engine: PolicyEngine) -> None:
    income = event(catalog, "tax.income_declared", national_id="123456782")
    benefit = claim(catalog)
    income_token = by_recipient(engine.decide(income, NoConsent(), NOW))["fraud"].record["national_id"]
    claim_decisions = by_recipient(engine.decide(benefit, DictConsent({("123456782", "scientific_research"): _granted()}), NOW))
    assert claim_decisions["fraud"].record["national_id"] == income_token
    assert claim_decisions["research"].permitted
    assert claim_decisions["research"].record["national_id"] != income_token


def test_welfare_claim_to_fraud_generalises_quasi_identifiers(catalog: Catalog, engine: PolicyEngine) -> None:
    benefit = claim(catalog, date_of_birth=date(1984, 7, 9), postcode="1234 AB")
    record = by_recipient(engine.decide(benefit, NoConsent(), NOW))["fraud"].record
    assert "date_of_birth" not in record and record["postcode"] == "1234"
    for kept in ("benefit_type", "period", "monthly_amount", "household_size", "declared_other_income"):
        assert record[kept] == benefit[kept]
    assert "name" not in record


def test_identified_agreement_keeps_national_id_and_name_in_clear(catalog: Catalog, engine: PolicyEngine) -> None:
    move = event(catalog, "registry.address_changed")
    decision = by_recipient(engine.decide(move, NoConsent(), NOW))["welfare"]
    assert decision.permitted
    assert decision.record["national_id"] == move["national_id"] and decision.record["name"] == move["name"]
    assert decision.key_ids == ()


def test_police_incident_reaches_statistics_without_suspect(catalog: Catalog, engine: PolicyEngine) -> None:
    incident = event(catalog, "police.incident_reported", suspect_national_id="123456782", location_postcode="3511 AB")
    decision = by_recipient(engine.decide(incident, NoConsent(), NOW))["statistics"]
    assert decision.permitted
    assert decision.record["location_postcode"] == "35" and decision.record["offence_category"] == incident["offence_category"]
    assert "suspect_national_id" not in decision.record and "incident_id" not in decision.record


def test_every_possible_recipient_gets_one_decision(catalog: Catalog, engine: PolicyEngine) -> None:
    death = event(catalog, "registry.death_registered")
    decisions = engine.decide(death, NoConsent(), NOW)
    assert [d.recipient for d in decisions] == list(engine.recipients_for("registry.death_registered")) == ["fraud", "welfare"]


def test_recipient_without_agreement_for_the_event_type_is_denied_no_agreement(catalog: Catalog, engine: PolicyEngine) -> None:
    death = event(catalog, "registry.death_registered")
    decision = by_recipient(engine.decide(death, NoConsent(), NOW))["welfare"]
    assert (decision.permitted, decision.reason, decision.agreement_id, decision.record) == (False, "no_agreement", None, None)


def test_draft_agreement_denies_agreement_inactive(catalog: Catalog, engine: PolicyEngine) -> None:
    decision = by_recipient(engine.decide(event(catalog, "tax.income_declared"), NoConsent(), NOW))["statistics"]
    assert (decision.reason, decision.agreement_id) == ("agreement_inactive", "tax-to-statistics")


def test_outside_validity_period_denies_agreement_inactive(catalog: Catalog, engine: PolicyEngine) -> None:
    before = datetime(2022, 6, 1, tzinfo=UTC)
    decision = by_recipient(engine.decide(event(catalog, "tax.income_declared"), NoConsent(), before))["fraud"]
    assert decision.reason == "agreement_inactive"


def test_the_version_valid_at_now_applies(catalog: Catalog, engine: PolicyEngine) -> None:
    income = event(catalog, "tax.income_declared")
    in_2024 = by_recipient(engine.decide(income, NoConsent(), datetime(2024, 6, 1, tzinfo=UTC)))["fraud"]
    in_2025 = by_recipient(engine.decide(income, NoConsent(), datetime(2025, 6, 1, tzinfo=UTC)))["fraud"]
    assert (in_2024.agreement_version, "employer_id" in in_2024.record) == (1, False)
    assert (in_2025.agreement_version, "employer_id" in in_2025.record) == (2, True)


def test_purpose_not_in_event_governance_denies(catalog: Catalog, engine: PolicyEngine) -> None:
    income = event(catalog, "tax.income_declared", governance={"lawful_basis": "legal_obligation", "purposes": ["official_statistics"], "consent_id": None})
    assert by_recipient(engine.decide(income, NoConsent(), NOW))["fraud"].reason == "purpose_not_permitted"


def test_other_lawful_basis_denies_basis_mismatch(catalog: Catalog, engine: PolicyEngine) -> None:
    governance = {"lawful_basis": "contract", "purposes": ["fraud_prevention_and_detection"], "consent_id": None}
    income = event(catalog, "tax.income_declared", governance=governance)
    assert by_recipient(engine.decide(income, NoConsent(), NOW))["fraud"].reason == "basis_mismatch"


def test_consent_agreement_needs_a_consent_reference_or_consent_basis(catalog: Catalog, engine: PolicyEngine) -> None:
    governance = {"lawful_basis": "public_task", "purposes": ["scientific_research"], "consent_id": None}
    benefit = claim(catalog, governance=governance)
    consent = DictConsent({("123456782", "scientific_research"): _granted()})
    assert by_recipient(engine.decide(benefit, consent, NOW))["research"].reason == "basis_mismatch"
    benefit["governance"] = {**governance, "lawful_basis": "consent"}
    assert by_recipient(engine.decide(benefit, consent, NOW))["research"].permitted


def test_consent_based_sharing_without_consent_denies_consent_missing(catalog: Catalog, engine: PolicyEngine) -> None:
    decision = by_recipient(engine.decide(claim(catalog), NoConsent(), NOW))["research"]
    assert decision.reason == "consent_missing"


def test_withdrawn_consent_denies_consent_based_sharing(catalog: Catalog, engine: PolicyEngine) -> None:
    consent = DictConsent()
    consent.set("123456782", "scientific_research", "withdrawn", NOW)
    decision = by_recipient(engine.decide(claim(catalog), consent, NOW))["research"]
    assert decision.reason == "consent_withdrawn"


def test_consent_of_another_subject_does_not_count(catalog: Catalog, engine: PolicyEngine) -> None:
    consent = DictConsent({("999999999", "scientific_research"): _granted()})
    assert by_recipient(engine.decide(claim(catalog), consent, NOW))["research"].reason == "consent_missing"


def test_false_condition_denies_condition_false(catalog: Catalog, engine: PolicyEngine) -> None:
    consent = DictConsent({("123456782", "scientific_research"): _granted()})
    decision = by_recipient(engine.decide(claim(catalog, benefit_type="disability"), consent, NOW))["research"]
    assert decision.reason == "condition_false" and decision.record is None


def test_a_consent_store_that_raises_denies_consent_missing(catalog: Catalog, engine: PolicyEngine) -> None:
    class BrokenConsent:
        def get(self, subject: str, purpose: str) -> None:
            raise ConnectionError("table unavailable")

    assert by_recipient(engine.decide(claim(catalog), BrokenConsent(), NOW))["research"].reason == "consent_missing"


def test_every_reason_code_is_reachable_on_the_demo_charter(catalog: Catalog, engine: PolicyEngine) -> None:
    seen = set()
    granted = DictConsent({("123456782", "scientific_research"): _granted()})
    withdrawn = DictConsent({("123456782", "scientific_research"): _granted("withdrawn")})
    cases = [
        (event(catalog, "registry.death_registered"), NoConsent(), NOW),
        (event(catalog, "tax.income_declared"), NoConsent(), NOW),
        (event(catalog, "tax.income_declared", governance={"lawful_basis": "legal_obligation", "purposes": [], "consent_id": None}), NoConsent(), NOW),
        (event(catalog, "tax.income_declared", governance={"lawful_basis": "contract", "purposes": ["fraud_prevention_and_detection"], "consent_id": None}), NoConsent(), NOW),
        (claim(catalog), NoConsent(), NOW),
        (claim(catalog), withdrawn, NOW),
        (claim(catalog, benefit_type="disability"), granted, NOW),
    ]
    for record, consent, now in cases:
        seen |= {d.reason for d in engine.decide(record, consent, now) if not d.permitted}
    engine.erasures = DictErasures({"123456782"})
    seen |= {d.reason for d in engine.decide(claim(catalog), granted, NOW) if not d.permitted}
    assert seen == set(REASONS)


def test_condition_that_raises_denies_condition_false(catalog: Catalog, charter: Charter, keyring: Keyring) -> None:
    broken = charter.get("police-to-statistics").model_copy(update={"version": 2, "status": "draft"})
    engine = PolicyEngine(charter, keyring)
    engine.apply(broken.model_copy(update={"condition": "1 / (size(incident_id) - size(incident_id)) == 0"}))
    engine.set_status("police-to-statistics", 1, "revoked")
    engine.set_status("police-to-statistics", 2, "active")
    decision = by_recipient(engine.decide(event(catalog, "police.incident_reported"), NoConsent(), NOW))["statistics"]
    assert (decision.permitted, decision.reason, decision.agreement_version) == (False, "condition_false", 2)


def test_event_without_governance_is_denied_not_raised(catalog: Catalog, engine: PolicyEngine) -> None:
    income = event(catalog, "tax.income_declared")
    del income["governance"]
    decisions = engine.decide(income, NoConsent(), NOW)
    assert {d.reason for d in decisions} == {"purpose_not_permitted", "agreement_inactive"}


def test_unexpected_value_in_a_treated_field_denies(catalog: Catalog, engine: PolicyEngine) -> None:
    benefit = claim(catalog, postcode=1234)  # not the string the schema promises
    decision = by_recipient(engine.decide(benefit, NoConsent(), NOW))["fraud"]
    assert (decision.permitted, decision.reason) == (False, "condition_false")


def test_unknown_event_type_has_no_recipients(engine: PolicyEngine) -> None:
    assert engine.decide({"event_type": "unknown.thing"}, NoConsent(), NOW) == []
    assert engine.recipients_for("unknown.thing") == ()


def test_suspending_at_runtime_denies_and_reactivating_permits(catalog: Catalog, engine: PolicyEngine) -> None:
    income = event(catalog, "tax.income_declared")
    engine.set_status("tax-to-fraud", 2, "suspended")
    assert by_recipient(engine.decide(income, NoConsent(), NOW))["fraud"].reason == "agreement_inactive"
    engine.set_status("tax-to-fraud", 2, "active")
    assert by_recipient(engine.decide(income, NoConsent(), NOW))["fraud"].permitted


def test_applying_a_new_agreement_at_runtime_adds_its_recipient(catalog: Catalog, engine: PolicyEngine) -> None:
    text = (PROJECT_ROOT / "agreements" / "police_to_statistics.yaml").read_text()
    data = yaml.safe_load(text) | {"id": "police-to-justice", "recipient": "justice", "purposes": ["law_enforcement"]}
    engine.apply(data)
    assert engine.recipients_for("police.incident_reported") == ("justice", "statistics")
    assert by_recipient(engine.decide(event(catalog, "police.incident_reported"), NoConsent(), NOW))["justice"].permitted


def test_applying_an_invalid_agreement_is_refused_and_changes_nothing(catalog: Catalog, engine: PolicyEngine) -> None:
    data = yaml.safe_load((PROJECT_ROOT / "agreements" / "registry_to_welfare.yaml").read_text())
    data |= {"version": 2, "identified": False, "valid_from": "2030-01-01"}
    with pytest.raises(AgreementError, match="field national_id is PII"):
        engine.apply(data)
    assert engine.charter.get("registry-to-welfare").version == 1


def test_engine_start_fails_without_a_key_for_a_domain(charter: Charter) -> None:
    with pytest.raises(KeyringError, match="no key for domain 'fraud'"):
        PolicyEngine(charter, Keyring.generate(domains=["research", "statistics", "oversight"]))


@pytest.mark.parametrize("agreement_id", ["tax-to-fraud", "welfare-to-fraud", "welfare-to-research", "registry-to-welfare", "registry-to-fraud", "police-to-statistics"])
def test_recipient_schema_validates_and_round_trips_released_records(catalog: Catalog, engine: PolicyEngine, agreement_id: str) -> None:
    schema = engine.recipient_schema(agreement_id)
    parsed = parse_schema(schema)
    assert schema["namespace"].startswith("backbone.shared.")
    consent = DictConsent()
    released = 0
    for seed in range(30):
        event_type = engine.charter.get(agreement_id).event_types[0]
        record = event(catalog, event_type, seed)
        if record.get("national_id"):
            consent.set(record["national_id"], "scientific_research", "granted", NOW)
        record["governance"]["purposes"].append("scientific_research")
        record["governance"]["consent_id"] = "c"
        for decision in engine.decide(record, consent, NOW):
            if decision.permitted and decision.agreement_id == agreement_id:
                assert validate(decision.record, parsed, raise_errors=True)
                buffer = io.BytesIO()
                schemaless_writer(buffer, parsed, decision.record)
                buffer.seek(0)
                decoded = schemaless_reader(buffer, parsed)
                assert {**decoded, "event_id": str(decoded["event_id"])} == decision.record
                assert [f["name"] for f in schema["fields"]] == list(decision.released_fields)
                released += 1
    assert released > 0


def test_recipient_schema_needs_the_event_type_only_when_ambiguous(engine: PolicyEngine) -> None:
    fields = [f["name"] for f in engine.recipient_schema("tax-to-fraud", "tax.income_declared", version=1)["fields"]]
    assert "employer_id" not in fields and "declared_income" in fields
    with pytest.raises(AgreementError, match="does not share"):
        engine.recipient_schema("tax-to-fraud", "welfare.benefit_claimed")


def test_decisions_are_immutable(catalog: Catalog, engine: PolicyEngine) -> None:
    decision = engine.decide(event(catalog, "tax.income_declared"), NoConsent(), NOW)[0]
    with pytest.raises(AttributeError):
        decision.permitted = True  # type: ignore[misc]



def test_after_key_rotation_the_reloaded_keyring_makes_new_pseudonyms(catalog: Catalog, charter: Charter) -> None:
    keyring = Keyring.for_charter(charter)
    engine = PolicyEngine(charter, keyring)
    income = event(catalog, "tax.income_declared")
    before = by_recipient(engine.decide(income, NoConsent(), NOW))["fraud"]
    rotated = keyring.rotate("domain", "fraud")
    engine.use_keyring(keyring)
    after = by_recipient(engine.decide(income, NoConsent(), NOW))["fraud"]
    assert after.key_ids == (rotated.key_id,) != before.key_ids
    assert after.record["national_id"].startswith(rotated.key_id + ".")


def test_changing_a_condition_recompiles_it(charter: Charter) -> None:
    agreement = charter.get("welfare-to-research")
    assert agreement.program.execute({"benefit_type": "disability"}) is False
    changed = agreement.model_copy(update={"condition": 'benefit_type == "disability"'})
    assert changed.program.execute({"benefit_type": "disability"}) is True
