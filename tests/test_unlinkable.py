"""Unlinkable by construction: what recipients in different sharing domains receive about the same
event shares no key, no event id and no keyed value, and the loader refuses agreements whose
releases would link (an exact event time or personal field to two domains, a condition that
selects on PII). Record-level, no broker; the pipeline-level linkage test is in test_linkage.py."""

from __future__ import annotations

import random
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from backbone.errors import AgreementError
from backbone.events.catalog import Catalog, load_catalog
from backbone.policy import Agreement, Charter, DictConsent, NoConsent, PolicyEngine, load_agreements
from backbone.policy.agreements import RELEASED_HEADER
from backbone.settings import PROJECT_ROOT
from producers.synthetic.samples import sample_event
from tests.keys import AutoKeyring
from tests.test_policy_properties import events, fitting_treatments

CATALOG: Catalog = load_catalog(PROJECT_ROOT / "schemas")
NOW = datetime(2026, 3, 1, tzinfo=UTC)
KEYED = {"pseudonymise", "encrypt"}


def agreement(**overrides: Any) -> dict[str, Any]:
    base = {
        "id": "welfare-to-x", "version": 1, "title": "t", "provider": "welfare", "recipient": "x",
        "event_types": ["welfare.benefit_claimed"], "purposes": ["official_statistics"], "lawful_basis": "public_task",
        "valid_from": "2024-01-01", "status": "active", "domain": "x", "retention_days": 30,
        "fields": {"national_id": "pseudonymise", "period": "keep"},
    }
    return {**base, **overrides}


def load(tmp_path: Path, *documents: dict[str, Any]) -> Charter:
    for index, document in enumerate(documents):
        (tmp_path / f"a{index}.yaml").write_text(yaml.safe_dump(document))
    return load_agreements(tmp_path, CATALOG)


def problems(tmp_path: Path, *documents: dict[str, Any]) -> list[str]:
    with pytest.raises(AgreementError) as refused:
        load(tmp_path, *documents)
    return refused.value.problems


# the loader ----------------------------------------------------------------------------------------


def test_exact_event_time_to_two_domains_is_refused_naming_both_agreements(tmp_path: Path) -> None:
    found = problems(tmp_path, agreement(), agreement(id="welfare-to-y", recipient="y", domain="y"))
    assert any("agreement welfare-to-y@1" in p and "field occurred_at" in p and "welfare-to-x@1 (domain x)" in p for p in found)
    assert all("linkable_by: [occurred_at]" in p for p in found)


def test_generalised_event_time_in_one_domain_is_accepted(tmp_path: Path) -> None:
    second = agreement(id="welfare-to-y", recipient="y", domain="y", fields={"occurred_at": {"generalise": "day"}, "period": "keep"})
    charter = load(tmp_path, agreement(), second)
    engine = PolicyEngine(charter, AutoKeyring())
    event = sample_event(CATALOG.events["welfare.benefit_claimed"], random.Random(3))
    event["governance"]["purposes"].append("official_statistics")
    records = {d.recipient: d.record for d in engine.decide(event, NoConsent(), NOW)}
    assert records["x"]["occurred_at"] == event["occurred_at"]
    assert records["y"]["occurred_at"] == event["occurred_at"].replace(hour=0, minute=0, second=0, microsecond=0)


def test_a_deliberate_link_stated_in_both_agreements_is_accepted(tmp_path: Path) -> None:
    first = agreement(linkable_by=["occurred_at"])
    second = agreement(id="welfare-to-y", recipient="y", domain="y", linkable_by=["occurred_at"])
    assert len(load(tmp_path, first, second).agreements) == 2
    (tmp_path / "one-sided").mkdir()
    found = problems(tmp_path / "one-sided", first, agreement(id="welfare-to-y", recipient="y", domain="y"))
    assert len(found) == 1 and "welfare-to-y@1" in found[0], "the agreement that does not state the link is refused"


def test_a_masked_personal_field_to_two_domains_is_refused(tmp_path: Path) -> None:
    time_ok = {"occurred_at": {"generalise": "month"}}
    found = problems(
        tmp_path,
        agreement(fields={**time_ok, "bank_account": {"mask": 4}}),
        agreement(id="welfare-to-y", recipient="y", domain="y", fields={"bank_account": {"mask": 4}}),
    )
    assert any("field bank_account: released exactly" in p for p in found)


def test_same_domain_agreements_may_share_exact_values(tmp_path: Path) -> None:
    assert len(load(tmp_path, agreement(), agreement(id="welfare-to-y", recipient="y")).agreements) == 2


def test_a_condition_on_a_pii_field_is_refused_unless_identified(tmp_path: Path) -> None:
    found = problems(tmp_path, agreement(condition='name.startsWith("A")'))
    assert any("field name is PII and the condition selects on it" in p and "welfare-to-x@1" in p for p in found)
    identified = agreement(condition='name.startsWith("A")', identified=True, domain=None,
                           fields={"national_id": "keep", "name": "keep"})
    (tmp_path / "ok").mkdir()
    assert load(tmp_path / "ok", identified).agreements[0].identified


# the engine --------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def demo() -> tuple[Charter, PolicyEngine]:
    charter = load_agreements(PROJECT_ROOT / "agreements", CATALOG)
    return charter, PolicyEngine(charter, AutoKeyring())


def test_each_recipient_gets_its_own_event_id_and_a_key_from_its_own_domain(demo: tuple[Charter, PolicyEngine]) -> None:
    _, engine = demo
    claim = sample_event(CATALOG.events["welfare.benefit_claimed"], random.Random(5))
    claim["governance"]["purposes"].append("scientific_research")
    claim["governance"]["consent_id"] = "c-1"
    consent = DictConsent()
    consent.set(claim["national_id"], "scientific_research", "granted", NOW)
    claim["benefit_type"] = "housing_allowance"
    decisions = {d.recipient: d for d in engine.decide(claim, consent, NOW) if d.permitted}
    fraud, research = decisions["fraud"], decisions["research"]
    assert fraud.record["event_id"] != research.record["event_id"] != str(claim["event_id"])
    assert fraud.key == fraud.record["national_id"], "keyed by the subject's pseudonym in the domain"
    assert research.key == research.record["national_id"] and research.key != fraud.key
    # deterministic: a replay of the same event gets the same ids and keys (sinks deduplicate)
    again = {d.recipient: d for d in engine.decide(claim, consent, NOW) if d.permitted}
    assert again["fraud"].record["event_id"] == fraud.record["event_id"] and again["research"].key == research.key


def test_an_agreement_without_a_domain_releases_unkeyed_records(demo: tuple[Charter, PolicyEngine]) -> None:
    _, engine = demo
    move = sample_event(CATALOG.events["registry.address_changed"], random.Random(2))
    (decision,) = [d for d in engine.decide(move, NoConsent(), NOW) if d.recipient == "welfare"]
    assert decision.permitted and decision.key is None
    uuid.UUID(decision.record["event_id"])


# the property ----------------------------------------------------------------------------------


@st.composite
def two_domain_charters(draw: st.DrawFn) -> Charter:
    """Two agreements sharing one event type with recipients in different domains, as the loader accepts them."""
    event_type = draw(st.sampled_from(sorted(t for t in CATALOG.events if t != "consent.changed")))
    schema = CATALOG.events[event_type]
    made = []
    for recipient in ("alpha", "beta"):
        fields = {}
        for name, info in schema.fields.items():
            if name in RELEASED_HEADER or name == "governance" or not draw(st.booleans()):
                continue
            options = [t for t in fitting_treatments(info) if not ("PII" in info.tags and t == "keep")]
            fields[name] = draw(st.sampled_from(options))
        fields["occurred_at"] = draw(st.sampled_from([{"generalise": "day"}, {"generalise": "hour"}, {"generalise": "month"}, "keep"]))
        made.append(Agreement.model_validate({
            "id": f"to-{recipient}", "version": 1, "title": "t", "provider": schema.provider, "recipient": recipient,
            "event_types": [event_type], "purposes": ["official_statistics"], "lawful_basis": "public_task",
            "valid_from": "2020-01-01", "status": "active", "domain": recipient, "retention_days": 30, "fields": fields,
        }))
    charter = Charter(CATALOG, tuple(made), {a.key: f"{a.id}.yaml" for a in made})
    assume(charter.problems() == [])  # what the loader refuses never runs
    return charter


def _values(record: dict[str, Any], key: str | None) -> set[str]:
    return {str(value) for value in record.values() if value is not None} | ({key} if key else set())


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])
@given(st.data())
def test_records_released_to_two_domains_share_no_key_id_or_keyed_value(data: st.DataObject) -> None:
    charter = data.draw(two_domain_charters())
    engine = PolicyEngine(charter, AutoKeyring())
    schema = CATALOG.events[charter.agreements[0].event_types[0]]
    governance = st.just({"lawful_basis": "public_task", "purposes": ["official_statistics"], "consent_id": None})
    event = data.draw(events(schema, governance))
    decisions = {d.recipient: d for d in engine.decide(event, NoConsent(), NOW)}
    alpha, beta = decisions["alpha"], decisions["beta"]
    assume(alpha.permitted and beta.permitted)
    for mine, other in ((alpha, beta), (beta, alpha)):
        agreement = charter.get(f"to-{mine.recipient}")
        keyed = {str(mine.record["event_id"])} | ({mine.key} if mine.key else set())
        keyed |= {str(mine.record[n]) for n, t in agreement.fields.items() if t.name in KEYED and mine.record.get(n) is not None}
        assert not keyed & _values(other.record, other.key), "a key, event id or keyed value links the two domains"
    # a value both records hold under one field is one both agreements release in clear or generalised
    for name in set(alpha.record) & set(beta.record):
        if name in ("event_type", "provider") or alpha.record[name] is None or alpha.record[name] != beta.record[name]:
            continue
        treatments = [charter.get(f"to-{r}").fields.get(name) for r in ("alpha", "beta")]
        assert all(t is not None and t.name in {"keep", "generalise", "mask"} for t in treatments), name
        if name == "occurred_at":
            assert any(t.name == "generalise" for t in treatments), "an exact time never reaches two domains"
