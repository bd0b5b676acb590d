"""OpenLineage run events of agreement versions: each version is a streaming job whose inputs are
the raw topics it reads and whose outputs are the shared topics, tables and views it fills, with
column lineage that follows each field's treatment and custom facets for what no standard facet
says (purpose, legal basis, sharing domain, the agreement and its hash).

    event = run_event(agreement, charter, "ABORT", now, since, names)   # openlineage-python objects
    Serde.to_dict(event)                                                 # the JSON the spec describes

A run is one period in force: START when the version comes into force, RUNNING when a worker starts
(or the version's text changes) while it is in force, ABORT on suspension or revocation, COMPLETE
when its validity ends. The run id is derived from the version, its terms and the moment the period
began, so every worker names the same run the same.
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import attr
from openlineage.client.event_v2 import InputDataset, Job, JobEvent, OutputDataset, Run, RunEvent, RunState, set_producer
from openlineage.client.facet_v2 import (
    DatasetFacet,
    JobFacet,
    RunFacet,
    column_lineage_dataset,
    documentation_job,
    job_type_job,
    schema_dataset,
    tags_dataset,
)

from backbone.catalog.flows import Flow, agreement_flows
from backbone.catalog.terms import LAWFUL_BASES, agreement_hash, purpose_iri
from backbone.policy.agreements import Agreement, Charter

PRODUCER = "urn:data-sharing-backbone:processor"
FACETS_SCHEMA = Path(__file__).with_name("facets.schema.json")
FACETS_SCHEMA_ID = "urn:data-sharing-backbone:openlineage:facets:1-0-0"
STATES = {"START": RunState.START, "RUNNING": RunState.RUNNING, "ABORT": RunState.ABORT, "COMPLETE": RunState.COMPLETE}
RUN_IDS = uuid.UUID("6f1f3b8e-3f4c-4a8e-9a51-6d2b0c7f5e11")  # the uuid5 namespace of run ids
set_producer(PRODUCER)  # the `_producer` of every facet built here (the client's default names the client)


@dataclass(frozen=True, slots=True)
class Namespaces:
    """OpenLineage namespaces: the job's, Kafka's (`kafka://host:port`) and ClickHouse's."""

    jobs: str = "backbone"
    kafka: str = "kafka://127.0.0.1:9092"
    clickhouse: str = "clickhouse://localhost:8123"


def _schema_url(name: str) -> str:
    return f"{FACETS_SCHEMA_ID}#/$defs/{name}"


@attr.define
class AgreementJobFacet(JobFacet):
    """The agreement version this job enforces: id, version, the hash of its terms, its parties."""

    id: str
    version: int
    hash: str
    title: str
    provider: str
    recipient: str
    status: str
    validFrom: str  # noqa: N815
    validUntil: str | None  # noqa: N815
    retentionDays: int  # noqa: N815
    source: str

    @staticmethod
    def _get_schema() -> str:
        return _schema_url("AgreementJobFacet")


@attr.define
class PurposeJobFacet(JobFacet):
    """The purposes the data is shared for, with their DPV concepts."""

    purposes: list[dict[str, str]]

    @staticmethod
    def _get_schema() -> str:
        return _schema_url("PurposeJobFacet")


@attr.define
class LegalBasisJobFacet(JobFacet):
    """The GDPR Art. 6(1) lawful basis of the sharing, with its DPV concepts."""

    basis: str
    article: str
    label: str
    dpv: str
    gdprDpv: str  # noqa: N815

    @staticmethod
    def _get_schema() -> str:
        return _schema_url("LegalBasisJobFacet")


@attr.define
class SharingDomainJobFacet(JobFacet):
    """Within what the recipient's pseudonyms link: the sharing domain (else the recipient alone)."""

    domain: str | None
    linkageDomain: str  # noqa: N815
    identified: bool
    linkableBy: list[str]  # noqa: N815

    @staticmethod
    def _get_schema() -> str:
        return _schema_url("SharingDomainJobFacet")


@attr.define
class ReleaseDatasetFacet(DatasetFacet):
    """What the agreement does to each field of the event on its way here: the treatment per
    released field and the fields not released at all."""

    agreement: str
    treatments: dict[str, str]
    dropped: list[str]

    @staticmethod
    def _get_schema() -> str:
        return _schema_url("ReleaseDatasetFacet")


@attr.define
class AgreementStateRunFacet(RunFacet):
    """Why this run event: the version's status and what changed (`in_force`, `started`, `changed`,
    `suspended`, `revoked`, `expired`)."""

    status: str
    change: str

    @staticmethod
    def _get_schema() -> str:
        return _schema_url("AgreementStateRunFacet")


def run_id(agreement: Agreement, since: datetime) -> str:
    """The run of one period in force: the same for every worker and every restart."""
    return str(uuid.uuid5(RUN_IDS, f"{agreement.key}|{agreement_hash(agreement)}|{since.isoformat()}"))


def _avro_type(avro_type: Any) -> str:
    return avro_type if isinstance(avro_type, str) else json.dumps(avro_type, sort_keys=True)


def _tags(fields: list[tuple[str, tuple[str, ...]]]) -> tags_dataset.TagsDatasetFacet:
    return tags_dataset.TagsDatasetFacet(tags=[tags_dataset.TagsDatasetFacetFields(tag, "true", "CONFLUENT", name)
                                               for name, tags in fields for tag in tags])


def _schema(fields: list[tuple[str, Any, str]]) -> schema_dataset.SchemaDatasetFacet:
    return schema_dataset.SchemaDatasetFacet(fields=[
        schema_dataset.SchemaDatasetFacetFields(name=name, type=_avro_type(avro_type), description=doc or None, ordinal_position=i + 1)
        for i, (name, avro_type, doc) in enumerate(fields)])


def _identity(namespace: str, name: str, flow: Flow) -> column_lineage_dataset.ColumnLineageDatasetFacet:
    """Columns landed as they were received (the sink maps types, never values)."""
    return column_lineage_dataset.ColumnLineageDatasetFacet(fields={
        column.name: column_lineage_dataset.Fields(inputFields=[column_lineage_dataset.InputField(
            namespace, name, column.name,
            transformations=[column_lineage_dataset.Transformation("DIRECT", "IDENTITY", "landed as received", False)])])
        for column in flow.columns})


def column_lineage(flow: Flow, kafka: str) -> column_lineage_dataset.ColumnLineageDatasetFacet:
    """Each shared field from its raw field, by the field's treatment; the condition's fields as
    the filter that selects which events are shared at all."""
    return column_lineage_dataset.ColumnLineageDatasetFacet(
        fields={column.name: column_lineage_dataset.Fields(inputFields=[column_lineage_dataset.InputField(
            kafka, flow.raw_topic, column.source,
            transformations=[column_lineage_dataset.Transformation("DIRECT", column.subtype, column.description, column.masking)])])
            for column in flow.columns},
        dataset=[column_lineage_dataset.InputField(kafka, flow.raw_topic, name,
                                                   transformations=[column_lineage_dataset.Transformation("INDIRECT", "FILTER",
                                                                                                          "the agreement's condition")])
                 for name in flow.condition_fields],
    )


def _outputs(flow: Flow, names: Namespaces) -> list[OutputDataset]:
    released_tags = [(c.name, c.tags) for c in flow.columns if c.treatment == "keep" and c.tags]
    released_schema = _schema([(c.name, c.avro_type, c.description) for c in flow.columns])
    release = ReleaseDatasetFacet(flow.agreement.key, {c.name: c.treatment for c in flow.columns}, list(flow.dropped))
    table = f"{flow.database}.{flow.table}"
    return [
        OutputDataset(names.kafka, flow.shared_topic, facets={
            "schema": released_schema, "tags": _tags(released_tags), "columnLineage": column_lineage(flow, names.kafka),
            "release": release}),
        OutputDataset(names.clickhouse, table, facets={
            "schema": released_schema, "columnLineage": _identity(names.kafka, flow.shared_topic, flow)}),
        OutputDataset(names.clickhouse, f"{flow.database}.{flow.view}", facets={
            "schema": released_schema, "tags": _tags(released_tags), "columnLineage": _identity(names.clickhouse, table, flow),
            "release": release}),
    ]


def _input(flow: Flow, names: Namespaces) -> InputDataset:
    fields = [(info.name, info.type, info.doc) for info in flow.schema.fields.values() if info.name != "governance"]
    return InputDataset(names.kafka, flow.raw_topic, facets={
        "schema": _schema(fields), "tags": _tags([(info.name, tuple(sorted(info.tags))) for info in flow.schema.fields.values()])})


def job_facets(agreement: Agreement, charter: Charter) -> dict[str, JobFacet]:
    basis = LAWFUL_BASES[agreement.lawful_basis]
    catalog = charter.catalog
    return {
        "jobType": job_type_job.JobTypeJobFacet(processingType="STREAMING", integration="BACKBONE", jobType="AGREEMENT"),
        "documentation": documentation_job.DocumentationJobFacet(description=f"{agreement.title}. {agreement.description}".strip(),
                                                                  contentType="text/plain"),
        "dataSharingAgreement": AgreementJobFacet(
            agreement.id, agreement.version, agreement_hash(agreement), agreement.title, agreement.provider, agreement.recipient,
            agreement.status, agreement.valid_from.isoformat(), agreement.valid_until.isoformat() if agreement.valid_until else None,
            agreement.retention_days, charter.source(agreement)),
        "processingPurpose": PurposeJobFacet([{"id": p, "label": catalog.purposes[p].label, "dpv": purpose_iri(catalog, p)}
                                              for p in agreement.purposes]),
        "legalBasis": LegalBasisJobFacet(basis.id, basis.article, basis.label, basis.dpv, basis.gdpr_dpv),
        "sharingDomain": SharingDomainJobFacet(agreement.domain, agreement.linkage_domain, agreement.identified,
                                               list(agreement.linkable_by)),
    }


def _parts(agreement: Agreement, charter: Charter, names: Namespaces, database_prefix: str) -> tuple[Job, list[InputDataset], list[OutputDataset]]:
    flows = agreement_flows(agreement, charter, database_prefix)
    return (Job(namespace=names.jobs, name=agreement.key, facets=job_facets(agreement, charter)),
            [_input(flow, names) for flow in flows], [output for flow in flows for output in _outputs(flow, names)])


def run_event(agreement: Agreement, charter: Charter, state: str, now: datetime, since: datetime,
              names: Namespaces | None = None, change: str | None = None, database_prefix: str = "") -> RunEvent:
    """The OpenLineage run event of one agreement version in `state` (START, RUNNING, ABORT, COMPLETE)."""
    job, inputs, outputs = _parts(agreement, charter, names or Namespaces(), database_prefix)
    run = Run(runId=run_id(agreement, since), facets={
        "agreementState": AgreementStateRunFacet(agreement.status, change or state.lower())})
    return RunEvent(eventType=STATES[state], eventTime=now.isoformat(), run=run, job=job, inputs=inputs, outputs=outputs,
                    producer=PRODUCER)


def job_event(agreement: Agreement, charter: Charter, now: datetime, names: Namespaces | None = None,
              database_prefix: str = "") -> JobEvent:
    """The static lineage of one agreement version (an OpenLineage job event, no run): what the
    catalogue publishes for every version, in force or not."""
    job, inputs, outputs = _parts(agreement, charter, names or Namespaces(), database_prefix)
    return JobEvent(eventTime=now.isoformat(), job=job, inputs=inputs, outputs=outputs, producer=PRODUCER)


def facets_schema() -> dict[str, Any]:
    """The JSON schema of the custom facets (their `_schemaURL`s point into it)."""
    return json.loads(FACETS_SCHEMA.read_text())
