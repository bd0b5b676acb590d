"""Differentially private releases end to end on the real parts: the spend sealed in the audit
trail before anything is computed, refusals past a budget sealed too, two processes racing for the
last of a budget, a tampered ledger record named, and the utility of a release on a seeded population."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid

import pytest
import yaml
from pydantic import SecretStr

from app.dp_release import run_release
from backbone.audit.dp_ledger import LedgerWriter, ReleaseRefused
from backbone.events.catalog import default_catalog
from backbone.events.serde import Decoder, registry_client
from backbone.kafka.topics import OPERATIONS_TOPIC
from backbone.keys.keyring import Keyring
from backbone.keys.master import encode_master_key, new_master_key
from backbone.policy.agreements import Agreement, Charter, load_agreements, to_yaml
from backbone.privacy import ledger
from backbone.settings import PROJECT_ROOT, Settings, load_settings
from consumers.audit_kafka import read_messages

CATALOG = default_catalog()
SOURCE = "welfare-to-fraud"
# The seeded population: regions with >= 1,000 people each, the rest smaller.
BIG_REGIONS = {"12": 1500, "34": 2500, "56": 1000}
SMALL_REGIONS = {"78": 40, "90": 5}


def charter_with(release_edit: dict | None = None) -> Charter:
    charter = load_agreements(PROJECT_ROOT / "agreements", CATALOG)
    if release_edit is None:
        return charter
    data = yaml.safe_load(to_yaml(charter.get(SOURCE)))
    data["dp_release"].update(release_edit)
    return charter.with_agreement(Agreement.model_validate(data), "edited")


@pytest.fixture(scope="module")
def dp_settings(kafka_bootstrap: str, schema_registry_url: str, clickhouse_dsn: str,
                tmp_path_factory: pytest.TempPathFactory) -> Settings:
    data_dir = tmp_path_factory.mktemp("dp")
    master = new_master_key()
    settings = load_settings(kafka_bootstrap=kafka_bootstrap, schema_registry_url=schema_registry_url, data_dir=data_dir,
                             clickhouse_dsn=clickhouse_dsn, clickhouse_database_prefix=f"t{uuid.uuid4().hex[:8]}_",
                             kafka_timeout_s=10.0, master_key=SecretStr(encode_master_key(master)), keyring_path=data_dir / "operator.keyring",
                             identity="statistician-1")
    Keyring.generate().save(settings.keyring_path, master)
    return settings


def land(client, settings: Settings, window: str, regions: dict[str, int], claims_per_person: int = 2) -> None:  # noqa: ANN001
    """Rows as the fraud sink lands welfare claims (pseudonymised id, postcode district, period)."""
    database = f"{settings.clickhouse_database_prefix}fraud"
    client.command(f"CREATE DATABASE IF NOT EXISTS {database}")
    client.command(f"CREATE TABLE IF NOT EXISTS {database}.welfare_benefit_claimed (event_id UUID, national_id String, "
                   "postcode String, period String, monthly_amount Float64) ENGINE = ReplacingMergeTree ORDER BY event_id")
    for region, people in regions.items():
        client.command(
            f"INSERT INTO {database}.welfare_benefit_claimed SELECT generateUUIDv4(), concat('p-', {{w:String}}, '-', "
            f"{{r:String}}, '-', toString(intDiv(number, {claims_per_person}))), concat({{r:String}}, '07'), {{w:String}}, "
            f"100 + number % 900 FROM numbers({people * claims_per_person})", parameters={"w": window, "r": region})


@pytest.fixture(scope="module")
def landed(dp_settings: Settings, clickhouse_client) -> Settings:  # noqa: ANN001
    land(clickhouse_client, dp_settings, "2026-03", {**BIG_REGIONS, **SMALL_REGIONS})
    return dp_settings


def ledger_records(settings: Settings, window: str) -> list[dict]:
    decode = Decoder(registry_client(settings))
    records = [decode(m.value()).record for m in read_messages(settings, OPERATIONS_TOPIC, 0.3, 30)]
    return sorted((r for r in records if r["action"] == ledger.ACTION and r["details"]["window"] == window), key=lambda r: r["checkpoint"])


def test_a_release_publishes_every_declared_cell_with_its_interval_after_sealing_its_spend(landed: Settings,
                                                                                          clickhouse_client) -> None:  # noqa: ANN001
    release = run_release(landed, clickhouse_client, charter_with(), SOURCE, window="2026-03")
    assert len(release.cells) == 90 and release.accuracy and release.accuracy > 0
    assert release.remaining == {"epsilon": 1.0}
    (record,) = ledger_records(landed, "2026-03")
    assert record["outcome"] == "spent" and record["details"]["release_id"] == release.release_id
    assert record["checkpoint"] == release.ledger_checkpoint and json.loads(record["details"]["budget_spent"]) == {"epsilon": "1"}
    stored = clickhouse_client.query(f"SELECT count(), countIf(low <= value AND value <= high) FROM "
                                     f"{landed.clickhouse_database_prefix}statistics.dp_releases WHERE release_id = {{r:String}}",
                                     parameters={"r": release.release_id}).result_rows[0]
    assert stored == (90, 90)
    published = [json.loads(m.value()) for m in read_messages(landed, "dp.statistics.releases", 0.3, 30)]
    assert release.release_id in {p["release_id"] for p in published}


def test_relative_error_is_within_5_percent_for_cells_of_1000_or_more_people_at_epsilon_1(landed: Settings,
                                                                                         clickhouse_client) -> None:  # noqa: ANN001
    release = run_release(landed, clickhouse_client, charter_with(), SOURCE, window="2026-03")
    by_region = {cell[0]: value for cell, value in zip(release.cells, release.values, strict=True)}
    for region, people in BIG_REGIONS.items():
        true = people * 2  # two claims each, within the bound of three rows per person
        assert abs(by_region[region] - true) <= 0.05 * true, (region, by_region[region], true)


def test_a_release_past_its_budget_is_refused_and_the_refusal_is_in_the_trail(landed: Settings, clickhouse_client) -> None:  # noqa: ANN001
    land(clickhouse_client, landed, "2026-04", {"12": 10})
    charter = charter_with()
    run_release(landed, clickhouse_client, charter, SOURCE, window="2026-04")
    run_release(landed, clickhouse_client, charter, SOURCE, window="2026-04")
    with pytest.raises(ReleaseRefused, match="budget of statistics for official_statistics in window 2026-04 would be exceeded"):
        run_release(landed, clickhouse_client, charter, SOURCE, window="2026-04")
    records = ledger_records(landed, "2026-04")
    assert [r["outcome"] for r in records] == ["spent", "spent", "refused"]
    assert records[-1]["reason"].startswith("the budget of statistics")
    assert ledger.recompute({r["checkpoint"]: r for r in records})[1] == []


def test_budgets_renew_per_window_of_the_privacy_unit(landed: Settings, clickhouse_client) -> None:  # noqa: ANN001
    land(clickhouse_client, landed, "2026-05", {"12": 10})
    release = run_release(landed, clickhouse_client, charter_with(), SOURCE, window="2026-05")
    assert release.remaining == {"epsilon": 1.0}  # a fresh window: the person-month unit makes windows disjoint


RACER = """
import sys
from backbone.audit.dp_ledger import LedgerWriter, ReleaseRefused
from backbone.settings import load_settings
from tests.test_dp import racing_attempt
settings = load_settings()
spent = refused = 0
with LedgerWriter(settings, settings.identity) as writer:
    for _ in range(int(sys.argv[1])):
        try:
            writer.attempt(racing_attempt(sys.argv[2]))
            spent += 1
        except ReleaseRefused:
            refused += 1
print(spent, refused)
"""


def racing_attempt(window: str) -> ledger.Attempt:
    """A spend of 0.1 against a budget of 1 and a cap of 3: exactly 10 fit."""
    return ledger.Attempt(f"{SOURCE}@1", SOURCE, window, "statistics", "official_statistics", "claims_per_region", "h" * 64,
                          "laplace", ledger.amounts({"epsilon": 0.1}), ledger.amounts({"epsilon": 1.0}),
                          ledger.amounts({"epsilon": 3.0}), str(uuid.uuid4()))


def test_two_processes_racing_for_the_last_of_a_budget_never_overspend_and_every_refusal_is_sealed(dp_settings: Settings) -> None:
    window = f"race-{uuid.uuid4().hex[:6]}"
    attempts = int(os.environ.get("BACKBONE_TEST_DP_RACE_ATTEMPTS", "15"))  # per process; the 1,000 in all: 500
    with LedgerWriter(dp_settings, "statistician-1") as writer:  # eight already spent: two left to race for
        for _ in range(8):
            writer.attempt(racing_attempt(window))
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("BACKBONE_")},
           "BACKBONE_KAFKA_BOOTSTRAP": dp_settings.kafka_bootstrap, "BACKBONE_SCHEMA_REGISTRY_URL": dp_settings.schema_registry_url,
           "BACKBONE_SCHEMA_REGISTRY_USER": dp_settings.schema_registry_user or "",
           "BACKBONE_SCHEMA_REGISTRY_PASSWORD": dp_settings.schema_registry_password.get_secret_value()
           if dp_settings.schema_registry_password else "",
           "BACKBONE_DATA_DIR": str(dp_settings.data_dir), "BACKBONE_KEYRING_PATH": str(dp_settings.keyring_path),
           "BACKBONE_MASTER_KEY": dp_settings.master_key.get_secret_value(), "BACKBONE_IDENTITY": "statistician-1",
           "PYTHONPATH": str(PROJECT_ROOT)}
    racers = [subprocess.Popen([sys.executable, "-c", RACER, str(attempts), window], env=env, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True, cwd=PROJECT_ROOT) for _ in range(2)]
    outcomes = []
    for racer in racers:
        out, err = racer.communicate(timeout=300)
        assert racer.returncode == 0, err[-2000:]
        outcomes.append(tuple(int(n) for n in out.split()))
    assert sum(spent for spent, _ in outcomes) == 2
    records = ledger_records(dp_settings, window)
    assert sum(r["outcome"] == "spent" for r in records) == 10
    assert sum(r["outcome"] == "refused" for r in records) == 2 * attempts - 2
    tally, problems = ledger.recompute({r["checkpoint"]: r for r in records})
    assert problems == []
    assert tally.spent[ledger.budget_key(SOURCE, window, "statistics", "official_statistics")] == {"epsilon": 1}


def test_a_tampered_ledger_record_is_named_by_the_recomputation(dp_settings: Settings) -> None:
    window = f"tamper-{uuid.uuid4().hex[:6]}"
    with LedgerWriter(dp_settings, "statistician-1") as writer:
        for _ in range(3):
            writer.attempt(racing_attempt(window))
    records = {r["checkpoint"]: r for r in ledger_records(dp_settings, window)}
    middle = sorted(records)[1]
    edited = {**records[middle], "details": {**records[middle]["details"], "cost": ledger.text({"epsilon": ledger.Fraction(1, 100)})}}
    problems = ledger.recompute({**records, middle: edited})[1]
    assert problems and all(p.kind == ledger.LEDGER_MISMATCH for p in problems)
    assert problems[0].sequence == middle and str(records[middle]["action_id"]) in problems[0].detail


def test_audit_verify_names_a_ledger_record_sealed_with_a_false_cumulative_spend(dp_settings: Settings) -> None:
    """An operator holding their own signing key seals a record saying less was spent than was:
    signature and Merkle root hold, the recomputation names the record."""
    from backbone.audit.log import public_key_map
    from backbone.audit.operations import _chain_lock
    from backbone.audit.published import verifier_keys
    from backbone.events.catalog import load_catalog
    from backbone.privacy.ledger import Tally, decide
    from consumers.audit_kafka import verify_kafka

    window = f"forged-{uuid.uuid4().hex[:6]}"
    with LedgerWriter(dp_settings, "statistician-1") as writer:
        for _ in range(2):
            writer.attempt(racing_attempt(window))
        with _chain_lock(dp_settings):
            writer._catch_up()  # noqa: SLF001 - the insider's own writer
            outcome, reason, details = decide(Tally(), racing_attempt(window))  # as if nothing had been spent
            forged = writer._seal(ledger_action(outcome, reason, details))  # noqa: SLF001
    report = verify_kafka(dp_settings, load_catalog(dp_settings.schemas_dir), public_key_map(verifier_keys(dp_settings)), idle_s=0.3)
    named = [f for f in report.failures if f.kind == ledger.LEDGER_MISMATCH and window in f.detail]
    assert {f.sequence for f in named} == {forged}, report.failures  # its budget's and its cap's cumulative
    assert "states budget_spent {\"epsilon\":\"1/10\"}, the records before it add up to {\"epsilon\":\"3/10\"}" in named[0].detail


def ledger_action(outcome: str, reason: str | None, details: dict):  # noqa: ANN201 - OperatorAction
    from backbone.audit.operations import OperatorAction

    return OperatorAction(ledger.ACTION, "statistician-1", "forged", outcome, reason, details)


def test_dp_budget_shows_what_is_left_per_window_and_dp_release_prints_cells_with_accuracy(landed: Settings, backbone_cli,  # noqa: ANN001
                                                                                           clickhouse_client) -> None:  # noqa: ANN001
    land(clickhouse_client, landed, "2026-06", {"12": 10})
    env = {"BACKBONE_KAFKA_BOOTSTRAP": landed.kafka_bootstrap, "BACKBONE_SCHEMA_REGISTRY_URL": landed.schema_registry_url,
           "BACKBONE_SCHEMA_REGISTRY_USER": landed.schema_registry_user or "",
           "BACKBONE_SCHEMA_REGISTRY_PASSWORD": landed.schema_registry_password.get_secret_value() if landed.schema_registry_password else "",
           "BACKBONE_CLICKHOUSE_DSN": landed.clickhouse_dsn, "BACKBONE_CLICKHOUSE_DATABASE_PREFIX": landed.clickhouse_database_prefix,
           "BACKBONE_KEYRING_PATH": str(landed.keyring_path), "BACKBONE_MASTER_KEY": landed.master_key.get_secret_value(),
           "BACKBONE_DATA_DIR": str(landed.data_dir)}
    refused = backbone_cli("dp", "release", SOURCE, "--window", "2026-06", **env)
    assert refused.returncode == 1 and "BACKBONE_IDENTITY" in refused.stderr
    done = backbone_cli("dp", "release", SOURCE, "--window", "2026-06", **env, BACKBONE_IDENTITY="statistician-1")
    assert done.returncode == 0, done.stderr
    assert "+/- " in done.stdout and "per cell at 95%" in done.stdout and "epsilon 1" in done.stdout
    shown = backbone_cli("dp", "budget", "--format", "json", **env)
    problems = json.loads(shown.stdout)["problems"]
    assert shown.returncode == (1 if problems else 0), shown.stderr
    assert all("window forged-" in p for p in problems)  # only the forgery of the test above, when it ran first
    rows = {(r["window"], r["budget"]): r for r in json.loads(shown.stdout)["budgets"]}
    assert rows[("2026-06", "statistics (official_statistics)")]["left"] == {"epsilon": 1.0}
    assert rows[("2026-06", "population cap (all recipients)")]["left"] == {"epsilon": 2.0}


def test_contribution_bounding_caps_rows_per_cell_cells_per_person_and_clips_values(landed: Settings, clickhouse_client) -> None:  # noqa: ANN001
    """The sensitivity OpenDP is told holds: one person with 10 claims in each of 5 regions, bounded to
    3 rows in 2 cells, weighs 6 in the counts and at most 6 x the upper bound in the sums."""
    from backbone.privacy.bounding import bounded_aggregate

    window = f"bound-{uuid.uuid4().hex[:6]}"
    database = f"{landed.clickhouse_database_prefix}fraud"
    clickhouse_client.command(
        f"INSERT INTO {database}.welfare_benefit_claimed SELECT generateUUIDv4(), 'heavy', concat(toString(10 + number % 5), '07'), "
        f"{{w:String}}, 100000 FROM numbers(50)", parameters={"w": window})
    release = charter_with().get(SOURCE).dp_release
    for statistic, extra, expected in (("count", {}, 6.0), ("sum", {"field": "monthly_amount", "bounds": [0, 1000]}, 6000.0)):
        query = release.queries[0].model_copy(update={"statistic": statistic, **extra,
                                                      "contributions": release.queries[0].contributions.model_copy(
                                                          update={"max_groups": 2, "max_rows_per_group": 3})})
        table = f"`{database}`.`welfare_benefit_claimed`"
        bounded = bounded_aggregate(table, release, query, window, 7)
        rows = clickhouse_client.query(bounded.sql, parameters=bounded.parameters).result_rows
        assert len(rows) == 2 and all(row[1] == 3 for row in rows), rows  # two cells, three rows each
        assert sum(row[2] for row in rows) == expected


@pytest.mark.parametrize("query", [
    {"statistic": "sum", "field": "monthly_amount", "bounds": [0, 1000]},
    {"statistic": "mean", "field": "monthly_amount", "bounds": [0, 1000]},
    {"statistic": "histogram", "field": "monthly_amount", "bins": [250, 500, 750]},
    {"statistic": "quantile", "field": "monthly_amount", "bounds": [0, 1000], "quantile": 0.5, "candidates": 41},
    {"statistic": "count", "mechanism": "gaussian", "cost": {"rho": 0.5}},
    {"statistic": "count", "mechanism": "gaussian", "cost": {"epsilon": 1.0, "delta": 1e-6}},
], ids=["sum", "mean", "histogram", "median", "count zCDP", "count (epsilon, delta)"])
def test_every_statistic_releases_each_declared_cell_near_the_truth_for_large_cells(landed: Settings, clickhouse_client,  # noqa: ANN001
                                                                                   query: dict) -> None:
    from app.dp_release import compute, source_table

    release_data = yaml.safe_load(to_yaml(charter_with().get(SOURCE)))["dp_release"]
    if "rho" in query.get("cost", {}):
        release_data["population_cap"], release_data["budgets"][0] = {"rho": 2}, {**release_data["budgets"][0], "epsilon": None, "rho": 1}
    if "delta" in query.get("cost", {}):
        release_data["population_cap"]["delta"], release_data["budgets"][0]["delta"] = 1e-5, 1e-5
    release_data["queries"] = [{**release_data["queries"][0], **query}]
    charter = charter_with(release_data)
    agreement = charter.get(SOURCE)
    assert charter.problems() == []
    release = agreement.dp_release
    cells, values, lows, highs, _, _ = compute(clickhouse_client, source_table(landed, agreement), release, release.queries[0], "2026-03")
    assert len(cells) == release.queries[0].cell_count() == len(values)
    region = {cell: value for cell, value in zip(cells, values, strict=True)}
    if query["statistic"] in {"mean", "quantile"}:
        assert 300 <= region[("34",)] <= 700  # values 100..999, evenly: mean and median near 550
    elif query["statistic"] == "histogram":
        assert sum(v for cell, v in region.items() if cell[0] == "34") == pytest.approx(5000, rel=0.05)
    elif query["statistic"] == "sum":
        assert region[("34",)] == pytest.approx(5000 * 549.5, rel=0.05)
    else:
        assert region[("34",)] == pytest.approx(5000, rel=0.05)
    assert all(low is None or low <= value <= high for value, low, high in zip(values, lows, highs, strict=True))


def test_the_ledger_topic_is_kept_for_ever_whoever_created_it_first(dp_settings: Settings) -> None:
    """An operator action made `audit.operations` with the broker's default retention before the
    first release, and the releaser's own "create it kept for ever" then did nothing: a week on, the
    ledger's first spends would be deleted (releases refused, or budget given back). Both now set it."""
    from backbone.audit import operations
    from backbone.kafka.topics import Topics

    topics = Topics(dp_settings)
    week = {"retention.ms": str(7 * 86_400_000)}
    topics.reconcile(OPERATIONS_TOPIC, week)  # as the first operator action used to leave it
    assert topics.describe(OPERATIONS_TOPIC).config["retention.ms"] == week["retention.ms"]
    with LedgerWriter(dp_settings, "statistician-1"):
        pass
    assert topics.describe(OPERATIONS_TOPIC).config["retention.ms"] == "-1"

    topics.reconcile(OPERATIONS_TOPIC, week)
    operations.record(dp_settings, operations.OperatorAction("agreement_status", "statistician-1", "tax-to-fraud@2", "done", None,
                                                             {"status": "suspended"}))
    assert topics.describe(OPERATIONS_TOPIC).config["retention.ms"] == "-1"
