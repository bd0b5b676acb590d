"""Reserved names and sanitising: one home for the names the backbone keeps, and agency prefixes
that never cover one another."""

from __future__ import annotations

import re

import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from backbone.access.acls import Agencies, plan_for_charter
from backbone.events.catalog import CONSENT_EVENT, load_catalog
from backbone.kafka.topics import raw_prefix, shared_prefix
from backbone.policy import names
from backbone.policy.agreements import NAME_PATTERN, load_agreements
from backbone.settings import PROJECT_ROOT
from consumers import ddl

agency_names = st.from_regex(re.compile(NAME_PATTERN.replace("*$", "{0,12}$")), fullmatch=True)


@pytest.fixture(scope="module")
def charter():  # noqa: ANN201 - backbone.policy.agreements.Charter
    return load_agreements(PROJECT_ROOT / "agreements", load_catalog(PROJECT_ROOT / "schemas"))


def test_sanitising_turns_dashes_and_dots_into_underscores() -> None:
    assert names.sanitise("fraud-x") == names.sanitise("fraud_x") == "fraud_x"
    assert names.table_name("tax.income_declared") == "tax_income_declared"


def test_the_demo_agencies_are_free(charter) -> None:  # noqa: ANN001
    agencies = {a.provider for a in charter.agreements} | {a.recipient for a in charter.agreements}
    assert {name: names.reserved_for(name) for name in agencies} == dict.fromkeys(agencies)


def test_every_backbone_principal_in_the_acl_plan_is_a_reserved_name(charter) -> None:  # noqa: ANN001
    agencies = Agencies.from_charter(charter)
    mine = set(agencies.providers) | set(agencies.recipients)
    principals = {g.principal.removeprefix("User:") for g in plan_for_charter(charter)} - mine
    assert principals >= {"processor", "operator", "schema-registry", "consent", "sink-fraud"}
    assert {p: names.reserved_for(p) is not None for p in principals} == dict.fromkeys(principals, True)


def test_the_consent_publisher_is_the_provider_of_the_consent_event(charter) -> None:  # noqa: ANN001
    assert charter.catalog.events[CONSENT_EVENT].provider == names.CONSENT


def test_every_clickhouse_name_the_backbone_makes_for_itself_is_reserved() -> None:
    for name in (ddl.AUDIT_DATABASE, ddl.OVERSIGHT_ROLE, ddl.role_name("", "fraud"), ddl.sink_user("", "fraud"), "system", "default"):
        assert names.reserved_for(name) is not None, name
    assert {ddl.ALERTS_TABLE, ddl.PUBLISHED_TABLE} <= set(names.RESERVED_TABLES)


def test_a_reserved_name_is_refused_as_a_provider_too() -> None:
    uses = [names.Use(name, "provider", f"agreement a@1 in {name}.yaml", f"{name}.yaml") for name in ("operator", "consent", "tax")]
    assert names.agency_problems(uses, ()) == [
        "agreement a@1 in operator.yaml: field provider: operator is reserved for the operator's Kafka principal; choose another agency name"
    ]


def test_clashes_group_distinct_names_by_identifier() -> None:
    assert names.clashes(["fraud-x", "tax", "fraud_x", "fraud-x"]) == {"fraud_x": ["fraud-x", "fraud_x"]}
    assert names.clashes(["fraud", "fraudx", "fraud-x"]) == {}


@given(agency_names, agency_names)
def test_one_agency_s_prefixes_never_cover_another_s(first: str, second: str) -> None:
    if first == second:
        return
    for prefix in (names.group_prefix, raw_prefix, shared_prefix):
        assert not prefix(second).startswith(prefix(first))


@given(agency_names, agency_names)
def test_free_agencies_never_take_a_backbone_role_or_sink_user(first: str, second: str) -> None:
    assume(names.reserved_for(first) is None and names.reserved_for(second) is None)
    assert ddl.role_name("", first) != ddl.sink_user("", second)
    assert ddl.role_name("", first) != ddl.role_name("", ddl.OVERSIGHT_ROLE)
    assert ddl.sink_user("", first) != ddl.sink_user("", ddl.AUDIT_DATABASE)
