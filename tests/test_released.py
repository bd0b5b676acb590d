"""What an agreement releases is known from the agreement and the event schema alone: no key, no
broker, no registry. Sinks plan their tables and views from it."""

from __future__ import annotations

import pytest

from backbone.events.catalog import load_catalog
from backbone.keys.keyring import Keyring
from backbone.policy.agreements import Charter, load_agreements
from backbone.policy.engine import PolicyEngine
from backbone.policy.released import released_fields, released_schema
from backbone.settings import PROJECT_ROOT, load_settings
from consumers import ddl
from consumers.plans import audit_plan, recipient_plan


@pytest.fixture(scope="module")
def charter() -> Charter:
    return load_agreements(PROJECT_ROOT / "agreements", load_catalog(PROJECT_ROOT / "schemas"))


def test_released_schema_is_the_schema_the_engine_encodes_with(charter: Charter) -> None:
    engine = PolicyEngine(charter, Keyring.for_charter(charter))
    for agreement in charter.agreements:
        for event_type in agreement.event_types:
            schema = charter.catalog.events[event_type]
            assert released_schema(agreement, schema) == engine.recipient_schema(agreement.id, event_type, agreement.version)
            assert released_fields(agreement, schema) == engine.released_fields(agreement.id, event_type, agreement.version)


def test_released_schema_has_only_listed_fields_and_no_personal_tag_unless_kept(charter: Charter) -> None:
    for agreement in charter.agreements:
        for event_type in agreement.event_types:
            schema = released_schema(agreement, charter.catalog.events[event_type])
            names = [field["name"] for field in schema["fields"]]
            header = [name for name in ("event_id", "event_type", "occurred_at", "provider") if name not in agreement.fields]
            assert names[:len(header)] == header and "occurred_at" in names
            assert "governance" not in names
            for field in schema["fields"][len(header):]:
                treatment = agreement.fields[field["name"]].name
                assert treatment != "drop"
                assert field["backbone:treatment"] == treatment
                if treatment != "keep":
                    assert "confluent:tags" not in field, f"{agreement.key}: {field['name']} is no longer personal"


def test_sink_plans_need_no_keyring(charter: Charter, tmp_path) -> None:  # noqa: ANN001
    settings = load_settings(data_dir=tmp_path, keyring_path=tmp_path / "no-such-keyring.json", clickhouse_database_prefix="p_")
    for recipient in sorted({a.recipient for a in charter.agreements}):
        plan = recipient_plan(settings, charter, recipient)
        assert plan.databases == (f"p_{ddl.database_name('', recipient)}",)
        assert plan.subscription == f"^shared\\.{recipient}\\..*"
        assert plan.tables and plan.views
        route = plan.route(f"shared.{recipient}.tax.income_declared")
        assert (route.database, route.table) == (f"p_{recipient}", "tax_income_declared")
    audit = audit_plan(settings, charter.catalog)
    assert audit.subscription == "audit.decisions" and audit.databases == ("p_audit",)
