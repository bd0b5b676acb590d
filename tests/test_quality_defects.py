"""Defects planted at known rates in the synthetic stream are recovered by the quality windows the
router keeps in flight (issue 32): counts exactly, rates within 0.1 percentage points, including a
40% volume drop in one hour (held against the same hour of two earlier weeks, planted too) and the
claims after a registered death (the cross-provider consistency rule), unknown postcodes (the
reference set) and double claims (business-key duplicates), as landed scorecards."""

from __future__ import annotations

import uuid
from collections import Counter
from datetime import UTC, datetime, timedelta
from typing import Any

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
from backbone.quality.scorecard import Scorecard, score
from backbone.quality.window import WindowState, hour_of
from backbone.settings import PROJECT_ROOT, Settings
from consumers.quality import land_windows, quality_database, refresh_scorecards, setup_quality
from processors.router import Router
from producers.synthetic import generate
from producers.synthetic.defects import BUSINESS_KEYS, CLAIM_EVENT, Defects, Planted, earlier_weeks, plant

NOW = datetime(2026, 12, 7, 10, 20, tzinfo=UTC)
CLEAN_AT = NOW - timedelta(days=3)  # an hour of its own: the clean run's windows merge with no other
EVENTS = 6_000
CATALOG = load_catalog(PROJECT_ROOT / "schemas")
CONTRACTS = load_quality(PROJECT_ROOT / "schemas", CATALOG)
Run = tuple[dict[str, WindowState], Planted]


class Stream:
    """One router (one worker, its consistency marks kept across runs) fed the same seeded stream."""

    def __init__(self) -> None:
        charter = load_agreements(PROJECT_ROOT / "agreements", CATALOG)
        keyring = Keyring.for_charter(charter)
        self.router = Router(CATALOG, PolicyEngine(charter, keyring), LocalSchemas(), keyring)
        self.router.quality = QualityMonitor(CONTRACTS.values())
        self.encoders = {t: encoder_for(self.router.schemas, f"{raw_topic(t)}-value", CATALOG.events[t].avro)
                         for t in CATALOG.raw_event_types}

    def run(self, defects: Defects, now: datetime, drop: bool = False) -> Run:
        planted = Planted()
        stream = plant(generate(seed=5, population=1_500, events=EVENTS), defects, lambda: now, planted,
                       drop_hour=hour_of(now) if drop else None)
        for event_type, record in stream:
            if event_type in self.encoders:
                self.router.route(raw_topic(event_type), b"k", self.encoders[event_type](record), None, NoConsent(), now)
        closed = self.router.quality.closed(now + timedelta(hours=1))  # type: ignore[union-attr]
        assert {w.hour for w in closed} == {hour_of(now)}
        return {w.event_type: w for w in closed}, planted


@pytest.fixture(scope="module")
def runs() -> dict[str, Any]:
    stream = Stream()
    clean = stream.run(Defects(missing=0, invalid=0, duplicate=0, late=0, unknown=0, double=0), CLEAN_AT)
    history = [stream.run(Defects(), moment) for moment in earlier_weeks(NOW, 2)]
    # Another worker for the drop hour: this one remembers the deaths of the earlier weeks' stream,
    # which the generator's ground truth for the hour (its own stream only) does not count.
    return {"clean": clean, "history": history, "defective": Stream().run(Defects(), NOW, drop=True)}


@pytest.fixture(scope="module")
def landed(runs: dict[str, Any], clickhouse_client) -> dict[str, Scorecard]:  # noqa: ANN001
    """The scorecards of the drop hour as the quality sink computes them from every landed window."""
    database = quality_database(Settings(clickhouse_database_prefix=f"qd{uuid.uuid4().hex[:8]}_"))
    setup_quality(clickhouse_client, database)
    windows = [w for found, _ in [*runs["history"], runs["defective"]] for w in found.values()]
    landed, refused, touched = land_windows(clickhouse_client, database, CONTRACTS,
                                            [(f"{w.event_type}|{w.hour}|w1".encode(), w.to_bytes()) for w in windows])
    assert (landed, refused) == (len(windows), [])
    cards = refresh_scorecards(clickhouse_client, database, CONTRACTS, touched)
    yield {card.event_type: card for card in cards if card.hour == hour_of(NOW)}
    clickhouse_client.command(f"DROP DATABASE IF EXISTS {database}")


def test_planted_defects_are_recovered_exactly(runs: dict[str, Any], landed: dict[str, Scorecard]) -> None:
    clean, _ = runs["clean"]
    found, planted = runs["defective"]
    assert all(w.late == 0 and w.duplicates == 0 for w in clean.values())  # the generator itself plants nothing
    recovered: Counter[tuple[str, str]] = Counter()
    for event_type, window in found.items():
        assert window.events == planted.sent[event_type]
        recovered[(event_type, "late")] = window.late
        recovered[(event_type, "duplicate")] = window.duplicates
        recovered[(event_type, "dropped")] = landed[event_type].dimensions["volume"].failed
    taxes = "tax.income_declared"
    recovered[(CLAIM_EVENT, "missing")] = found[CLAIM_EVENT].missing["postcode"] - clean[CLAIM_EVENT].missing.get("postcode", 0)
    recovered[(taxes, "invalid")] = (found[taxes].invalid["declared_income:range"]
                                     - clean[taxes].invalid.get("declared_income:range", 0))
    recovered[(CLAIM_EVENT, "after_death")] = landed[CLAIM_EVENT].dimensions["consistency"].failed
    # unknown postcodes (well-formed, not in the reference set) and records repeating a business key
    assert all(not w.invalid.get("postcode:reference") for w in clean.values())  # the generator draws known ones only
    recovered[(CLAIM_EVENT, "unknown")] = found[CLAIM_EVENT].invalid["postcode:reference"]
    for event_type, names in BUSINESS_KEYS.items():
        recovered[(event_type, "key_duplicate")] = found[event_type].key_duplicates["+".join(names)]
        detail = landed[event_type].dimensions["uniqueness"].detail["+".join(names)]
        assert detail == (planted.sent[event_type], planted.defects[(event_type, "key_duplicate")])
    assert +recovered == +planted.defects and sum(planted.defects.values()) > 2_000
    assert planted.defects[(CLAIM_EVENT, "after_death")] >= 3
    assert planted.defects[(CLAIM_EVENT, "unknown")] >= 10 and planted.defects[(CLAIM_EVENT, "key_duplicate")] >= 3


def test_the_volume_drop_is_scored_against_the_same_hour_of_earlier_weeks(runs: dict[str, Any],
                                                                           landed: dict[str, Scorecard]) -> None:
    _, planted = runs["defective"]
    for event_type, card in landed.items():
        history = [p.sent[event_type] for _, p in runs["history"]]
        volume = card.dimensions["volume"]
        assert volume.checked == history[0] == history[1] == planted.sent[event_type] + planted.defects[(event_type, "dropped")]
        # evenly spread per event type: within one record, so within 0.1 points from 1,000 records an hour
        assert abs(volume.score - 100 * (1 - Defects().drop)) <= 100 / volume.checked, event_type
        if volume.checked >= 1_000:
            assert abs(volume.score - 100 * (1 - Defects().drop)) <= 0.1, event_type
        assert volume.met is (volume.score >= 50)
    # an hour of a week with no drop scores 100 against the same history
    week = runs["history"][1][0][CLAIM_EVENT]
    assert score(week, CONTRACTS[CLAIM_EVENT], float(runs["history"][0][1].sent[CLAIM_EVENT])).dimensions["volume"].score == 100


def test_a_claim_after_a_registered_death_breaks_the_consistency_rule(runs: dict[str, Any], landed: dict[str, Scorecard]) -> None:
    clean, _ = runs["clean"]
    consistency = landed[CLAIM_EVENT].dimensions["consistency"]
    assert consistency.detail == {"claim_after_death": (consistency.checked, consistency.failed)}
    assert consistency.checked == landed[CLAIM_EVENT].events
    # the generator's own fraud cases: the clean run found them too, from the same deaths
    assert clean[CLAIM_EVENT].inconsistent["claim_after_death"] > 0


def test_planted_rates_are_recovered_within_a_tenth_of_a_point(runs: dict[str, Any]) -> None:
    found, _ = runs["history"][-1]  # an hour without the drop (which need not take each defect evenly)
    claims = score(found[CLAIM_EVENT], CONTRACTS[CLAIM_EVENT]).dimensions
    checked, missing = claims["completeness"].detail["postcode"]
    assert abs(missing / checked - Defects().missing) <= 0.001
    taxes = score(found["tax.income_declared"], CONTRACTS["tax.income_declared"]).dimensions
    checked, invalid = taxes["validity"].detail["declared_income:range"]
    assert abs(invalid / checked - Defects().invalid) <= 0.001
    checked, unknown = claims["validity"].detail["postcode:reference"]  # of the postcodes present
    assert abs(unknown / checked - Defects().unknown) <= 0.001 + Defects().missing * Defects().unknown
    events = sum(w.events for w in found.values())
    assert abs(sum(w.late for w in found.values()) / events - Defects().late) <= 0.001
    assert abs(sum(w.duplicates for w in found.values()) / events - Defects().duplicate) <= 0.001
