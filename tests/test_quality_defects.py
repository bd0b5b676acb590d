"""Defects planted at known rates in the synthetic stream are recovered by the quality windows the
router keeps in flight (issue 32): counts exactly, rates within 0.1 percentage points."""

from __future__ import annotations

from collections import Counter
from datetime import UTC, datetime

import pytest

from backbone.events.catalog import load_catalog
from backbone.events.serde import LocalSchemas, encoder_for
from backbone.kafka.topics import raw_topic
from backbone.keys.keyring import Keyring
from backbone.policy.agreements import load_agreements
from backbone.policy.decision import NoConsent
from backbone.policy.engine import PolicyEngine
from backbone.quality.checks import QualityMonitor
from backbone.quality.contract import load_quality
from backbone.quality.scorecard import score
from backbone.quality.window import WindowState
from backbone.settings import PROJECT_ROOT
from processors.router import Router
from producers.synthetic import generate
from producers.synthetic.defects import Defects, Planted, plant

NOW = datetime(2026, 12, 7, 10, 20, tzinfo=UTC)
EVENTS = 6_000


def windows(defects: Defects) -> tuple[dict[str, WindowState], Planted]:
    catalog = load_catalog(PROJECT_ROOT / "schemas")
    charter = load_agreements(PROJECT_ROOT / "agreements", catalog)
    keyring = Keyring.for_charter(charter)
    router = Router(catalog, PolicyEngine(charter, keyring), LocalSchemas(), keyring)
    router.quality = QualityMonitor(load_quality(PROJECT_ROOT / "schemas", catalog).values())
    encoders = {t: encoder_for(router.schemas, f"{raw_topic(t)}-value", catalog.events[t].avro) for t in catalog.raw_event_types}
    planted = Planted()
    for event_type, record in plant(generate(seed=5, population=1_500, events=EVENTS), defects, lambda: NOW, planted):
        if event_type in encoders:
            router.route(raw_topic(event_type), b"k", encoders[event_type](record), None, NoConsent(), NOW)
    return {w.event_type: w for w in router.quality.closed(datetime(2026, 12, 7, 11, 0, tzinfo=UTC))}, planted


@pytest.fixture(scope="module")
def clean() -> dict[str, WindowState]:
    return windows(Defects(missing=0, invalid=0, duplicate=0, late=0))[0]


@pytest.fixture(scope="module")
def defective() -> tuple[dict[str, WindowState], Planted]:
    return windows(Defects())


def test_planted_defects_are_recovered_exactly(clean: dict[str, WindowState], defective: tuple[dict[str, WindowState], Planted]) -> None:
    found, planted = defective
    assert all(w.late == 0 and w.duplicates == 0 for w in clean.values())  # the generator itself plants nothing
    recovered: Counter[tuple[str, str]] = Counter()
    for event_type, window in found.items():
        assert window.events == planted.sent[event_type]
        recovered[(event_type, "late")] = window.late
        recovered[(event_type, "duplicate")] = window.duplicates
    claims, taxes = "welfare.benefit_claimed", "tax.income_declared"
    recovered[(claims, "missing")] = found[claims].missing["postcode"] - clean[claims].missing.get("postcode", 0)
    recovered[(taxes, "invalid")] = (found[taxes].invalid["declared_income:range"]
                                     - clean[taxes].invalid.get("declared_income:range", 0))
    assert +recovered == +planted.defects and sum(planted.defects.values()) > 200


def test_planted_rates_are_recovered_within_a_tenth_of_a_point(defective: tuple[dict[str, WindowState], Planted]) -> None:
    found, _ = defective
    contracts = load_quality(PROJECT_ROOT / "schemas", load_catalog(PROJECT_ROOT / "schemas"))
    claims = score(found["welfare.benefit_claimed"], contracts["welfare.benefit_claimed"]).dimensions
    checked, missing = claims["completeness"].detail["postcode"]
    assert abs(missing / checked - Defects().missing) <= 0.001
    taxes = score(found["tax.income_declared"], contracts["tax.income_declared"]).dimensions
    checked, invalid = taxes["validity"].detail["declared_income:range"]
    assert abs(invalid / checked - Defects().invalid) <= 0.001
    events = sum(w.events for w in found.values())
    assert abs(sum(w.late for w in found.values()) / events - Defects().late) <= 0.001
    assert abs(sum(w.duplicates for w in found.values()) / events - Defects().duplicate) <= 0.001
