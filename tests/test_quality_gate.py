"""Agreements may require quality (issue 32): bars on the provider's scores, parsed and diffed (a
lowered bar is widening); with no window to judge them a gated agreement's records are held at once.
Records judged by their own window: tests/test_quality_pending.py."""

from __future__ import annotations

import random
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml

from backbone.events.catalog import Catalog, load_catalog
from backbone.events.serde import Decoder, LocalSchemas, encoder_for
from backbone.kafka.topics import AUDIT_TOPIC, raw_topic, shared_topic
from backbone.keys.keyring import Keyring
from backbone.policy.agreements import Agreement, load_agreements, parse_agreement
from backbone.policy.decision import NoConsent
from backbone.policy.diff import diff
from backbone.policy.engine import PolicyEngine
from backbone.quality.checks import QualityMonitor
from backbone.quality.contract import QualityContractError, load_quality, load_quality_checked
from backbone.settings import PROJECT_ROOT
from processors.router import Output, Router
from producers.synthetic.samples import sample_event

AGREEMENTS = PROJECT_ROOT / "agreements"
CLAIM = "welfare.benefit_claimed"
HOUR = datetime(2026, 12, 7, 9, 0, tzinfo=UTC)
FRAUD_TOPIC = shared_topic("fraud", CLAIM)


@pytest.fixture(scope="module")
def catalog() -> Catalog:
    return load_catalog(PROJECT_ROOT / "schemas")


def welfare_to_fraud(**changes: Any) -> dict[str, Any]:
    data = yaml.safe_load((AGREEMENTS / "welfare_to_fraud.yaml").read_text())
    return {**data, **changes}


def agreement(**changes: Any) -> Agreement:
    made, problems = parse_agreement(welfare_to_fraud(**changes), "welfare_to_fraud.yaml")
    assert made is not None, problems
    return made


def test_require_quality_names_dimensions_and_bars_or_is_refused() -> None:
    assert str(agreement(require_quality={"completeness": ">= 98"}).require_quality["completeness"]) == ">= 98"
    assert agreement().on_quality_breach == "hold"  # fail closed by default
    _, problems = parse_agreement(welfare_to_fraud(require_quality={"freshness": ">= 9"}), "w.yaml")
    assert any("unknown quality dimension(s) freshness; use completeness, validity" in p for p in problems)
    _, problems = parse_agreement(welfare_to_fraud(require_quality={"completeness": "98%"}), "w.yaml")
    assert any('write it as ">= 98"' in p for p in problems)
    _, problems = parse_agreement(welfare_to_fraud(on_quality_breach="drop"), "w.yaml")
    assert any("on_quality_breach" in p for p in problems)
    # written back the way it was read (agreement changes travel as JSON)
    dumped = agreement(require_quality={"validity": "> 99.5"}).model_dump(mode="json")
    assert dumped["require_quality"] == {"validity": "> 99.5"}


@pytest.mark.parametrize(("old", "new", "widening"), [
    ({"completeness": ">= 98"}, {"completeness": ">= 95"}, True),   # lowered
    ({"completeness": "> 98"}, {"completeness": ">= 98"}, True),    # the same number, no longer strict
    ({"completeness": ">= 95"}, {"completeness": ">= 98"}, False),  # raised
    ({"completeness": ">= 98"}, {}, True),                          # removed
    ({}, {"validity": ">= 99"}, False),                             # added
])
def test_agreements_diff_counts_a_lowered_quality_bar_as_widening(catalog: Catalog, old: dict, new: dict, widening: bool) -> None:
    changes = [c for c in diff(agreement(require_quality=old), agreement(version=2, require_quality=new), catalog)
               if c.kind == "quality"]
    assert len(changes) == 1 and changes[0].widening is widening, changes


def test_flagging_instead_of_holding_is_widening(catalog: Catalog) -> None:
    bars = {"completeness": ">= 98"}
    change, = [c for c in diff(agreement(require_quality=bars), agreement(version=2, require_quality=bars, on_quality_breach="flag"),
                               catalog) if c.kind == "quality"]
    assert change.widening and "delivered, flagged" in change.reason


def gated_router(catalog: Catalog, tmp_path: Path, mode: str) -> Router:
    for path in AGREEMENTS.glob("*.yaml"):
        (tmp_path / path.name).write_text(path.read_text())
    (tmp_path / "welfare_to_fraud.yaml").write_text(yaml.safe_dump(welfare_to_fraud(
        require_quality={"completeness": ">= 98"}, on_quality_breach=mode)))
    charter = load_agreements(tmp_path, catalog)
    keyring = Keyring.for_charter(charter)
    router = Router(catalog, PolicyEngine(charter, keyring), LocalSchemas(), keyring)
    router.quality = QualityMonitor(load_quality(PROJECT_ROOT / "schemas", catalog).values())
    return router


def route_claims(router: Router, catalog: Catalog, now: datetime, n: int, missing: int, seed: int) -> list[Output]:
    rng = random.Random(seed)
    encode = encoder_for(router.schemas, f"{raw_topic(CLAIM)}-value", catalog.events[CLAIM].avro)
    outputs = []
    for index in range(n):
        record = sample_event(catalog.events[CLAIM], rng)
        record.update(event_id=str(uuid.UUID(int=rng.getrandbits(128))), occurred_at=now - timedelta(minutes=1),
                      governance={"lawful_basis": "public_task", "purposes": ["fraud_prevention_and_detection"], "consent_id": None})
        if index < missing:
            record["bank_account"] = ""  # a planted completeness drop
        outputs += router.route(raw_topic(CLAIM), b"k", encode(record), None, NoConsent(), now)
    return outputs


def fraud_outcomes(router: Router, outputs: list[Output]) -> list[str]:
    decode = Decoder(router.schemas)
    return [d["outcome"] for o in outputs if o.topic == AUDIT_TOPIC
            for d in decode(o.value).record["decisions"] if d["recipient"] == "fraud"]


def test_without_quality_rules_a_gated_agreement_holds_everything(catalog: Catalog, tmp_path: Path) -> None:
    router = gated_router(catalog, tmp_path, "hold")
    router.quality = None  # BACKBONE_QUALITY_RULES=false: no evidence at all
    outputs = route_claims(router, catalog, HOUR, 3, missing=0, seed=7)
    assert not [o for o in outputs if o.topic == FRAUD_TOPIC]
    assert set(fraud_outcomes(router, outputs)) == {"quality_breach"}


def test_a_contract_that_no_longer_matches_its_schema_leaves_enforcement_on_and_its_gated_records_held(
        catalog: Catalog, tmp_path: Path) -> None:
    # A provider's schema change drops a field a quality rule names: the processor must not refuse to
    # start (every agreement would stop), and a gated agreement must not pass unchecked records either.
    schemas = tmp_path / "schemas"
    schemas.mkdir()
    for path in (PROJECT_ROOT / "schemas").glob(f"{CLAIM}.quality.yaml"):
        text = path.read_text()
        (schemas / path.name).write_text(text.replace("bank_account", "no_such_field", 1))
    contracts, problems = load_quality_checked(schemas, catalog)
    assert CLAIM not in contracts and any("no_such_field" in problem for problem in problems)
    with pytest.raises(QualityContractError):
        load_quality(schemas, catalog)  # `backbone contract` and the sink still refuse it outright
    (tmp_path / "agreements").mkdir()
    router = gated_router(catalog, tmp_path / "agreements", "hold")
    router.quality = QualityMonitor(contracts.values())
    outputs = route_claims(router, catalog, HOUR, 3, missing=0, seed=8)
    assert not [o for o in outputs if o.topic == FRAUD_TOPIC]
    assert set(fraud_outcomes(router, outputs)) == {"quality_breach"}
