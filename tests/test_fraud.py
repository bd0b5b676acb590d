"""Fraud rules find every planted case and nothing else, within seconds, once each; a new rule is
one object registered in the rule registry, and a rule whose data is not shared is off."""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Mapping
from pathlib import Path

import pytest
from confluent_kafka import Consumer

from app.scoring import score
from backbone.events.serde import Decoder, registry_client
from backbone.kafka.topics import ALERTS_TOPIC
from backbone.keys.pseudonym import token_function
from backbone.settings import Settings, load_settings
from consumers import ddl
from consumers.fraud import (
    RULES,
    DuplicateRule,
    FraudDetector,
    FraudRuleError,
    Rule,
    UnknownRule,
    applicable,
    death_period_sql,
    lookup,
    register,
    registered,
    unregister,
)
from consumers.sink import Sink, recipient_plan
from producers.synthetic.fraud import FRAUD_KINDS
from tests.keys import AutoKeyring
from tests.test_sink import publish, renamed_charter, sink_settings, synthetic_events

CLAIMS = "welfare_benefit_claimed"
HIGH_BENEFIT_EUR = 1_500.0


def high_benefit_sql(database: str, columns: Mapping[str, Mapping[str, str]]) -> str:
    return f"""
        SELECT 'high_benefit_amount' AS kind, national_id AS subject, period,
               toJSONString(map('monthly_amount', toString(max(monthly_amount)))) AS details
        FROM {ddl.qualified(database, CLAIMS)} FINAL
        GROUP BY national_id, period HAVING max(monthly_amount) > {HIGH_BENEFIT_EUR!r}"""


# A rule the backbone does not ship, defined here only: nothing else changes to add it.
HIGH_BENEFIT = Rule(
    kind="high_benefit_amount",
    doc=f"a benefit above {HIGH_BENEFIT_EUR:,.0f} EUR a month",
    needs={CLAIMS: ("national_id", "period", "monthly_amount")},
    sql=high_benefit_sql,
)


def published_keys(settings: Settings, group: str, wanted: set[tuple[str, str, str]]) -> set[tuple[str, str, str]]:
    """(kind, subject, period) of the alerts on alerts.fraud, read until `wanted` are seen or 20 s pass."""
    reader = Consumer(settings.consumer_config(group))
    reader.subscribe([ALERTS_TOPIC])
    decode = Decoder(registry_client(settings))
    seen: set[tuple[str, str, str]] = set()
    deadline = time.monotonic() + 20
    while not wanted <= seen and time.monotonic() < deadline:
        message = reader.poll(0.5)
        if message is None or message.error():
            continue
        record = decode(message.value()).record
        seen.add((record["kind"], record["subject"], record["period"]))
    reader.close()
    return seen


@pytest.mark.integration
def test_every_planted_fraud_kind_is_found_with_precision_and_recall_one(
    registry_settings: Settings, clickhouse_client, tmp_path: Path, unique: str  # noqa: ANN001
) -> None:
    directory, charter, names = renamed_charter(tmp_path, unique)
    settings = sink_settings(registry_settings, directory, unique)
    keyring = AutoKeyring()
    events, truth = synthetic_events(agencies=("tax", "welfare", "registry"))
    assert {case.kind for case in truth} == set(FRAUD_KINDS)
    publish(settings, charter, keyring, events)

    detector = FraudDetector(settings, clickhouse_client, registry_client(settings))
    sink = Sink(settings, recipient_plan(settings, charter, names["fraud"]), clickhouse_client,
                registry_client(settings), after_batch=detector.after_batch)
    sink.run_until_idle(idle_s=1.5, timeout_s=60)
    sink.close()

    domain = charter.get("welfare-to-fraud").domain
    pseudonymise, _ = token_function(keyring, domain)
    alerts = detector.alerts()
    for result in score(alerts, truth, pseudonymise):
        assert (result.kind, result.precision, result.recall) == (result.kind, 1.0, 1.0)
    assert len(alerts) == len(truth)
    assert all(alert.subject.startswith("k") and "." in alert.subject for alert in alerts), "subjects are pseudonyms"

    # running the rules again raises nothing new: one alert per (kind, subject, period)
    assert detector.detect() == []
    assert len(detector.alerts()) == len(truth)

    # every alert was published to alerts.fraud
    wanted = {alert.key for alert in alerts}
    assert wanted <= published_keys(settings, f"alerts-{unique}", wanted)


@pytest.mark.integration
def test_incremental_runs_raise_the_same_alerts_as_a_full_run(
    registry_settings: Settings, clickhouse_client, tmp_path: Path, unique: str  # noqa: ANN001
) -> None:
    # History lands on earlier days, the rest today: each run after the first reads only the keys
    # landed since, and must still find every planted case whose evidence spans both.
    directory, charter, names = renamed_charter(tmp_path, unique)
    settings = sink_settings(registry_settings, directory, unique)
    keyring = AutoKeyring()
    events, truth = synthetic_events(agencies=("tax", "welfare", "registry"))
    detector = FraudDetector(settings, clickhouse_client, registry_client(settings))
    plan = recipient_plan(settings, charter, names["fraud"])
    # the claims first, then incomes and deaths: every planted case's evidence spans both runs
    claims = [event for event in events if event[0] == "welfare.benefit_claimed"]
    for half in (claims, [event for event in events if event[0] != "welfare.benefit_claimed"]):
        publish(settings, charter, keyring, half)
        sink = Sink(settings, plan, clickhouse_client, registry_client(settings), after_batch=detector.after_batch)
        sink.run_until_idle(idle_s=1.5, timeout_s=60)
        sink.close()
        for destination in plan.tables:  # what landed so far, landed three days ago
            clickhouse_client.command(f"ALTER TABLE {destination.name} UPDATE _landed_at = toStartOfDay(now()) - INTERVAL 3 DAY "
                                      "WHERE _landed_at >= toStartOfDay(now()) SETTINGS mutations_sync = 2")
    assert set(detector._since) == {rule.kind for rule in RULES.values()}, "later runs were incremental"  # noqa: SLF001
    incremental = {alert.key for alert in detector.alerts()}

    columns = detector._columns()  # noqa: SLF001
    full = set()
    for rule in RULES.values():
        full |= {tuple(row) for row in clickhouse_client.query(
            f"SELECT DISTINCT kind, subject, period FROM ({rule.select_sql(detector.database, columns)}) WHERE subject IS NOT NULL").result_rows}
    assert incremental == full
    pseudonymise, _ = token_function(keyring, charter.get("welfare-to-fraud").domain)
    assert {(s.precision, s.recall) for s in score(detector.alerts(), truth, pseudonymise)} == {(1.0, 1.0)}
    assert len(incremental) == len(truth)


@pytest.mark.integration
def test_a_registered_rule_raises_and_publishes_its_alerts_without_other_changes(
    registry_settings: Settings, clickhouse_client, tmp_path: Path, unique: str  # noqa: ANN001
) -> None:
    directory, charter, names = renamed_charter(tmp_path, unique)
    settings = sink_settings(registry_settings, directory, unique)
    keyring = AutoKeyring()
    events, _ = synthetic_events(agencies=("welfare",))
    publish(settings, charter, keyring, events)
    pseudonymise, _ = token_function(keyring, charter.get("welfare-to-fraud").domain)
    expected = {(HIGH_BENEFIT.kind, pseudonymise(record["national_id"]), record["period"])
                for event_type, record in events
                if event_type == "welfare.benefit_claimed" and record["monthly_amount"] > HIGH_BENEFIT_EUR}
    assert expected, "the seed plants no benefit above the threshold: pick a lower one"

    with registered(HIGH_BENEFIT):
        detector = FraudDetector(settings, clickhouse_client, registry_client(settings))
        sink = Sink(settings, recipient_plan(settings, charter, names["fraud"]), clickhouse_client,
                    registry_client(settings), after_batch=detector.after_batch)
        sink.run_until_idle(idle_s=1.5, timeout_s=60)
        sink.close()
        found = detector.alerts(HIGH_BENEFIT.kind)
    assert HIGH_BENEFIT.kind not in RULES, "the registry is restored"

    assert {alert.key for alert in found} == expected
    assert all(float(json.loads(alert.details)["monthly_amount"]) > HIGH_BENEFIT_EUR for alert in found)
    assert expected <= published_keys(settings, f"alerts-{unique}", expected)


@pytest.mark.parametrize(
    ("ch_type", "expected"),
    [
        ("Date32", "formatDateTime(d, '%Y-%m')"),
        ("Nullable(Date32)", "formatDateTime(d, '%Y-%m')"),
        ("String", "substring(d, 1, 7)"),
        ("Int32", "concat(toString(d), '-12')"),
    ],
)
def test_death_period_follows_how_the_agreement_releases_the_date(ch_type: str, expected: str) -> None:
    assert death_period_sql("d", ch_type) == expected


@pytest.mark.integration
def test_running_fraud_sink_raises_alerts_in_the_background_while_it_lands(
    registry_settings: Settings, clickhouse_dsn: str, tmp_path: Path, unique: str
) -> None:
    import threading

    from backbone.clickhouse.client import make_client
    from consumers.sink import sinks_for

    directory, charter, names = renamed_charter(tmp_path, unique)
    settings = sink_settings(registry_settings, directory, unique).model_copy(
        update={"fraud_recipient": names["fraud"], "fraud_interval_s": 0.5})
    keyring = AutoKeyring()
    events, truth = synthetic_events(agencies=("tax", "welfare", "registry"))
    publish(settings, charter, keyring, events)

    (sink,) = sinks_for(settings, charter, lambda: make_client(clickhouse_dsn), registry_client(settings),
                        recipients=[names["fraud"]], audit=False)
    reader = FraudDetector(settings, make_client(clickhouse_dsn))
    stop = threading.Event()
    runner = threading.Thread(target=sink.run, args=(stop,), daemon=True)
    runner.start()
    try:
        deadline = time.monotonic() + 60
        while len(reader.alerts()) < len(truth) and time.monotonic() < deadline:
            time.sleep(0.5)
        found = reader.alerts()  # read while the sink still runs: the rules ran on their own
    finally:
        stop.set()
        runner.join(30)
    pseudonymise, _ = token_function(keyring, charter.get("welfare-to-fraud").domain)
    assert {(s.precision, s.recall) for s in score(found, truth, pseudonymise)} == {(1.0, 1.0)}


# --- the rule registry, without a broker ----------------------------------------------------------
def test_the_built_in_rules_are_registered_in_the_order_they_run() -> None:
    assert list(RULES)[:3] == list(FRAUD_KINDS)


def test_an_unknown_fraud_kind_names_the_known_kinds() -> None:
    with pytest.raises(UnknownRule) as error:
        lookup("undeclared_incomes")
    assert all(kind in str(error.value) for kind in FRAUD_KINDS)


def test_a_kind_is_registered_once() -> None:
    before = dict(RULES)
    with pytest.raises(DuplicateRule, match="undeclared_income"):
        register(Rule(kind="undeclared_income", doc="", needs={}, sql=high_benefit_sql))
    assert RULES == before


def test_a_kind_that_is_not_snake_case_is_refused() -> None:
    with pytest.raises(FraudRuleError, match="snake_case"):
        register(Rule(kind="x' OR 1=1 --", doc="", needs={}, sql=high_benefit_sql))


def test_a_rule_can_be_unregistered_and_registered_again() -> None:
    register(HIGH_BENEFIT)
    assert unregister(HIGH_BENEFIT.kind) is HIGH_BENEFIT
    assert HIGH_BENEFIT.kind not in RULES
    with pytest.raises(UnknownRule):
        unregister(HIGH_BENEFIT.kind)


def test_a_rule_whose_tables_or_columns_are_missing_is_off() -> None:
    columns = {
        CLAIMS: {"national_id": "String", "period": "String", "benefit_type": "LowCardinality(String)"},
        "registry_death_registered": {"national_id": "String", "date_of_death": "Nullable(Date32)"},
    }  # no bank account shared, no income declarations
    assert [rule.kind for rule in applicable(columns)] == ["claim_after_death"]
    assert RULES["shared_bank_account"].missing(columns) == [f"{CLAIMS}.bank_account"]
    assert RULES["undeclared_income"].missing(columns) == [
        "tax_income_declared.national_id", "tax_income_declared.period", "tax_income_declared.declared_income"]


def test_the_detector_logs_each_rule_that_is_off_once_and_runs_the_others(
    clickhouse_client, unique: str, caplog: pytest.LogCaptureFixture  # noqa: ANN001
) -> None:
    """chDB only: the fraud database holds claims without bank accounts, incomes or deaths."""
    settings = load_settings(clickhouse_database_prefix=f"t{unique}_", fraud_recipient="fraud")
    detector = FraudDetector(settings, clickhouse_client)
    detector.setup()
    claims = ddl.qualified(detector.database, CLAIMS)
    clickhouse_client.command(f"CREATE TABLE {claims} (national_id String, period String, monthly_amount Float64) "
                              "ENGINE = ReplacingMergeTree ORDER BY (national_id, period)")
    clickhouse_client.command(f"INSERT INTO {claims} VALUES ('k1.a', '2024-03', 400.0)")
    caplog.set_level(logging.INFO, logger="backbone.fraud")
    with registered(HIGH_BENEFIT):
        assert detector.detect() == []  # the registered rule runs and finds nothing: nothing to publish
        assert detector.detect() == []
    off = [record.getMessage() for record in caplog.records if "is off" in record.getMessage()]
    assert sorted(message.split()[2] for message in off) == sorted(FRAUD_KINDS), "each rule that is off, logged once"
    assert detector.alerts() == []


@pytest.mark.integration
def test_two_fraud_sink_replicas_publish_each_alert_once_under_its_deterministic_id(
    registry_settings: Settings, clickhouse_client, tmp_path: Path, unique: str  # noqa: ANN001
) -> None:
    directory, charter, names = renamed_charter(tmp_path, unique)
    settings = sink_settings(registry_settings, directory, unique)
    events, truth = synthetic_events(agencies=("tax", "welfare", "registry"))
    sent = publish(settings, charter, AutoKeyring(), events)
    landed = sum(len(records) for topic, records in sent.released.items() if topic.startswith(f"shared.{names['fraud']}."))

    plan = recipient_plan(settings, charter, names["fraud"])
    replicas = [Sink(settings, plan, clickhouse_client, registry_client(settings)) for _ in range(2)]
    detectors = [FraudDetector(settings, clickhouse_client, registry_client(settings), leads=replica.leads) for replica in replicas]
    stop = threading.Event()
    threads = [threading.Thread(target=replica.run, args=(stop,), daemon=True) for replica in replicas]
    for thread in threads:
        thread.start()
    try:
        deadline = time.monotonic() + 60
        while sum(r.stats.landed for r in replicas) < landed and time.monotonic() < deadline:
            time.sleep(0.3)
        while sum(r.leads() for r in replicas) != 1 and time.monotonic() < deadline:
            time.sleep(0.3)  # the group settles: exactly one member holds the first partition
        assert [r.leads() for r in replicas].count(True) == 1, [sorted((tp.topic, tp.partition) for tp in r._consumer.assignment()) for r in replicas]
        published = [len(detector.detect()) for detector in detectors]
        assert sorted(published) == [0, len(truth)], "one replica publishes every alert, the other none"
        assert sum(len(detector.detect()) for detector in detectors) == 0, "nothing is published twice"
    finally:
        stop.set()
        for thread in threads:
            thread.join(30)

    ids = {alert.alert_id: alert.key for alert in detectors[0].alerts()}
    reader = Consumer(settings.consumer_config(f"alerts-once-{unique}"))
    reader.subscribe([ALERTS_TOPIC])
    decode = Decoder(registry_client(settings))
    counts: dict[str, int] = {}
    deadline = time.monotonic() + 20
    while sum(counts.values()) < len(ids) and time.monotonic() < deadline:
        message = reader.poll(0.5)
        if message is None or message.error() or message.key().decode() not in ids:
            continue
        record = decode(message.value()).record
        assert record["alert_id"] == message.key().decode() and (record["kind"], record["subject"], record["period"]) == ids[record["alert_id"]]
        counts[record["alert_id"]] = counts.get(record["alert_id"], 0) + 1
    reader.poll(2.0)
    reader.close()
    assert set(counts) == set(ids) and set(counts.values()) == {1}

