"""The lineage and catalogue are generated from the charter as enforced (issue 33), and each conforms
to its specification, checked against the vendored schemas and shapes (no network)."""

from __future__ import annotations

import functools
from datetime import UTC, datetime

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from openlineage.client.serde import Serde
from rdflib import URIRef
from rdflib.namespace import DCTERMS

from backbone.catalog import asyncapi, dcat, ropa
from backbone.catalog.flows import charter_flows
from backbone.catalog.openlineage import run_event
from backbone.catalog.terms import agreement_hash
from backbone.catalog.validation import asyncapi_problems, openlineage_problems
from backbone.policy.agreements import Charter, FieldTreatment, default_charter
from backbone.policy.released import released_fields
from backbone.policy.treatments import TreatmentMisfit, TreatmentScope, compile_treatment

NOW = datetime(2026, 6, 1, tzinfo=UTC)


@pytest.fixture(scope="module")
def charter() -> Charter:
    return default_charter()


def expected_treatment(agreement, name: str) -> str:  # noqa: ANN001
    """What the agreement says becomes of a released field (header fields as the event has them)."""
    if name in agreement.fields:
        return agreement.fields[name].name
    return "derive" if name == "event_id" else "keep"


def lineage_of(event: dict, shared_topic: str) -> dict[str, dict]:
    output = next(o for o in event["outputs"] if o["name"] == shared_topic)
    return output["facets"]["columnLineage"]["fields"]


@pytest.mark.parametrize("state", ["START", "RUNNING", "ABORT", "COMPLETE"])
def test_every_run_event_of_the_demo_charter_validates_against_the_openlineage_schemas(charter: Charter, state: str) -> None:
    for agreement in charter.agreements:
        event = Serde.to_dict(run_event(agreement, charter, state, NOW, agreement.valid_from))
        assert openlineage_problems(event) == [], agreement.key


def test_a_malformed_event_or_custom_facet_fails_the_openlineage_check(charter: Charter) -> None:
    agreement = charter.get("tax-to-fraud")
    event = Serde.to_dict(run_event(agreement, charter, "ABORT", NOW, agreement.valid_from))
    event["run"]["runId"] = 42
    event["job"]["facets"]["legalBasis"]["basis"] = "because"
    del event["job"]["facets"]["dataSharingAgreement"]["hash"]
    problems = openlineage_problems(event)
    assert any("runId" in p for p in problems)
    assert any("legalBasis" in p for p in problems)
    assert any("dataSharingAgreement" in p and "hash" in p for p in problems)


def test_column_lineage_follows_each_fields_treatment_for_every_agreement_of_the_demo_charter(charter: Charter) -> None:
    for agreement in charter.agreements:
        event = Serde.to_dict(run_event(agreement, charter, "START", NOW, agreement.valid_from))
        for event_type in agreement.event_types:
            schema = charter.catalog.events[event_type]
            fields = lineage_of(event, f"shared.{agreement.recipient}.{event_type}")
            assert set(fields) == set(released_fields(agreement, schema)), agreement.key
            for name, treatment in agreement.fields.items():
                if treatment.name == "drop":
                    assert name not in fields, f"{agreement.key}: dropped {name} has lineage"
            for name in schema.fields:
                if name not in fields:
                    continue
                (source,) = fields[name]["inputFields"]
                (transformation,) = source["transformations"]
                assert (source["name"], source["field"]) == (f"raw.{event_type}", name)
                treatment = expected_treatment(agreement, name)
                assert transformation["masking"] is (treatment != "keep"), f"{agreement.key}.{name}"
                assert transformation["subtype"] == ("IDENTITY" if treatment == "keep" else "TRANSFORMATION")
                if treatment != "derive":
                    assert transformation["description"].startswith(treatment)
            release = next(o for o in event["outputs"] if o["name"] == f"shared.{agreement.recipient}.{event_type}")["facets"]["release"]
            assert release["treatments"] == {name: expected_treatment(agreement, name) for name in fields}


def test_the_condition_selects_as_a_filter_on_its_fields(charter: Charter) -> None:
    agreement = charter.get("welfare-to-research")
    event = Serde.to_dict(run_event(agreement, charter, "START", NOW, agreement.valid_from))
    output = next(o for o in event["outputs"] if o["name"] == "shared.research.welfare.benefit_claimed")
    assert [(f["field"], f["transformations"][0]["subtype"]) for f in output["facets"]["columnLineage"]["dataset"]] == [
        ("benefit_type", "FILTER")]


def test_purpose_legal_basis_domain_and_hash_ride_in_the_job_facets(charter: Charter) -> None:
    agreement = charter.get("welfare-to-research")
    facets = Serde.to_dict(run_event(agreement, charter, "START", NOW, agreement.valid_from))["job"]["facets"]
    assert facets["processingPurpose"]["purposes"][0]["dpv"] == "https://w3id.org/dpv#ScientificResearch"
    assert facets["legalBasis"]["article"] == "GDPR Art. 6(1)(a)"
    assert facets["sharingDomain"]["domain"] == "research"
    assert facets["dataSharingAgreement"]["hash"] == agreement_hash(agreement)


def test_the_agreement_hash_changes_with_its_terms_not_with_its_status(charter: Charter) -> None:
    agreement = charter.get("tax-to-fraud", 2)
    assert agreement_hash(agreement.model_copy(update={"status": "suspended"})) == agreement_hash(agreement)
    assert agreement_hash(agreement.model_copy(update={"retention_days": 1})) != agreement_hash(agreement)


def test_flows_name_the_recipients_tables_and_views(charter: Charter) -> None:
    flows = {(f.agreement.key, f.event_type): f for f in charter_flows(charter, "t1_")}
    flow = flows[("tax-to-fraud@2", "tax.income_declared")]
    assert (flow.raw_topic, flow.shared_topic, flow.database, flow.table, flow.view) == (
        "raw.tax.income_declared", "shared.fraud.tax.income_declared", "t1_fraud", "tax_income_declared", "tax_to_fraud")
    assert flow.dropped == ("name",)


def test_every_agencys_asyncapi_document_validates_and_lists_exactly_what_it_receives(charter: Charter) -> None:
    servers = asyncapi.Servers(security_protocol="SASL_SSL", sasl_mechanism="SCRAM-SHA-512")
    for agency in asyncapi.agencies(charter):
        document = asyncapi.document(agency, charter, servers)
        assert asyncapi_problems(document) == [], agency
        expected: dict[str, set[str]] = {}
        for agreement_id in {a.id for a in charter.agreements if a.recipient == agency}:
            current = charter.current(agreement_id)
            for event_type in current.event_types:
                expected.setdefault(f"shared.{agency}.{event_type}", set()).update(
                    released_fields(current, charter.catalog.events[event_type]))
        assert {topic: set(names) for topic, names in asyncapi.received_fields(document).items()} == expected, agency
        addresses = {channel["address"] for channel in document["channels"].values()}
        assert all(a.startswith((f"raw.{agency}.", f"shared.{agency}.")) for a in addresses), agency


def test_research_never_sees_the_fields_its_agreement_drops(charter: Charter) -> None:
    received = asyncapi.received_fields(asyncapi.document("research", charter))["shared.research.welfare.benefit_claimed"]
    assert {"name", "bank_account", "declared_other_income", "governance"}.isdisjoint(received)


def test_a_malformed_asyncapi_document_fails_the_check(charter: Charter) -> None:
    document = asyncapi.document("fraud", charter)
    channel = next(iter(document["channels"].values()))
    next(iter(channel["messages"].values()))["bindings"]["kafka"]["schemaIdLocation"] = "somewhere"
    assert asyncapi_problems(document)


def test_the_dcat_catalogue_passes_the_dcat_ap_3_shapes(charter: Charter) -> None:
    graph = dcat.graph(charter)
    ok, report = dcat.conforms(graph)
    assert ok, report
    assert len(set(graph.subjects(predicate=DCTERMS.identifier))) == len({a.id for a in charter.agreements})


def test_a_dataset_without_a_title_violates_the_dcat_ap_shapes(charter: Charter) -> None:
    graph = dcat.graph(charter)
    graph.remove((URIRef("urn:data-sharing-backbone:dataset:tax-to-fraud"), DCTERMS.title, None))
    ok, report = dcat.conforms(graph)
    assert not ok and "dct:title" in report


def test_the_record_of_processing_names_every_agreement_of_the_charter(charter: Charter) -> None:
    records = ropa.records(charter)
    named = {(item["agreement"], item["version"]) for record in records.values() for item in record["activities"]}
    assert named == {(a.id, a.version) for a in charter.agreements}
    for agreement in charter.agreements:
        assert any(i["agreement"] == agreement.id for i in records[agreement.provider]["activities"] if i["role"] == "provider")
        assert any(i["agreement"] == agreement.id for i in records[agreement.recipient]["activities"] if i["role"] == "recipient")
    research = next(i for i in records["research"]["activities"] if i["agreement"] == "welfare-to-research")
    assert {d["field"]: d["released_as"] for d in research["personal_data"]}["bank_account"] == "not released"
    assert research["data_subjects"] == ["claimants (welfare.benefit_claimed)"]
    text = ropa.markdown(records["research"]) + ropa.html_page(records["research"])
    assert "welfare-to-research@1" in text and "GDPR Art. 6(1)(a)" in text


def test_backbone_catalog_all_writes_every_document_a_reader_opens(backbone_cli, tmp_path) -> None:  # noqa: ANN001
    import json

    out = tmp_path / "catalog"
    result = backbone_cli("catalog", "all", "--output", str(out))
    assert result.returncode == 0, result.stderr
    charter = default_charter()
    agencies = asyncapi.agencies(charter)
    assert sorted(p.stem for p in (out / "asyncapi").glob("*.json")) == agencies
    assert {p.name for p in (out / "ropa").iterdir()} >= {f"{agency}.{ext}" for agency in agencies for ext in ("md", "html", "json")}
    assert sorted(p.name for p in (out / "openlineage").iterdir()) == sorted(f"{a.key}.json" for a in charter.agreements)
    event = json.loads((out / "openlineage" / "welfare-to-research@1.json").read_text())
    assert openlineage_problems(event, "JobEvent") == []
    assert (out / "dcat" / "catalog.ttl").read_text().count("a dcat:Dataset") == len({a.id for a in charter.agreements})
    assert str(out / "dcat" / "catalog.jsonld") in result.stdout


def test_backbone_catalog_for_an_unknown_agency_says_which_exist(backbone_cli, tmp_path) -> None:  # noqa: ANN001
    result = backbone_cli("catalog", "asyncapi", "--agency", "nobody", "--output", str(tmp_path))
    assert result.returncode == 1
    assert "nobody" in result.stderr and "fraud" in result.stderr and "Traceback" not in result.stderr


TREATMENTS = ["keep", "drop", "pseudonymise", "encrypt", {"mask": 4}, {"generalise": "year"}, {"generalise": {"prefix": 2}},
              {"generalise": {"bands": [0, 100]}}]


@functools.cache
def demo_charter() -> Charter:
    return default_charter()


@settings(max_examples=25, deadline=None)
@given(data=st.data())
def test_any_agreements_column_lineage_masks_exactly_what_it_does_not_keep(data: st.DataObject) -> None:
    charter = demo_charter()
    schema = charter.catalog.events["welfare.benefit_claimed"]
    base = charter.get("welfare-to-fraud")
    scope = TreatmentScope("fraud", "welfare", None, "fraud")
    fields = {}
    for name, info in schema.fields.items():
        if name in ("event_id", "event_type", "provider", "governance", "occurred_at"):
            continue
        treatment = FieldTreatment.model_validate(data.draw(st.sampled_from(TREATMENTS), label=name))
        try:
            compile_treatment(treatment.name, treatment.params, info, scope)
        except TreatmentMisfit:
            continue  # the loader refuses it: no agreement can say it
        fields[name] = treatment
    agreement = base.model_copy(update={"fields": fields})
    event = Serde.to_dict(run_event(agreement, charter, "START", NOW, agreement.valid_from))
    lineage = lineage_of(event, "shared.fraud.welfare.benefit_claimed")
    released = {name for name, t in fields.items() if t.name != "drop"}
    assert set(lineage) - {"event_id", "event_type", "provider", "occurred_at"} == released
    for name in released:
        (transformation,) = lineage[name]["inputFields"][0]["transformations"]
        assert transformation["masking"] is (fields[name].name != "keep")
    assert openlineage_problems(event) == []


@pytest.mark.parametrize(("protocol", "mechanism", "scheme"), [
    ("PLAINTEXT", None, None), ("SSL", None, "X509"), ("SASL_SSL", "SCRAM-SHA-512", "scramSha512"), ("SASL_PLAINTEXT", "PLAIN", "plain")])
def test_the_asyncapi_security_scheme_is_the_deployments(charter: Charter, protocol: str, mechanism: str | None, scheme: str | None) -> None:
    document = asyncapi.document("research", charter, asyncapi.Servers(security_protocol=protocol, sasl_mechanism=mechanism))
    assert asyncapi_problems(document) == []
    assert document["components"]["securitySchemes"].get("kafka", {}).get("type") == scheme
    assert document["servers"]["kafka"]["protocol"] == ("kafka-secure" if protocol in ("SSL", "SASL_SSL") else "kafka")
