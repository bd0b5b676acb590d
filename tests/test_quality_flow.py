"""Quality windows in flight (issue 32): the router checks raw records before any treatment, hands
each closed hour over with the audit record that seals it, the quality sink merges every worker's
windows into the hour's scorecard in ClickHouse, and `audit verify` finds an edited one."""

from __future__ import annotations

import random
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from backbone.events.catalog import Catalog, load_catalog
from backbone.events.serde import Decoder, LocalSchemas, encoder_for
from backbone.kafka.topics import AUDIT_TOPIC, QUALITY_TOPIC, raw_topic
from backbone.keys.keyring import Keyring
from backbone.policy.agreements import load_agreements
from backbone.policy.decision import NoConsent
from backbone.policy.engine import PolicyEngine
from backbone.quality.checks import QualityMonitor
from backbone.quality.contract import QualityContract, load_quality
from backbone.quality.window import QUALITY_SEAL_TYPE, WindowState, hour_of, merge_all, window_seal_id
from backbone.settings import PROJECT_ROOT, Settings
from consumers import ddl
from consumers.quality import land_windows, quality_database, refresh_scorecards, setup_quality, verify_quality
from processors.router import Output, Router
from producers.synthetic.samples import sample_event

HOUR = datetime(2026, 12, 7, 9, 15, tzinfo=UTC)
CLAIM = "welfare.benefit_claimed"


@pytest.fixture(scope="module")
def catalog() -> Catalog:
    return load_catalog(PROJECT_ROOT / "schemas")


@pytest.fixture(scope="module")
def contracts(catalog: Catalog) -> dict[str, QualityContract]:
    return load_quality(PROJECT_ROOT / "schemas", catalog)


@pytest.fixture
def router(catalog: Catalog, contracts: dict[str, QualityContract]) -> Router:
    charter = load_agreements(PROJECT_ROOT / "agreements", catalog)
    keyring = Keyring.for_charter(charter)
    router = Router(catalog, PolicyEngine(charter, keyring), LocalSchemas(), keyring)
    router.quality = QualityMonitor(contracts.values())
    return router


def claims(catalog: Catalog, n: int, seed: int) -> list[dict[str, Any]]:
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        record = sample_event(catalog.events[CLAIM], rng)
        record["event_id"] = str(uuid.UUID(int=rng.getrandbits(128)))
        record["occurred_at"] = HOUR - timedelta(minutes=5)
        out.append(record)
    return out


def route_all(router: Router, catalog: Catalog, records: list[dict[str, Any]], now: datetime) -> None:
    encode = encoder_for(router.schemas, f"{raw_topic(CLAIM)}-value", catalog.events[CLAIM].avro)
    for record in records:
        router.route(raw_topic(CLAIM), b"k", encode(record), None, NoConsent(), now)


def test_a_closed_hour_leaves_the_router_as_counts_sealed_in_the_audit_trail(router: Router, catalog: Catalog) -> None:
    records = claims(catalog, 40, seed=1)
    records[0]["postcode"] = ""                          # missing, checked on the raw record before any treatment
    records[1]["monthly_amount"] = -3.0                 # invalid
    route_all(router, catalog, records + [records[2]], HOUR)  # one duplicate
    assert router.quality_outputs(HOUR + timedelta(minutes=30)) == []  # the hour is not over
    outputs = router.quality_outputs(HOUR + timedelta(hours=1))
    window_out, audit_out = outputs[:2]
    assert [o.topic for o in outputs[2:]] == ["quality.breaches"]  # 1 duplicate in 41 is below uniqueness >= 99.5
    assert window_out.topic == QUALITY_TOPIC and audit_out.topic == AUDIT_TOPIC
    assert window_out.key == f"{CLAIM}|{hour_of(HOUR)}|{router.worker_id}".encode()
    window = WindowState.from_bytes(window_out.value)
    assert (window.events, window.missing["postcode"], window.invalid["monthly_amount:range"], window.duplicates) == (41, 1, 1, 1)
    # nothing personal leaves the worker: no identifier, name, account or postcode of any record
    for record in records:
        for name in ("national_id", "name", "bank_account", "postcode"):
            if record[name]:
                assert record[name].encode() not in window_out.value
    assert audit_out.key == CLAIM.encode()
    sealed = Decoder(router.schemas)(audit_out.value).record
    assert str(sealed["event_id"]) == window_seal_id(window_out.value)
    assert (sealed["event_type"], sealed["provider"], sealed["subject_token"], sealed["decisions"]) == \
        (QUALITY_SEAL_TYPE, "welfare", None, [])
    assert router.quality_outputs(HOUR + timedelta(hours=2)) == []  # each window is handed over once


def worker_window(router: Router, catalog: Catalog, records: list[dict[str, Any]]) -> Output:
    """The worker's quality window of `records`, routed in one hour and closed the next."""
    route_all(router, catalog, records, HOUR)
    return router.quality_outputs(HOUR + timedelta(hours=1))[0]


@pytest.fixture
def landed(clickhouse_client, unique: str) -> tuple[Any, Settings]:  # noqa: ANN001
    settings = Settings(clickhouse_database_prefix=f"q{unique}_")
    setup_quality(clickhouse_client, quality_database(settings))
    audit = ddl.database_name(settings.clickhouse_database_prefix, ddl.AUDIT_DATABASE)
    clickhouse_client.command(ddl.create_database_sql(audit))
    # the audit sink's table, as far as sealing goes: the event id and type of each landed record
    clickhouse_client.command(f"CREATE TABLE {audit}.{ddl.AUDIT_EVENTS_TABLE} (event_id UUID, event_type String) "
                              "ENGINE = MergeTree ORDER BY event_id")
    yield clickhouse_client, settings
    for database in (quality_database(settings), audit):
        clickhouse_client.command(f"DROP DATABASE IF EXISTS {database}")


def seal(client, settings: Settings, outputs: list[Output]) -> None:  # noqa: ANN001
    audit = ddl.qualified(ddl.database_name(settings.clickhouse_database_prefix, ddl.AUDIT_DATABASE), ddl.AUDIT_EVENTS_TABLE)
    client.insert(audit, [[window_seal_id(o.value), QUALITY_SEAL_TYPE] for o in outputs], column_names=["event_id", "event_type"])


def test_two_workers_windows_merge_into_one_scorecard_and_verify(landed, catalog: Catalog,  # noqa: ANN001
                                                                  contracts: dict[str, QualityContract]) -> None:
    client, settings = landed
    database = quality_database(settings)
    records = claims(catalog, 60, seed=2)
    for record in records[:3]:
        record["bank_account"] = ""
    routers = []
    for _ in range(2):
        charter = load_agreements(PROJECT_ROOT / "agreements", catalog)
        keyring = Keyring.for_charter(charter)
        each = Router(catalog, PolicyEngine(charter, keyring), LocalSchemas(), keyring)
        each.quality = QualityMonitor(contracts.values())
        routers.append(each)
    outputs = [worker_window(routers[0], catalog, records[:25]), worker_window(routers[1], catalog, records[25:])]
    # a redelivered window (at-least-once) counts once; garbage is refused, not landed
    landed_n, refused, touched = land_windows(client, database, contracts,
                                              [(o.key, o.value) for o in outputs] + [(outputs[0].key, outputs[0].value),
                                                                                      (b"x|1|w", b"{}"), (None, b"not json")])
    assert (landed_n, [reason for _, reason in refused], touched) == (3, ["undecodable", "undecodable"], {(CLAIM, hour_of(HOUR))})
    card, = refresh_scorecards(client, database, contracts, touched)
    whole = merge_all([WindowState.from_bytes(o.value) for o in outputs])[0]
    assert card.events == 60 == whole.events
    completeness = card.dimensions["completeness"]
    assert completeness.detail["bank_account"] == (60, 3) and completeness.failed == 3
    rows = client.query(f"SELECT dimension, checked, failed, workers FROM {database}.scorecards FINAL "
                        "WHERE dimension = 'completeness'").result_rows
    assert rows == [("completeness", 360, 3, 2)]
    seal(client, settings, outputs)
    assert verify_quality(client, settings.clickhouse_database_prefix, contracts) == (1, [])

    # a provider's scorecard raised after the fact: verify recomputes it from the sealed windows
    client.command(f"INSERT INTO {database}.scorecards SELECT provider, event_type, hour, dimension, 100.0, checked, 0, "
                   f"threshold, true, events, workers, detail, now64(3) + 1 FROM {database}.scorecards FINAL "
                   "WHERE dimension = 'completeness'")
    _, problems = verify_quality(client, settings.clickhouse_database_prefix, contracts)
    assert len(problems) == 1 and "completeness: landed (100.0, 360, 0) but the sealed windows give" in problems[0]


def test_an_edited_or_unsealed_window_fails_verification(landed, catalog: Catalog, router: Router,  # noqa: ANN001
                                                          contracts: dict[str, QualityContract]) -> None:
    client, settings = landed
    database = quality_database(settings)
    output = worker_window(router, catalog, claims(catalog, 10, seed=3))
    _, _, touched = land_windows(client, database, contracts, [(output.key, output.value)])
    refresh_scorecards(client, database, contracts, touched)
    _, problems = verify_quality(client, settings.clickhouse_database_prefix, contracts)
    assert problems and "is not the one the audit trail sealed (edited, or never sealed)" in problems[0]
    seal(client, settings, [output])
    assert verify_quality(client, settings.clickhouse_database_prefix, contracts)[1] == []
    edited = output.value.replace(b'"duplicates":0', b'"duplicates":0 ')
    client.command(f"ALTER TABLE {database}.windows UPDATE window = {{w:String}} WHERE 1", parameters={"w": edited.decode()},
                   settings={"mutations_sync": 2})
    _, problems = verify_quality(client, settings.clickhouse_database_prefix, contracts)
    assert any("is not the one the audit trail sealed" in p for p in problems)
