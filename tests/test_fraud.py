"""Fraud rules find every planted case and nothing else, within seconds, once each."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from confluent_kafka import Consumer

from backbone.policy.pseudonym import token_function
from backbone.serde import Decoder, registry_client
from backbone.settings import Settings
from backbone.topics import ALERTS_TOPIC
from consumers.fraud import FraudDetector, death_period_sql, score
from consumers.sink import Sink, recipient_plan
from producers.synthetic.fraud import FRAUD_KINDS
from tests.test_sink import publish, renamed_charter, sink_settings, synthetic_events
from tests.keys import AutoKeyring

pytestmark = pytest.mark.integration


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
    reader = Consumer(settings.consumer_config(f"alerts-{unique}"))
    reader.subscribe([ALERTS_TOPIC])
    decode = Decoder(registry_client(settings))
    wanted = {alert.key for alert in alerts}
    seen: set[tuple[str, str, str]] = set()
    deadline = time.monotonic() + 20
    while not wanted <= seen and time.monotonic() < deadline:
        message = reader.poll(0.5)
        if message is None or message.error():
            continue
        record = decode(message.value()).record
        seen.add((record["kind"], record["subject"], record["period"]))
    reader.close()
    assert wanted <= seen


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


def test_running_fraud_sink_raises_alerts_in_the_background_while_it_lands(
    registry_settings: Settings, clickhouse_dsn: str, tmp_path: Path, unique: str
) -> None:
    import threading

    from backbone.clickhouse import make_client
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
