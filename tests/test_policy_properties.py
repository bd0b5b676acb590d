"""Properties of the policy engine over generated events and generated agreements."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

import pytest
from fastavro import parse_schema
from fastavro.validation import validate
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from backbone.events.catalog import Catalog, EventSchema, load_catalog
from backbone.keys import pseudonym
from backbone.keys.keyring import Keyring
from backbone.policy import REASONS, Agreement, Charter, DictConsent, PolicyEngine, load_agreements
from backbone.policy.agreements import CLEAR_PII_BASES, RELEASED_HEADER, released_header
from backbone.policy.treatments import base_type, type_kind
from backbone.settings import PROJECT_ROOT
from producers.synthetic.governance import PROFILES
from tests.keys import AutoKeyring

CATALOG: Catalog = load_catalog(PROJECT_ROOT / "schemas")
CHARTER: Charter = load_agreements(PROJECT_ROOT / "agreements", CATALOG)
KEYRING = AutoKeyring()
ENGINE = PolicyEngine(CHARTER, KEYRING)
BASES = ("consent", "contract", "legal_obligation", "vital_interests", "public_task", "legitimate_interests")
PROPERTY_SETTINGS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
UTC_TIMES = st.datetimes(datetime(1971, 1, 1), datetime(2099, 1, 1), timezones=st.just(UTC))


def value_strategy(name: str, info: Any) -> st.SearchStrategy[Any]:
    avro_type = base_type(info)
    if isinstance(avro_type, dict) and avro_type.get("logicalType") == "uuid":
        return st.uuids()
    kind = type_kind(avro_type)
    if "PII" in info.tags and kind == "string":
        # marked so a leak is unmistakable: no other field can hold this text by chance
        strategy = st.text(min_size=4, max_size=20).map(lambda text: f"<{name}>{text}")
    else:
        strategy = {
            "string": st.text(max_size=20),
            "enum": st.sampled_from(avro_type["symbols"]) if kind == "enum" else st.nothing(),
            "int": st.integers(-(2**31), 2**31 - 1),
            "long": st.integers(-(2**63), 2**63 - 1),
            "float": st.floats(-1e6, 1e6, width=32),
            "double": st.floats(allow_nan=False, allow_infinity=False),
            "boolean": st.booleans(),
            "date": st.dates(),
            "timestamp": UTC_TIMES,
        }[kind]
    return st.one_of(st.none(), strategy) if info.nullable else strategy


GOVERNANCE = st.fixed_dictionaries(
    {
        "lawful_basis": st.sampled_from(BASES),
        "purposes": st.lists(st.sampled_from(sorted(CATALOG.purposes)), unique=True),
        "consent_id": st.one_of(st.none(), st.text(min_size=1, max_size=8)),
    }
)


@st.composite
def events(draw: st.DrawFn, schema: EventSchema, governance: st.SearchStrategy[dict] = GOVERNANCE) -> dict:
    event: dict[str, Any] = {}
    for name, info in schema.fields.items():
        if name == "governance":
            event[name] = draw(governance)
        elif name == "event_type":
            event[name] = schema.event_type
        elif name == "provider":
            event[name] = schema.provider
        else:
            event[name] = draw(value_strategy(name, info))
    return event


@st.composite
def consent_states(draw: st.DrawFn, event: dict, schema: EventSchema) -> DictConsent:
    consent = DictConsent()
    subject = event.get(schema.subject_field) if schema.subject_field else None
    if subject:
        purposes = sorted(CATALOG.purposes)
        if draw(st.booleans()):
            purposes = draw(st.lists(st.sampled_from(purposes), unique=True))
        for purpose in purposes:
            consent.set(subject, purpose, draw(st.sampled_from(["granted", "granted", "withdrawn"])), datetime(2024, 1, 1, tzinfo=UTC))
    return consent


DEMO_EVENT_TYPES = st.sampled_from(sorted(CATALOG.events))


def pii_values(event: dict, schema: EventSchema) -> dict[str, str]:
    return {name: event[name] for name in schema.tagged("PII") if isinstance(event.get(name), str)}


def assert_released_only_what_the_agreement_allows(decision: Any, agreement: Agreement, schema: EventSchema, event: dict) -> None:
    listed = {name for name, treatment in agreement.fields.items() if treatment.name != "drop" and name in schema.fields}
    assert set(decision.record) == set(RELEASED_HEADER) | listed
    assert tuple(decision.record) == decision.released_fields
    for name in released_header(agreement):
        if name == "event_id":  # the recipient's own id for the event, never the source's
            assert uuid.UUID(decision.record[name]) != event[name]
        else:
            assert decision.record[name] == event[name]
    clear = {name for name, t in agreement.fields.items() if t.name == "keep"} if agreement.identified else set()
    flat = repr(decision.record)
    for name, value in pii_values(event, schema).items():
        if name not in clear:
            assert value not in flat, f"PII field {name} leaked"


def demo_case() -> st.SearchStrategy[tuple[dict, DictConsent, datetime, EventSchema]]:
    @st.composite
    def build(draw: st.DrawFn) -> tuple[dict, DictConsent, datetime, EventSchema]:
        schema = CATALOG.events[draw(DEMO_EVENT_TYPES)]
        profile = PROFILES[schema.event_type]
        basis, purposes = profile.lawful_basis, profile.purposes
        # half the events carry what the demo's agencies send (plus research consent), so permits are common
        demo = st.fixed_dictionaries(
            {"lawful_basis": st.just(basis), "purposes": st.just([*purposes, "scientific_research"]), "consent_id": st.just("c-1")}
        )
        event = draw(events(schema, st.one_of(demo, GOVERNANCE)))
        now = draw(st.one_of(st.just(datetime(2026, 3, 1, tzinfo=UTC)), st.datetimes(datetime(2022, 1, 1), datetime(2030, 1, 1), timezones=st.just(UTC))))
        return event, draw(consent_states(event, schema)), now, schema

    return build()


@PROPERTY_SETTINGS
@given(demo_case())
def test_demo_releases_only_listed_fields_and_no_pii_unless_identified(case: tuple) -> None:
    event, consent, now, schema = case
    for decision in ENGINE.decide(event, consent, now):
        if decision.permitted:
            agreement = CHARTER.get(decision.agreement_id, decision.agreement_version)
            assert_released_only_what_the_agreement_allows(decision, agreement, schema, event)


@PROPERTY_SETTINGS
@given(demo_case())
def test_every_decision_is_a_permit_or_a_denial_with_exactly_one_reason(case: tuple) -> None:
    event, consent, now, schema = case
    decisions = ENGINE.decide(event, consent, now)
    assert [d.recipient for d in decisions] == list(ENGINE.recipients_for(schema.event_type))
    for decision in decisions:
        if decision.permitted:
            assert decision.reason is None and decision.record is not None
        else:
            assert decision.reason in REASONS and decision.record is None and decision.released_fields == ()


@PROPERTY_SETTINGS
@given(demo_case())
def test_demo_released_records_validate_against_the_recipient_schema(case: tuple) -> None:
    event, consent, now, schema = case
    for decision in ENGINE.decide(event, consent, now):
        if decision.permitted:
            recipient_schema = ENGINE.recipient_schema(decision.agreement_id, schema.event_type, decision.agreement_version)
            assert validate(decision.record, parse_schema(recipient_schema), raise_errors=True)


# generated agreements -----------------------------------------------------------------------------


def fitting_treatments(info: Any) -> list[Any]:
    kind = type_kind(base_type(info))
    options: list[Any] = ["keep", "drop"]
    if kind in {"string", "enum", "int", "long"}:
        options += ["pseudonymise", "encrypt"]
    if kind in {"string", "int", "long"}:
        options.append({"mask": 2})
    if "PII" not in info.tags:
        if kind in {"date", "timestamp"}:
            options += [{"generalise": "year"}, {"generalise": "month"}]
        if kind == "string":
            options.append({"generalise": {"prefix": 2}})
        if kind in {"int", "long", "float", "double"}:
            options.append({"generalise": {"bands": [0, 10, 1000]}})
    return options


@st.composite
def generated_agreements(draw: st.DrawFn) -> Agreement:
    schema = CATALOG.events[draw(DEMO_EVENT_TYPES)]
    basis = draw(st.sampled_from(BASES))
    identified = draw(st.booleans())
    fields = {}
    for name, info in schema.fields.items():
        if name in RELEASED_HEADER or name == "governance" or not draw(st.booleans()):
            continue
        options = fitting_treatments(info)
        if "PII" in info.tags and not (identified and basis in CLEAR_PII_BASES):
            options.remove("keep")
        fields[name] = draw(st.sampled_from(options))
    return Agreement.model_validate(
        {
            "id": "generated",
            "version": 1,
            "title": "generated",
            "provider": schema.provider,
            "recipient": draw(st.sampled_from(["fraud", "research", "x-unit"])),
            "event_types": [schema.event_type],
            "purposes": draw(st.lists(st.sampled_from(sorted(CATALOG.purposes)), min_size=1, max_size=2, unique=True)),
            "lawful_basis": basis,
            "valid_from": "2020-01-01",
            "status": "active",
            "domain": draw(st.sampled_from(["fraud", "research"])),
            "retention_days": 30,
            "identified": identified,
            "fields": fields,
        }
    )


@PROPERTY_SETTINGS
@given(st.data())
def test_generated_agreements_load_and_release_only_what_they_list(data: st.DataObject) -> None:
    agreement = data.draw(generated_agreements())
    charter = Charter(CATALOG, (agreement,), {agreement.key: "<generated>"})
    assert charter.problems() == []
    engine = PolicyEngine(charter, KEYRING)
    schema = CATALOG.events[agreement.event_types[0]]
    matching = st.fixed_dictionaries(
        {"lawful_basis": st.just(agreement.lawful_basis), "purposes": st.just(list(agreement.purposes)), "consent_id": st.just("c-1")}
    )
    event = data.draw(events(schema, st.one_of(matching, GOVERNANCE)))
    consent = data.draw(consent_states(event, schema))
    parsed = parse_schema(engine.recipient_schema("generated"))
    (decision,) = engine.decide(event, consent, datetime(2025, 1, 1, tzinfo=UTC))
    if decision.permitted:
        assert_released_only_what_the_agreement_allows(decision, agreement, schema, event)
        assert validate(decision.record, parsed, raise_errors=True)
    else:
        assert decision.reason in REASONS


@PROPERTY_SETTINGS
@given(st.data())
def test_pii_kept_in_clear_without_identified_is_always_refused(data: st.DataObject) -> None:
    schema = CATALOG.events[data.draw(st.sampled_from([t for t, s in CATALOG.events.items() if s.tagged("PII")]))]
    field = data.draw(st.sampled_from(schema.tagged("PII")))
    basis = data.draw(st.sampled_from(BASES))
    identified = data.draw(st.booleans())
    assume(not (identified and basis in CLEAR_PII_BASES))
    agreement = Agreement.model_validate(
        {
            "id": "leaky", "version": 1, "title": "t", "provider": schema.provider, "recipient": "r",
            "event_types": [schema.event_type], "purposes": ["official_statistics"], "lawful_basis": basis,
            "valid_from": "2020-01-01", "retention_days": 1, "identified": identified, "fields": {field: "keep"},
        }
    )
    problems = Charter(CATALOG, (agreement,), {agreement.key: "leaky.yaml"}).problems()
    assert any(f"field {field} is PII; keep needs identified: true" in p and "leaky@1 in leaky.yaml" in p for p in problems)


# pseudonyms and keys ------------------------------------------------------------------------------

DOMAINS = st.sampled_from(["fraud", "research", "statistics", "oversight"])


@PROPERTY_SETTINGS
@given(st.text(max_size=40), st.text(max_size=40), DOMAINS, DOMAINS)
def test_pseudonyms_are_stable_within_a_domain_and_unlinkable_across(first: str, second: str, domain: str, other: str) -> None:
    token = pseudonym.token(domain, first, keyring=KEYRING)
    assert token == pseudonym.token(domain, first, keyring=KEYRING)
    assert (token == pseudonym.token(domain, second, keyring=KEYRING)) == (first == second)
    if other != domain:
        assert token.split(".")[1] != pseudonym.token(other, first, keyring=KEYRING).split(".")[1]


@settings(max_examples=25, deadline=None)
@given(st.lists(st.text(max_size=30), min_size=1, max_size=5), st.integers(1, 3))
def test_rotation_keeps_every_old_token_reidentifiable(values: list[str], rotations: int) -> None:
    keyring = Keyring.generate(providers=["tax"])
    tokens = []
    for _ in range(rotations):
        tokens += [(value, pseudonym.encrypt("tax", value, keyring=keyring, domain="fraud", field="f")) for value in values]
        keyring.rotate("provider", "tax")
    for value, token in tokens:
        assert pseudonym.reidentify("tax", token, keyring=keyring, domain="fraud", field="f") == value


@pytest.mark.parametrize("reason", REASONS)
def test_reason_codes_are_documented_in_the_engine(reason: str) -> None:
    from backbone.policy import engine

    assert f"`{reason}`" in engine.__doc__
