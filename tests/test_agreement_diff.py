"""The agreement review gate: `backbone agreements diff` classifies every change of an agreement as
widening or narrowing with its reason, judges condition changes by replaying real events, and
`agreements apply` refuses a widening change unless someone approved it, recording who."""

from __future__ import annotations

import base64
import json
import os
import random
from collections.abc import Callable
from datetime import date
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import SecretStr

from app.local import provision_keyring
from backbone.control.replay import replay, replay_from_kafka
from backbone.events.catalog import default_catalog
from backbone.events.serde import Decoder, registry_client
from backbone.kafka.compacted import read_to_end
from backbone.kafka.topics import AGREEMENTS_TOPIC, OPERATIONS_TOPIC
from backbone.keys.keyring import Keyring
from backbone.keys.master import encode_master_key, new_master_key
from backbone.policy.agreements import Agreement, load_agreements, to_yaml
from backbone.policy.diff import NARROWING, WIDENING, Verdict, diff, judge, widens
from backbone.policy.rules import check_agreement
from backbone.settings import PROJECT_ROOT, Settings
from producers import AgencyProducer
from producers.synthetic.samples import sample_event
from tests.pipeline import header, read_topic

CATALOG = default_catalog()
CHARTER = load_agreements(PROJECT_ROOT / "agreements", CATALOG)


def edited(agreement_id: str, edit: Callable[[dict], Any], version: int | None = None) -> Agreement:
    """A demo agreement with one edit of its YAML data, validated as the loader would."""
    data = yaml.safe_load(to_yaml(CHARTER.get(agreement_id, version)))
    data.pop("dp_release", None)  # field edits here (a postcode masked, say) would unseat its grouping; tests/test_dp.py diffs it
    edit(data)
    agreement = Agreement.model_validate(data)
    assert check_agreement(agreement, CATALOG, "edit") == []
    return agreement


def same(data: dict) -> None:
    pass


def fields(**treatments: Any) -> Callable[[dict], None]:
    """Set (or, with None, remove) field treatments."""
    def edit(data: dict) -> None:
        for name, treatment in treatments.items():
            if treatment is None:
                data["fields"].pop(name, None)
            else:
                data["fields"][name] = treatment
    return edit


def terms(**values: Any) -> Callable[[dict], None]:
    """Set (or, with None, remove) agreement terms."""
    def edit(data: dict) -> None:
        for name, value in values.items():
            if value is None:
                data.pop(name, None)
            else:
                data[name] = value
    return edit


def both(*edits: Callable[[dict], None]) -> Callable[[dict], None]:
    def edit(data: dict) -> None:
        for each in edits:
            each(data)
    return edit


TWO_PURPOSES = terms(purposes=["fraud_prevention_and_detection", "official_statistics"])
TWO_EVENT_TYPES = both(terms(event_types=["registry.death_registered", "registry.address_changed"]), fields(date_of_death=None))

# (agreement id, edit before, edit after, kind, field, reason fragment)
WIDENING_EDITS = {
    "a PII field newly pseudonymised": ("tax-to-fraud", same, fields(name="pseudonymise"), "field", "name", "field added: name (PII)"),
    "a dropped field generalised": ("welfare-to-fraud", same, fields(date_of_birth={"generalise": "year"}), "field", "date_of_birth", "field added"),
    "pseudonymise weakened to encrypt": ("registry-to-fraud", same, fields(national_id="encrypt"), "treatment", "national_id", "reversed with the provider's key"),
    "pseudonymise weakened to keep": ("tax-to-fraud", same, both(terms(identified=True), fields(bank_account="keep")), "treatment", "bank_account", "releases the value itself"),
    "a date generalised to the month, not the year": ("welfare-to-research", same, fields(date_of_birth={"generalise": "month"}), "treatment", "date_of_birth", "month instead of year (finer)"),
    "a longer postcode prefix": ("welfare-to-research", same, fields(postcode={"generalise": {"prefix": 4}}), "treatment", "postcode", "first 4 characters instead of the first 2"),
    "a new band edge": ("welfare-to-research", same, fields(monthly_amount={"generalise": {"bands": [0, 250, 500, 750, 1000, 2000]}}), "treatment", "monthly_amount", "new band edges [750]"),
    "bands moved (edges neither added nor only removed)": ("welfare-to-research", same, fields(household_size={"generalise": {"bands": [3]}}), "treatment", "household_size", "new band edges [3]"),
    "a prefix swapped for a mask": ("welfare-to-fraud", same, fields(postcode={"mask": 2}), "treatment", "postcode", "not comparable: mask"),
    "a pseudonym swapped for a prefix": ("welfare-to-fraud", fields(period="pseudonymise"), fields(period={"generalise": {"prefix": 4}}), "treatment", "period", "not comparable: generalise"),
    "a mask keeping more characters": ("welfare-to-fraud", fields(bank_account={"mask": 2}), fields(bank_account={"mask": 4}), "treatment", "bank_account", "last 4 characters in clear instead of 2"),
    "the event time finer (year to day)": ("welfare-to-research", same, fields(occurred_at={"generalise": "day"}), "occurred_at", "occurred_at", "day instead of year"),
    "the event time exact again": ("tax-to-statistics", same, fields(occurred_at=None), "occurred_at", "occurred_at", "keep releases the value itself"),
    "a purpose added": ("welfare-to-fraud", same, TWO_PURPOSES, "purpose", None, "may use the data for official_statistics"),
    "a purpose removed (more events qualify; fail closed without replay)": ("welfare-to-fraud", TWO_PURPOSES, same, "purpose", None, "judged by --replay"),
    "the condition removed": ("welfare-to-research", same, terms(condition=None), "condition", None, "every event passes"),
    "the condition changed (fail closed without replay)": ("welfare-to-research", same, terms(condition='benefit_type != "unemployment"'), "condition", None, "changed: judged by --replay"),
    "validity ends later": ("welfare-to-research", same, terms(valid_until="2029-01-01"), "validity", "valid_until", "ends later"),
    "validity open-ended": ("welfare-to-research", same, terms(valid_until=None), "validity", "valid_until", "ends later"),
    "validity starts earlier": ("tax-to-statistics", same, terms(valid_from="2025-01-01"), "validity", "valid_from", "starts earlier"),
    "retention extended": ("welfare-to-research", same, terms(retention_days=1000), "retention_days", None, "keeps records longer"),
    "identified turned on": ("police-to-statistics", same, terms(identified=True), "identified", None, "PII may be kept in clear"),
    "survives erasure turned on": ("tax-to-fraud", same, terms(survives_erasure=True), "survives_erasure", None, "erased people are released again"),
    "linkable_by added": ("welfare-to-research", same, terms(linkable_by=["benefit_type"]), "linkable_by", "benefit_type", "link across sharing domains"),
    "another sharing domain": ("welfare-to-research", same, terms(domain="fraud"), "domain", None, "joinable with the fraud domain"),
    "a sharing domain where there was none": ("police-to-statistics", terms(domain=None), same, "domain", None, "joinable with the statistics domain"),
    "a draft comes into force": ("tax-to-statistics", same, terms(status="active"), "status", None, "comes into force"),
    "an event type added": ("registry-to-fraud", fields(date_of_death=None), TWO_EVENT_TYPES, "event_type", None, "newly receives registry.address_changed"),
    "another recipient": ("registry-to-welfare", same, terms(recipient="fraud"), "recipient", None, "fraud newly receives"),
    "consent no longer needed": ("welfare-to-research", same, terms(lawful_basis="public_task"), "lawful_basis", None, "consent no longer needed"),
    "another lawful basis (fail closed without replay)": ("welfare-to-fraud", same, terms(lawful_basis="legal_obligation"), "lawful_basis", None, "judged by --replay"),
}

NARROWING_EDITS = {
    "a field no longer released": ("tax-to-fraud", same, fields(employer_id=None)),
    "a field dropped explicitly": ("welfare-to-research", same, fields(date_of_birth="drop")),
    "keep strengthened to a mask": ("registry-to-welfare", same, fields(name={"mask": 1})),
    "encrypt strengthened to pseudonymise": ("registry-to-fraud", fields(national_id="encrypt"), same),
    "a shorter postcode prefix": ("welfare-to-research", same, fields(postcode={"generalise": {"prefix": 1}})),
    "a band edge removed": ("welfare-to-research", same, fields(monthly_amount={"generalise": {"bands": [0, 500, 1000, 2000]}})),
    "a date generalised to the year, not the month": ("welfare-to-research", fields(date_of_birth={"generalise": "month"}), same),
    "a mask keeping fewer characters": ("welfare-to-fraud", fields(bank_account={"mask": 4}), fields(bank_account={"mask": 2})),
    "the event time coarser (exact to day)": ("registry-to-welfare", same, fields(occurred_at={"generalise": "day"})),
    "retention shortened": ("welfare-to-research", same, terms(retention_days=365)),
    "a condition added": ("welfare-to-fraud", same, terms(condition="monthly_amount > 100.0")),
    "validity ends": ("welfare-to-fraud", same, terms(valid_until="2030-01-01")),
    "validity starts later": ("welfare-to-fraud", same, terms(valid_from="2024-01-01")),
    "suspended": ("welfare-to-fraud", same, terms(status="suspended")),
    "identified turned off": ("police-to-statistics", terms(identified=True), same),
    "no sharing domain any more": ("police-to-statistics", same, terms(domain=None)),
    "linkable_by removed": ("welfare-to-research", terms(linkable_by=["benefit_type"]), same),
    "an event type removed": ("registry-to-fraud", TWO_EVENT_TYPES, fields(date_of_death=None)),
    "bands coarser": ("welfare-to-research", same, fields(household_size={"generalise": {"bands": [4]}})),
    "only the title and description": ("tax-to-fraud", same, terms(title="Incomes for fraud detection", description="Reworded.")),
}


@pytest.mark.parametrize("name", WIDENING_EDITS)
def test_every_widening_edit_of_the_demo_charter_is_flagged_widening_with_its_reason(name: str) -> None:
    agreement_id, before, after, kind, field, reason = WIDENING_EDITS[name]
    changes = diff(edited(agreement_id, before), edited(agreement_id, after), CATALOG)
    assert widens(changes)
    matching = [c for c in changes if c.kind == kind and c.field == field and c.classification == WIDENING]
    assert matching, changes
    assert any(reason in c.reason for c in matching), [c.reason for c in matching]


@pytest.mark.parametrize("name", NARROWING_EDITS)
def test_no_narrowing_edit_of_the_demo_charter_is_flagged_widening(name: str) -> None:
    agreement_id, before, after = NARROWING_EDITS[name]
    changes = diff(edited(agreement_id, before), edited(agreement_id, after), CATALOG)
    assert not widens(changes), [c for c in changes if c.widening]
    assert all(c.classification == NARROWING and c.reason for c in changes)


@pytest.mark.parametrize("name", [n for n, (*_, kind, _f, _r) in WIDENING_EDITS.items()
                                  if kind in {"field", "treatment", "occurred_at", "validity", "retention_days", "identified",
                                              "linkable_by", "status", "event_type"} and "not comparable" not in WIDENING_EDITS[n][5]
                                  and "moved" not in n])
def test_undoing_an_ordered_widening_narrows(name: str) -> None:
    agreement_id, before, after, *_ = WIDENING_EDITS[name]
    changes = diff(edited(agreement_id, after), edited(agreement_id, before), CATALOG)
    assert changes and not widens(changes)


def test_an_unchanged_agreement_has_no_changes_and_a_new_one_widens_from_nothing() -> None:
    current = CHARTER.current("tax-to-fraud")
    assert diff(current, current, CATALOG) == []
    (change,) = diff(None, current, CATALOG)
    assert (change.kind, change.classification, change.recipient) == ("agreement", WIDENING, "fraud")
    assert "national_id: pseudonymise" in (change.new or "") and "name" not in (change.new or "")


def test_a_moved_recipient_widens_for_the_new_one_and_narrows_for_the_old() -> None:
    changes = diff(CHARTER.get("registry-to-welfare"), edited("registry-to-welfare", terms(recipient="fraud")), CATALOG)
    assert {(c.recipient, c.classification) for c in changes} == {("fraud", WIDENING), ("welfare", NARROWING)}


def test_the_replay_verdict_decides_a_selection_term() -> None:
    (pending,) = diff(CHARTER.get("welfare-to-research"), edited("welfare-to-research", terms(condition="household_size > 1")), CATALOG)
    key = (pending.recipient, pending.event_type, "condition")
    assert pending.judged_by_replay and pending.widening
    (wider,) = judge([pending], {key: Verdict(events=50, newly_selected=3, deselected=0)})
    (narrower,) = judge([pending], {key: Verdict(events=50, newly_selected=0, deselected=7)})
    (unjudged,) = judge([pending], {key: Verdict(events=0, newly_selected=0, deselected=0)})
    assert (wider.classification, narrower.classification, unjudged.classification) == (WIDENING, NARROWING, WIDENING)
    assert "3 are released that the old condition held back" in wider.reason
    assert "none is released" in narrower.reason and "fail closed" in unjudged.reason


def test_the_replay_counts_records_and_fields_per_recipient_without_a_broker() -> None:
    old = edited("welfare-to-fraud", terms(condition="monthly_amount > 1000.0"))
    new = edited("welfare-to-fraud", both(terms(condition="monthly_amount > 500.0"), fields(name="pseudonymise")))
    rng = random.Random(7)
    events = [sample_event(CATALOG.events["welfare.benefit_claimed"], rng) for _ in range(60)]
    changes = diff(old, new, CATALOG)
    result = replay(old, new, CATALOG, Keyring.for_charter(CHARTER), {"welfare.benefit_claimed": events}, changes)
    (figures,) = result.figures
    between = sum(500 < e["monthly_amount"] <= 1000 for e in events)
    assert between > 0
    assert (figures.events, figures.newly_released, figures.no_longer_released) == (60, between, 0)
    assert figures.released_new - figures.released_old == between
    assert figures.fields_gained == ("name",) and figures.fields_lost == ()
    assert result.verdicts[("fraud", "welfare.benefit_claimed", "condition")] == Verdict(60, between, 0)
    assert widens(judge(changes, result.verdicts))


def test_removing_a_purpose_widens_when_events_permitting_only_the_rest_now_qualify() -> None:
    old, new = edited("welfare-to-fraud", TWO_PURPOSES), edited("welfare-to-fraud", same)
    rng = random.Random(3)
    schema = CATALOG.events["welfare.benefit_claimed"]
    fraud_only = {"lawful_basis": "public_task", "purposes": ["fraud_prevention_and_detection"], "consent_id": None}
    events = [sample_event(schema, rng, dict(fraud_only)) for _ in range(5)] + [sample_event(schema, rng) for _ in range(5)]
    changes = diff(old, new, CATALOG)
    result = replay(old, new, CATALOG, Keyring.for_charter(CHARTER), {"welfare.benefit_claimed": events}, changes)
    assert result.verdicts[("fraud", "welfare.benefit_claimed", "purpose")] == Verdict(10, 5, 0)
    (purpose,) = judge(changes, result.verdicts)
    assert purpose.widening and purpose.reason.startswith("purpose removed: in a replay of 10 events, 5 are released")


# CLI ---------------------------------------------------------------------------------------------


@pytest.fixture
def backbone(backbone_cli):  # noqa: ANN001, ANN201
    return backbone_cli


def write(path: Path, agreement: Agreement) -> str:
    path.write_text(to_yaml(agreement))
    return str(path)


def test_cli_diff_exits_1_when_something_widens_and_0_when_nothing_does(tmp_path: Path, backbone) -> None:  # noqa: ANN001
    wider = write(tmp_path / "wider.yaml", edited("tax-to-fraud", both(terms(version=3), fields(name="pseudonymise")), 2))
    narrower = write(tmp_path / "narrower.yaml", edited("tax-to-fraud", both(terms(version=3), fields(employer_id=None)), 2))
    widened = backbone("agreements", "diff", "tax-to-fraud", wider)
    assert widened.returncode == 1, widened.stderr
    assert "field added: name (PII)" in " ".join(widened.stdout.split()) and "--approved-by" in widened.stdout
    narrowed = backbone("agreements", "diff", "tax-to-fraud", narrower)
    assert narrowed.returncode == 0, narrowed.stdout + narrowed.stderr
    assert backbone("agreements", "diff", narrower, narrower).returncode == 0


def test_cli_diff_json_is_a_stable_document_for_ci(tmp_path: Path, backbone) -> None:  # noqa: ANN001
    old = write(tmp_path / "old.yaml", CHARTER.get("welfare-to-research"))
    new = write(tmp_path / "new.yaml", edited("welfare-to-research", both(terms(version=2, condition="household_size > 1"),
                                                                          fields(postcode={"generalise": {"prefix": 1}}))))
    result = backbone("agreements", "diff", old, new, "--format", "json")
    assert result.returncode == 1, result.stderr
    document = json.loads(result.stdout)
    assert set(document) == {"old", "new", "widening", "changes", "replay"}
    assert (document["old"], document["new"], document["widening"], document["replay"]) == ("welfare-to-research@1", "welfare-to-research@2", True, None)
    assert all(set(c) == {"recipient", "event_type", "kind", "field", "old", "new", "classification", "reason"} for c in document["changes"])
    by_kind = {c["kind"]: c for c in document["changes"]}
    assert by_kind["condition"]["classification"] == "widening" and by_kind["condition"]["reason"] == "changed: judged by --replay"
    assert by_kind["treatment"]["classification"] == "narrowing" and by_kind["treatment"]["field"] == "postcode"


@pytest.mark.parametrize("case", ["bad yaml", "missing file", "unknown id", "invalid agreement", "bad format"])
def test_cli_diff_exits_2_with_one_clear_line_on_invalid_input(case: str, tmp_path: Path, backbone) -> None:  # noqa: ANN001
    good = write(tmp_path / "good.yaml", CHARTER.get("tax-to-fraud", 2))
    (tmp_path / "bad.yaml").write_text("id: tax-to-fraud\nfields: [unclosed\n")
    invalid = yaml.safe_load(to_yaml(CHARTER.get("tax-to-fraud", 2)))
    invalid["fields"]["shoe_size"] = "keep"
    (tmp_path / "invalid.yaml").write_text(yaml.safe_dump(invalid))
    args = {
        "bad yaml": ("tax-to-fraud", str(tmp_path / "bad.yaml")),
        "missing file": ("tax-to-fraud", str(tmp_path / "absent.yaml")),
        "unknown id": ("no-such-agreement", good),
        "invalid agreement": ("tax-to-fraud", str(tmp_path / "invalid.yaml")),
        "bad format": ("tax-to-fraud", good, "--format", "xml"),
    }[case]
    result = backbone("agreements", "diff", *args)
    assert result.returncode == 2, result.stdout + result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and "Traceback" not in result.stderr
    assert {"bad yaml": "not valid YAML", "missing file": "no such agreement file", "unknown id": "no agreement 'no-such-agreement'",
            "invalid agreement": "shoe_size", "bad format": "use table or json"}[case] in result.stderr


# On the real stack -------------------------------------------------------------------------------

AMOUNTS = [100.0, 600.0, 700.0, 1200.0, 800.0, 1500.0, 300.0, 900.0, 2000.0, 5000.0, 450.0, 1000.0]


def claim(amount: float) -> dict:
    return {
        "governance": {"lawful_basis": "public_task", "purposes": ["fraud_prevention_and_detection"], "consent_id": None},
        "national_id": "123456782", "name": "Grace Hopper", "date_of_birth": date(1980, 5, 17), "postcode": "1012 AB",
        "benefit_type": "housing_allowance", "period": "2026-03", "monthly_amount": amount, "bank_account": "NL02RABO0300065264",
        "household_size": 2, "declared_other_income": 0.0,
    }


@pytest.fixture
def keyed(registry_settings: Settings) -> Settings:
    """The session's broker and registry, with a keyring for the charter under a master key."""
    master = new_master_key()
    settings = registry_settings.model_copy(update={"master_key": SecretStr(encode_master_key(master))})
    provision_keyring(settings, master)
    return settings


@pytest.mark.integration
def test_a_replay_on_the_real_stack_counts_what_a_condition_change_releases(keyed: Settings, tmp_path: Path, backbone) -> None:  # noqa: ANN001
    with AgencyProducer("welfare", keyed) as producer:
        for amount in AMOUNTS:
            producer.send("welfare.benefit_claimed", claim(amount))
    old = edited("welfare-to-fraud", terms(condition="monthly_amount > 1000.0"))
    new = edited("welfare-to-fraud", terms(version=2, condition="monthly_amount > 500.0"))
    newly = sum(500 < amount <= 1000 for amount in AMOUNTS)  # 600, 700, 800, 900, 1000

    changes = diff(old, new, CATALOG)
    result = replay_from_kafka(keyed, old, new, CATALOG, len(AMOUNTS), changes)
    (figures,) = result.figures
    assert (figures.events, figures.released_old, figures.released_new) == (12, 4, 4 + newly)
    assert (figures.newly_released, figures.no_longer_released, result.skipped) == (newly, 0, 0)
    (condition,) = [c for c in judge(changes, result.verdicts) if c.kind == "condition"]
    assert condition.widening and f"{newly} are released that the old condition held back" in condition.reason

    # the same through the CLI, both ways: relaxing widens (exit 1), tightening back does not (exit 0)
    env = {"BACKBONE_KAFKA_BOOTSTRAP": keyed.kafka_bootstrap, "BACKBONE_SCHEMA_REGISTRY_URL": keyed.schema_registry_url,
           "BACKBONE_DATA_DIR": str(keyed.data_dir), "BACKBONE_MASTER_KEY": keyed.master_key.get_secret_value()}  # type: ignore[union-attr]
    old_file, new_file = write(tmp_path / "old.yaml", old), write(tmp_path / "new.yaml", new)
    relaxed = backbone("agreements", "diff", old_file, new_file, "--replay", str(len(AMOUNTS)), "--format", "json", **env)
    assert relaxed.returncode == 1, relaxed.stderr
    document = json.loads(relaxed.stdout)
    assert document["replay"]["figures"][0]["more"] == newly and document["replay"]["events"] == {"welfare.benefit_claimed": 12}
    (verdict,) = [c for c in document["changes"] if c["kind"] == "condition"]
    assert verdict["classification"] == "widening"
    tightened = backbone("agreements", "diff", new_file, old_file, "--replay", str(len(AMOUNTS)), "--format", "json", **env)
    assert tightened.returncode == 0, tightened.stdout + tightened.stderr
    (verdict,) = [c for c in json.loads(tightened.stdout)["changes"] if c["kind"] == "condition"]
    assert verdict["classification"] == "narrowing" and f"({newly} fewer released)" in verdict["reason"]


@pytest.mark.integration
def test_apply_refuses_a_widening_change_without_an_approver_and_records_the_approver(
        registry_settings: Settings, unique: str, tmp_path: Path, backbone) -> None:  # noqa: ANN001
    agreement_id = f"review-{unique}"
    first = edited("tax-to-fraud", terms(id=agreement_id, version=1, status="draft"), 2)
    second = edited("tax-to-fraud", terms(id=agreement_id, version=2, status="draft", fields={"period": "keep"}), 2)
    env = {"BACKBONE_KAFKA_BOOTSTRAP": registry_settings.kafka_bootstrap, "BACKBONE_SCHEMA_REGISTRY_URL": registry_settings.schema_registry_url,
           "BACKBONE_IDENTITY": "operator-7", "BACKBONE_MASTER_KEY": base64.b64encode(os.urandom(32)).decode()}
    assert backbone("keys", "init", **env).returncode == 0  # the operator's keyring: actions are sealed with its signing key
    first_file, second_file = write(tmp_path / "first.yaml", first), write(tmp_path / "second.yaml", second)

    refused = backbone("agreements", "apply", first_file, **env)  # a new id widens from nothing
    assert refused.returncode == 1
    assert len(refused.stderr.strip().splitlines()) == 1
    assert f"refused: {agreement_id}@1 widens what fraud receives" in refused.stderr and "--approved-by NAME" in refused.stderr
    assert not [m for m in read_to_end(registry_settings, AGREEMENTS_TOPIC) if m.key() == f"{agreement_id}@1".encode()]

    approved = backbone("agreements", "apply", first_file, "--approved-by", "DPO Ada Lovelace", **env)
    assert approved.returncode == 0, approved.stderr
    assert "approved by DPO Ada Lovelace" in approved.stdout
    narrowed = backbone("agreements", "apply", second_file, **env)  # fewer fields than the version it follows: no approval needed
    assert narrowed.returncode == 0, narrowed.stderr

    published = {m.key().decode(): m for m in read_to_end(registry_settings, AGREEMENTS_TOPIC)
                 if m.key().decode().startswith(agreement_id)}
    assert header(published[f"{agreement_id}@1"], "approved_by") == "DPO Ada Lovelace"
    assert header(published[f"{agreement_id}@2"], "approved_by") is None
    assert yaml.safe_load(published[f"{agreement_id}@1"].value())["id"] == agreement_id  # the text stays the agreement

    decode = Decoder(registry_client(registry_settings))
    mine = lambda ms: [r for r in (decode(m.value()).record for m in ms) if r["target"].startswith(agreement_id)]  # noqa: E731
    records = mine(read_topic(registry_settings, OPERATIONS_TOPIC, lambda ms: len(mine(ms)) >= 2))
    assert sorted((r["action"], r["actor"], r["target"], r["outcome"], r["details"].get("approved_by"), r["details"]["widening"])
                  for r in records) == [
        ("agreement_apply", "operator-7", f"{agreement_id}@1", "done", "DPO Ada Lovelace", "yes"),
        ("agreement_apply", "operator-7", f"{agreement_id}@2", "done", None, "no"),
    ]
    assert "new agreement" in next(r for r in records if r["target"].endswith("@1"))["reason"]
