"""Running a differentially private release (`backbone dp release`) and reading what is left of
each budget (`backbone dp budget`).

Order, so that nothing is released that the ledger does not hold: (1) the spend is decided
against every spend sealed so far and sealed in the audit trail (`backbone.audit.dp_ledger`;
refused past a budget or cap, the refusal sealed too); (2) only then are the landed rows read,
each person's contribution bounded in ClickHouse SQL (`backbone.privacy.bounding`) and noise added
by OpenDP (`backbone.privacy.mechanisms`); (3) the noisy cells with their 95% intervals are written
to the recipient's database (`<recipient>.dp_releases`) and published on `dp.<recipient>.releases`
(JSON). A release whose computation fails after its spend was sealed has still spent it.
"""

from __future__ import annotations

import json
import secrets
import uuid
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from fractions import Fraction
from typing import Any

from clickhouse_connect.driver.client import Client
from confluent_kafka import Producer

from backbone.audit.dp_ledger import LedgerWriter
from backbone.errors import BackboneError, KafkaUnavailableError
from backbone.kafka.topics import dp_releases_topic
from backbone.policy import names
from backbone.policy.agreements import Agreement, Charter
from backbone.policy.dp_release import DpRelease, Query
from backbone.privacy import ledger, mechanisms
from backbone.privacy.bounding import bounded_aggregate, identifier, population_total_sql
from backbone.settings import Settings

RESULTS_TABLE = "dp_releases"


class DpError(BackboneError):
    """A release asked for that the charter does not declare."""


def releases_topic(recipient: str) -> str:
    return dp_releases_topic(recipient)  # the ACL plan grants the recipient read on it


@dataclass
class Release:
    release_id: str
    agreement: str
    query: str
    statistic: str
    recipient: str
    purpose: str
    window: str
    columns: list[str]
    cells: list[list[str]]
    values: list[float]
    low: list[float | None]
    high: list[float | None]
    accuracy: float | None
    scale: float
    cost: dict[str, float]
    ledger_checkpoint: int
    remaining: dict[str, float]
    invariants: dict[str, Any] = field(default_factory=dict)
    released_at: str = field(default_factory=lambda: datetime.now(UTC).isoformat(timespec="seconds"))

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def declared(charter: Charter, agreement_id: str, query_name: str | None,
             recipient: str | None, purpose: str | None) -> tuple[Agreement, DpRelease, Query, str, str]:
    agreement = charter.current(agreement_id)
    release = agreement.dp_release
    if release is None:
        raise DpError(f"agreement {agreement.key} declares no dp_release; add one (README, Differentially private releases)")
    try:
        query = release.query(query_name) if query_name else release.queries[0]
    except KeyError:
        raise DpError(f"agreement {agreement.key} declares no query {query_name!r}; its queries: "
                      f"{', '.join(q.name for q in release.queries)}") from None
    budgets = [b for b in release.budgets if (recipient is None or b.recipient == recipient) and (purpose is None or b.purpose == purpose)]
    if len(budgets) != 1:
        known = ", ".join(f"{b.recipient} ({b.purpose})" for b in release.budgets)
        raise DpError(f"say which budget the release is for with --recipient and --purpose; {agreement.key} has: {known}")
    return agreement, release, query, budgets[0].recipient, budgets[0].purpose


def window_of(release: DpRelease, window: str | None) -> str:
    if release.windows is None:
        if window not in (None, ledger.ALL_TIME):
            raise DpError("this release declares no windows: its budget is for all time; leave out --window")
        return ledger.ALL_TIME
    if not window:
        raise DpError(f"say which window to release with --window (a value of {release.windows.column}, e.g. 2026-03)")
    return window


def attempt_for(agreement: Agreement, release: DpRelease, query: Query, recipient: str, purpose: str, window: str) -> ledger.Attempt:
    budget = release.budget(recipient, purpose)
    l1, l2 = mechanisms.sensitivity(query)
    parameters = {"l1": l1, "l2": l2, **query.contributions.model_dump(), "bounds": query.bounds, "cells": query.cell_count()}
    return ledger.Attempt(agreement.key, agreement.id, window, recipient, purpose, query.name,
                          ledger.query_hash(agreement.key, query, window), query.mechanism, ledger.amounts(query.cost),
                          ledger.amounts(budget.cost()), ledger.amounts(release.population_cap), str(uuid.uuid4()),
                          json.dumps(parameters, sort_keys=True))


def source_table(settings: Settings, agreement: Agreement) -> str:
    database = f"{settings.clickhouse_database_prefix}{names.sanitise(agreement.recipient)}"
    return f"{identifier(database)}.{identifier(names.table_name(agreement.event_types[0]))}"


def compute(client: Client, table: str, release: DpRelease, query: Query, window: str,
            scale_bias: float = 1.0) -> tuple[list[tuple[str, ...]], list[float], list[float | None], list[float | None], float | None, float]:
    """(cells, noisy values, 95% lows, highs, accuracy, scale): the bounded true aggregate, then OpenDP."""
    bounded = bounded_aggregate(table, release, query, None if window == ledger.ALL_TIME else window, secrets.randbits(63))
    rows = client.query(bounded.sql, parameters=bounded.parameters).result_rows
    cells = query.cells()
    width, dims = bounded.cell_width, len(cells[0]) if cells else 0  # no grouping: one cell, named ()
    found = {tuple(str(v) for v in row[:dims]): row[width:] for row in rows}
    if query.statistic == "quantile":
        noisy = mechanisms.noisy_quantiles(query, query.cost, [list(found.get(c, ([],))[0]) for c in cells])
        return cells, noisy.values, [None] * len(cells), [None] * len(cells), None, noisy.scale
    counts = [float(found.get(c, (0, 0.0))[0]) for c in cells]
    sums = [float(found.get(c, (0, 0.0))[1]) for c in cells]
    if query.statistic in {"count", "histogram"}:
        noisy = mechanisms.noisy_vector(query, query.cost, counts, "count", scale_bias=scale_bias)
        acc = noisy.accuracy or 0.0
        return cells, noisy.values, [v - acc for v in noisy.values], [v + acc for v in noisy.values], acc, noisy.scale
    if query.statistic == "sum":
        noisy = mechanisms.noisy_vector(query, query.cost, sums, "sum", scale_bias=scale_bias)
        acc = noisy.accuracy or 0.0
        return cells, noisy.values, [v - acc for v in noisy.values], [v + acc for v in noisy.values], acc, noisy.scale
    half = mechanisms.halve(query.cost)  # mean: a noisy sum over a noisy count, half the cost each
    noisy_sum = mechanisms.noisy_vector(query, half, sums, "sum", alpha=mechanisms.ALPHA / 2)
    noisy_count = mechanisms.noisy_vector(query, half, counts, "count", alpha=mechanisms.ALPHA / 2)
    low_bound, high_bound = query.bounds or (0.0, 0.0)
    means, lows, highs = [], [], []
    for s, n in zip(noisy_sum.values, noisy_count.values, strict=True):
        means.append(min(max(s / n, low_bound), high_bound) if n >= 1 else (low_bound + high_bound) / 2)
        a_s, a_n = noisy_sum.accuracy or 0.0, noisy_count.accuracy or 0.0
        if n - a_n >= 1:  # both intervals hold with 95% (97.5% each): the ratio's extremes
            options = [(s + ds) / (n + dn) for ds in (-a_s, a_s) for dn in (-a_n, a_n)]
            lows.append(max(min(options), low_bound))
            highs.append(min(max(options), high_bound))
        else:
            lows.append(low_bound)
            highs.append(high_bound)
    return cells, means, lows, highs, None, noisy_sum.scale


def run_release(settings: Settings, client: Client, charter: Charter, agreement_id: str, *, query_name: str | None = None,
                recipient: str | None = None, purpose: str | None = None, window: str | None = None,
                writer: LedgerWriter | None = None, publish_topic: bool = True) -> Release:
    """Seal the spend, then compute and publish one release (`ReleaseRefused` past a budget or cap)."""
    from backbone.audit.operations import actor

    agreement, release, query, recipient, purpose = declared(charter, agreement_id, query_name, recipient, purpose)
    window = window_of(release, window)
    attempt = attempt_for(agreement, release, query, recipient, purpose, window)
    own = writer is None
    writer = writer or LedgerWriter(settings, actor(settings))
    try:
        entry = writer.attempt(attempt)  # sealed and acknowledged, or refused (raises): nothing computed before
        remaining = writer.tally.remaining(attempt.budget_key, attempt.budget)
    finally:
        if own:
            writer.close()
    table = source_table(settings, agreement)
    cells, values, lows, highs, accuracy, scale = compute(client, table, release, query, window)
    invariants: dict[str, Any] = {}
    if "population_total" in release.invariants:
        sql, parameters = population_total_sql(table, release, None if window == ledger.ALL_TIME else window)
        invariants["population_total"] = int(client.query(sql, parameters=parameters).result_rows[0][0])
    columns = [g.column if not g.prefix else f"{g.column}[:{g.prefix}]" for g in query.group_by]
    if query.statistic == "histogram":
        columns.append(f"{query.field} bin")
    result = Release(attempt.release_id, agreement.key, query.name, query.statistic, recipient, purpose, window, columns,
                     [list(c) for c in cells], values, lows, highs, accuracy, scale, query.cost.parts(), entry.sequence,
                     {k: float(v) for k, v in remaining.items()}, invariants)
    publish(settings, client, result, publish_topic, producer=None if own else writer.producer)
    return result


def publish(settings: Settings, client: Client, result: Release, to_topic: bool = True, producer: Producer | None = None) -> None:
    """The release into `<recipient>.dp_releases` and onto `dp.<recipient>.releases` (with `producer`
    when given: a long-running releaser's, already connected)."""
    database = identifier(f"{settings.clickhouse_database_prefix}{names.sanitise(result.recipient)}")
    client.command(f"CREATE DATABASE IF NOT EXISTS {database}")
    client.command(
        f"CREATE TABLE IF NOT EXISTS {database}.{RESULTS_TABLE} (release_id String, released_at DateTime, agreement String, "
        "query String, statistic String, window String, cell Array(String), value Float64, low Nullable(Float64), "
        "high Nullable(Float64), cost String, ledger_checkpoint Int64) ENGINE = ReplacingMergeTree ORDER BY (query, window, release_id, cell)")
    at = datetime.fromisoformat(result.released_at).strftime("%Y-%m-%d %H:%M:%S")
    cost = json.dumps(result.cost, sort_keys=True)
    rows = "\n".join(json.dumps({"release_id": result.release_id, "released_at": at, "agreement": result.agreement, "query": result.query,
                                 "statistic": result.statistic, "window": result.window, "cell": cell, "value": value, "low": low,
                                 "high": high, "cost": cost, "ledger_checkpoint": result.ledger_checkpoint})
                      for cell, value, low, high in zip(result.cells, result.values, result.low, result.high, strict=True))
    client.command(f"INSERT INTO {database}.{RESULTS_TABLE} FORMAT JSONEachRow\n{rows}")  # no pandas import for 1,000 rows
    if not to_topic:
        return
    from backbone.kafka.topics import Topics

    topic = releases_topic(result.recipient)
    producer = producer or Producer(settings.producer_config(**{"linger.ms": 0}))
    known = producer.list_topics(timeout=settings.kafka_timeout_s).topics
    if topic not in known or known[topic].error is not None:
        Topics(settings).ensure(topic)
    failures: list[str] = []
    producer.produce(topic, json.dumps(result.to_json()).encode(), result.release_id.encode(),
                     on_delivery=lambda error, _message: failures.append(error.str()) if error is not None else None)
    if producer.flush(settings.kafka_timeout_s) or failures:
        raise KafkaUnavailableError(f"release {result.release_id} is in {database}.{RESULTS_TABLE} but {topic} did not acknowledge it")


def budget_rows(charter: Charter, tally: ledger.Tally) -> list[dict[str, Any]]:
    """Per declared budget and cap, and per window spent in: the limit, what is spent and what is left."""
    rows = []
    for agreement in charter.agreements:
        release = agreement.dp_release
        if release is None or agreement.status != "active":
            continue
        windows = sorted({key.split("/")[1] for key in tally.spent if key.startswith(f"{agreement.id}/")}) or ["(none spent yet)"]
        for window in windows:
            scopes = [(f"{b.recipient} ({b.purpose})", ledger.budget_key(agreement.id, window, b.recipient, b.purpose), b.cost())
                      for b in release.budgets]
            scopes.append(("population cap (all recipients)", ledger.cap_key(agreement.id, window), release.population_cap))
            for scope, key, limit in scopes:
                amounts = ledger.amounts(limit)
                spent = tally.spent.get(key, {})
                rows.append({"agreement": agreement.key, "window": window, "budget": scope,
                             "limit": {k: float(v) for k, v in amounts.items()},
                             "spent": {k: float(spent.get(k, Fraction(0))) for k in amounts},
                             "left": {k: float(v) for k, v in tally.remaining(key, amounts).items()}})
    return rows
