"""Fail closed on the control plane, record by record (no broker): agreement status changes survive
new texts and schema changes, a change that cannot be applied denies what it concerns, and consent
follows the log's order with unreadable records counting as withdrawals."""

from __future__ import annotations

import functools
import json
import random
import shutil
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from backbone.control.agreement_changes import STATUS_PREFIX, AgreementFeed, StatusChange
from backbone.errors import RegistryUnavailable
from backbone.events.catalog import load_catalog
from backbone.events.serde import Decoder, Encoder, LocalSchemas, encoder_for
from backbone.kafka.compacted import Retry
from backbone.policy import NoConsent, PolicyEngine, load_agreements
from backbone.policy.agreements import to_yaml
from backbone.settings import PROJECT_ROOT
from processors.consent import ConsentTable
from producers.synthetic.samples import sample_event
from tests.keys import AutoKeyring

NOW = datetime(2026, 3, 1, tzinfo=UTC)


def engine_and_feed(schemas_dir: Path = PROJECT_ROOT / "schemas", agreements_dir: Path = PROJECT_ROOT / "agreements"):  # noqa: ANN201
    catalog = load_catalog(schemas_dir)
    engine = PolicyEngine(load_agreements(agreements_dir, catalog), AutoKeyring())
    feed = AgreementFeed(catalog, lambda key: any(a.key == key for a in engine.charter.agreements), engine.apply,
                         lambda i, v, s: engine.set_status(i, v, s))  # type: ignore[arg-type]
    return engine, feed


def fraud_decision(engine: PolicyEngine) -> str:
    income = sample_event(engine.charter.catalog.events["tax.income_declared"], random.Random(1))
    (decision,) = [d for d in engine.decide(income, NoConsent(), NOW) if d.recipient == "fraud"]
    return "permit" if decision.permitted else str(decision.reason)


def status(key: str, state: str, by: str = "op-1") -> tuple[bytes, bytes]:
    agreement_id, _, version = key.rpartition("@")
    change = StatusChange(agreement_id, int(version), state, NOW, by)
    return f"{STATUS_PREFIX}{key}".encode(), change.to_json()


def test_a_status_change_applies_on_top_of_any_later_text_of_the_version() -> None:
    engine, feed = engine_and_feed()
    assert fraud_decision(engine) == "permit"
    feed.take_record(*status("tax-to-fraud@2", "suspended"))
    assert fraud_decision(engine) == "agreement_inactive"
    # a later text of the same version (status active in the text) keeps the suspension
    text = engine.charter.get("tax-to-fraud", 2).model_copy(update={"status": "active", "title": "renamed"})
    feed.take_record(b"tax-to-fraud@2", to_yaml(text).encode())
    assert engine.charter.get("tax-to-fraud", 2).title == "renamed"
    assert fraud_decision(engine) == "agreement_inactive"
    feed.take_record(*status("tax-to-fraud@2", "active"))
    assert fraud_decision(engine) == "permit"
    assert feed.statuses["tax-to-fraud@2"].by == "op-1" and not feed.problems


def test_suspension_survives_a_schema_change_and_a_restart(tmp_path: Path) -> None:
    """The issue's reproduction: suspend v2, drop employer_id from schema and file, restart."""
    schemas, agreements = tmp_path / "schemas", tmp_path / "agreements"
    shutil.copytree(PROJECT_ROOT / "schemas", schemas)
    shutil.copytree(PROJECT_ROOT / "agreements", agreements)
    engine, _ = engine_and_feed(schemas, agreements)
    old_text = to_yaml(engine.charter.get("tax-to-fraud", 2)).encode()  # as `agreements apply` published it
    log = [(b"tax-to-fraud@2", old_text), status("tax-to-fraud@2", "suspended")]

    schema = json.loads((schemas / "tax.income_declared.avsc").read_text())
    schema["fields"] = [f for f in schema["fields"] if f["name"] != "employer_id"]
    (schemas / "tax.income_declared.avsc").write_text(json.dumps(schema))
    file = agreements / "tax_to_fraud.v2.yaml"
    file.write_text("".join(line for line in file.read_text().splitlines(keepends=True) if "employer_id" not in line))

    restarted, feed = engine_and_feed(schemas, agreements)
    assert fraud_decision(restarted) == "permit"  # the files alone say active
    for record in log:
        feed.take_record(*record)
    assert fraud_decision(restarted) == "agreement_inactive"
    assert "tax-to-fraud@2" in feed.problems and "employer_id" in feed.problems["tax-to-fraud@2"]


def test_a_change_that_cannot_be_applied_denies_the_version_it_concerns() -> None:
    engine, feed = engine_and_feed()
    feed.take_record(b"status:tax-to-fraud@2", b"\x00not json")
    assert fraud_decision(engine) == "agreement_inactive"
    assert "tax-to-fraud@2" in feed.problems
    feed.take_record(*status("tax-to-fraud@2", "active"))  # a valid change after it applies again
    assert fraud_decision(engine) == "permit" and "tax-to-fraud@2" not in feed.problems


def test_a_status_for_a_version_nobody_defines_is_reported_and_changes_nothing() -> None:
    engine, feed = engine_and_feed()
    feed.take_record(*status("tax-to-fraud@9", "active"))
    assert "tax-to-fraud@9" in feed.problems and "neither the files nor an apply" in feed.problems["tax-to-fraud@9"]
    assert fraud_decision(engine) == "permit"


def test_activating_a_version_that_would_overlap_another_denies_it() -> None:
    engine, feed = engine_and_feed()
    feed.take_record(*status("tax-to-fraud@1", "suspended"))
    text = engine.charter.get("tax-to-fraud", 1).model_copy(update={"valid_until": None})
    feed.take_record(b"tax-to-fraud@1", to_yaml(text).encode())  # open-ended now: would overlap v2 when active
    feed.take_record(*status("tax-to-fraud@1", "active"))
    assert engine.charter.get("tax-to-fraud", 1).status == "suspended"
    assert "overlaps" in feed.problems["tax-to-fraud@1"]
    assert fraud_decision(engine) == "permit"  # v2 is untouched


# consent -------------------------------------------------------------------------------------------


class DownSource(LocalSchemas):
    """A schema source whose registry is down for schemas it has not served yet."""

    def schema(self, schema_id: int) -> dict:
        raise RegistryUnavailable("schema registry at test did not answer")


@pytest.fixture
def consent() -> tuple[ConsentTable, Encoder]:
    schemas = LocalSchemas()
    catalog = load_catalog(PROJECT_ROOT / "schemas")
    encoder = encoder_for(schemas, "consent.changes-value", catalog.events["consent.changed"].avro)
    return ConsentTable(Decoder(schemas)), encoder


@functools.lru_cache(maxsize=1)
def _consent_event() -> Any:
    return load_catalog(PROJECT_ROOT / "schemas").events["consent.changed"]


def change(encoder: Encoder, subject: str, purpose: str, state: str, at: datetime) -> bytes:
    record = sample_event(_consent_event(), random.Random(2))  # the catalog read once: tests build thousands
    record.update({"subject_national_id": subject, "purpose": purpose, "status": state, "at": at})
    return encoder(record)


def test_consent_follows_the_log_order_not_the_records_clock(consent: tuple[ConsentTable, Encoder]) -> None:
    table, encoder = consent
    future = NOW + timedelta(days=365)  # a grant stamped a year ahead by a skewed clock
    table.apply(b"k:research", change(encoder, "123456782", "scientific_research", "granted", future))
    table.apply(b"k:research", change(encoder, "123456782", "scientific_research", "withdrawn", NOW))
    assert table.get("123456782", "scientific_research").status == "withdrawn"


def test_an_unreadable_consent_record_withdraws_what_its_key_granted(consent: tuple[ConsentTable, Encoder]) -> None:
    table, encoder = consent
    table.apply(b"k:research", change(encoder, "123456782", "scientific_research", "granted", NOW))
    table.apply(b"k:other", change(encoder, "223456789", "scientific_research", "granted", NOW))
    table.apply(b"k:research", b"\x00\x00\x00\x00\x01garbage")
    assert table.get("123456782", "scientific_research").status == "withdrawn"
    assert table.get("223456789", "scientific_research").status == "granted", "other keys are untouched"
    table.apply(b"k:other", None)  # a tombstone reads as no consent
    assert table.get("223456789", "scientific_research").status == "withdrawn"
    assert table.rejected == 2


def test_a_registry_outage_makes_the_consent_reader_wait_and_changes_nothing(consent: tuple[ConsentTable, Encoder]) -> None:
    table, encoder = consent
    table.apply(b"k:research", change(encoder, "123456782", "scientific_research", "granted", NOW))
    withdrawal = change(encoder, "123456782", "scientific_research", "withdrawn", NOW)
    down = ConsentTable(Decoder(DownSource()))
    down._records, down._by_key = table._records, table._by_key  # noqa: SLF001 - the same state, the registry gone
    with pytest.raises(Retry, match="schema registry unavailable"):
        down.apply(b"k:research", withdrawal)
    assert table.get("123456782", "scientific_research").status == "granted", "nothing skipped, nothing guessed"
    table.apply(b"k:research", withdrawal)  # the registry is back: the same record applies
    assert table.get("123456782", "scientific_research").status == "withdrawn"
