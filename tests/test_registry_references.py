"""An event type whose schema references another registered schema, end to end: an agency
publishes with confluent-kafka's AvroSerializer and a schema that names a shared address record
(and the governance record) registered under subjects of their own; the processor reads those
events through the registry's references, applies a test-only agreement, and the recipient's sink
lands the released fields, the nested address included, in its table.

The event type, the shared record and the agreement exist only in this test's copies of `schemas/`
and `agreements/`; the demo's charter is unchanged."""

from __future__ import annotations

import json
import shutil
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from confluent_kafka import Producer
from confluent_kafka.schema_registry import Schema, SchemaReference
from confluent_kafka.schema_registry.avro import AvroSerializer
from confluent_kafka.serialization import MessageField, SerializationContext

from backbone.clickhouse.client import make_client
from backbone.events.catalog import load_catalog
from backbone.events.serde import register, registry_client
from backbone.kafka.topics import AUDIT_TOPIC, raw_topic
from backbone.policy.agreements import load_agreements
from consumers import ddl
from consumers.sink import sinks_for
from producers import AgencyProducer
from tests.pipeline import Worker, private_stack, read_topic

pytestmark = [pytest.mark.integration, pytest.mark.slow]

EVENT_TYPE = "registry.resident_relocated"
ADDRESS = {
    "type": "record", "name": "Address", "namespace": "backbone", "doc": "A postal address (test-only shared record).",
    "fields": [{"name": "postcode", "type": "string"}, {"name": "municipality", "type": "string"}],
}
AGREEMENT = """\
id: registry-to-welfare-relocations
version: 1
title: Relocations with their new address, for benefit administration (test only)
provider: registry
recipient: welfare
event_types: [registry.resident_relocated]
purposes: [service_provision]
lawful_basis: public_task
valid_from: 2023-01-01
status: active
identified: true
retention_days: 365
fields:
  national_id: keep
  new_address: keep
  moved_on: keep
"""


def relocation_schema(schemas: Path) -> dict:
    """The test-only event schema: the catalog's header fields (governance by name), then a field
    whose type is the shared `backbone.Address`, named and not defined."""
    header = json.loads((schemas / "registry.address_changed.avsc").read_text())["fields"][:5]
    return {
        "type": "record", "name": "ResidentRelocated", "namespace": "backbone.registry", "doc": "A resident moved (test only).",
        "fields": [*header,
                   {"name": "national_id", "type": "string", "confluent:tags": ["PII"]},
                   {"name": "new_address", "type": "backbone.Address", "confluent:tags": ["QUASI_ID"]},
                   {"name": "moved_on", "type": {"type": "int", "logicalType": "date"}}],
    }


def test_an_event_whose_schema_references_a_shared_record_reaches_the_recipients_table(
    tmp_path_factory: pytest.TempPathFactory, clickhouse_dsn: str, clickhouse_client  # noqa: ANN001
) -> None:
    root = tmp_path_factory.mktemp("references")
    with private_stack(root / "data", partitions=1) as base:
        schemas, agreements = root / "schemas", root / "agreements"
        shutil.copytree(base.schemas_dir, schemas)
        shutil.copytree(base.agreements_dir, agreements)
        (schemas / "backbone.Address.avsc").write_text(json.dumps(ADDRESS))
        event_schema = relocation_schema(schemas)
        (schemas / f"{EVENT_TYPE}.avsc").write_text(json.dumps(event_schema))
        (agreements / "registry_to_welfare_relocations.yaml").write_text(AGREEMENT)
        settings = base.model_copy(update={
            "schemas_dir": schemas, "agreements_dir": agreements, "clickhouse_dsn": clickhouse_dsn,
            "clickhouse_database_prefix": f"r{uuid.uuid4().hex[:8]}_", "sink_batch_seconds": 0.3,
        })
        catalog = load_catalog(schemas)
        charter = load_agreements(agreements, catalog)

        # the agency: the shared records under subjects of their own, the event schema naming them
        client = registry_client(settings)
        register(client, "backbone.Address", ADDRESS)
        register(client, "backbone.Governance", catalog.internal_schema("backbone.Governance"))
        references = [SchemaReference("backbone.Address", "backbone.Address", 1),
                      SchemaReference("backbone.Governance", "backbone.Governance", 1)]
        serialize = AvroSerializer(client, Schema(json.dumps(event_schema), "AVRO", references))
        with AgencyProducer("registry", settings, catalog) as agency:  # creates the raw topic; gives the subject key
            key = agency.subject_key("19800101-1234")
        event_id = str(uuid.uuid4())
        now = datetime.now(UTC).replace(microsecond=0)  # within the agreement's retention, which the table's TTL applies
        moved_on = now.date() - timedelta(days=3)
        record = {
            "event_id": event_id, "event_type": EVENT_TYPE, "occurred_at": now, "provider": "registry",
            "governance": {"lawful_basis": "public_task", "purposes": ["service_provision"], "consent_id": None},
            "national_id": "19800101-1234", "new_address": {"postcode": "1011 AB", "municipality": "Amsterdam"},
            "moved_on": moved_on,
        }
        topic = raw_topic(EVENT_TYPE)
        value = serialize(record, SerializationContext(topic, MessageField.VALUE))
        schema_id = int.from_bytes(value[1:5], "big")
        assert [r.subject for r in client.get_schema(schema_id).references] == ["backbone.Address", "backbone.Governance"]

        worker = Worker(settings, "logs/references").start()
        try:
            producer = Producer(settings.producer_config())
            producer.produce(topic, value, key)
            assert producer.flush(10) == 0
            audit = read_topic(settings, AUDIT_TOPIC, lambda ms: any(event_id.encode() in m.value() for m in ms), timeout=90)
            assert any(event_id.encode() in m.value() for m in audit), f"the processor decided the event; log {worker.log_path}"
        finally:
            worker.stop()

        for sink in sinks_for(settings, charter, make_client(clickhouse_dsn), registry_client(settings), recipients=["welfare"], audit=False):
            sink.run_until_idle(idle_s=1.5, timeout_s=90)
            sink.close()
        database = ddl.database_name(settings.clickhouse_database_prefix, "welfare")
        rows = clickhouse_client.query(f"SELECT national_id, new_address, moved_on FROM {ddl.qualified(database, ddl.table_name(EVENT_TYPE))} FINAL")
        assert [tuple(row) for row in rows.result_rows] == [("19800101-1234", {"postcode": "1011 AB", "municipality": "Amsterdam"}, moved_on)]
