"""The console's quality pages (issue 32): each provider's newest scorecard, the worst rules and a
provider's trend, read from landed scorecards; a quality database away is said, not a crash."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta

import pytest
from aiohttp.test_utils import TestClient, TestServer

from app.console.auth import Logins
from app.console.quality import latest, trend, worst_rules
from app.console.server import make_app
from app.console.snapshot import Snapshot, load_charter
from app.status import Status
from backbone.events.catalog import load_catalog
from backbone.quality.checks import QualityMonitor
from backbone.quality.contract import load_quality
from backbone.settings import PROJECT_ROOT, Settings, load_settings
from consumers.quality import land_windows, quality_database, recent_scorecards, refresh_scorecards, setup_quality

CONTRACTS = load_quality(PROJECT_ROOT / "schemas", load_catalog(PROJECT_ROOT / "schemas"))
FIRST = datetime(2026, 12, 7, 8, 10, tzinfo=UTC)
PASSWORDS = {"operator": "operator-secret-1"}


def claim(n: int, postcode: str) -> dict:
    # one claimant each (a business key repeated would fail uniqueness), a known postcode (schemas/reference/)
    return {"event_id": str(uuid.UUID(int=n)), "national_id": f"{100_000_000 + n}", "postcode": postcode, "benefit_type": "unemployment",
            "period": "2026-11", "monthly_amount": 900.0, "bank_account": "NL91ABNA0417164300", "household_size": 2,
            "occurred_at": FIRST}


@pytest.fixture(scope="module")
def database(clickhouse_client) -> str:  # noqa: ANN001
    """Two hours of claims landed: 100 a hour, 2 then 20 without a postcode."""
    name = quality_database(Settings(clickhouse_database_prefix=f"qc{uuid.uuid4().hex[:8]}_"))
    setup_quality(clickhouse_client, name)
    monitor = QualityMonitor(CONTRACTS.values())
    for hour, missing in ((0, 2), (1, 20)):
        now = FIRST + timedelta(hours=hour)
        for n in range(100):
            monitor.observe("welfare.benefit_claimed", {**claim(hour * 1000 + n, "" if n < missing else "1000 DP"), "occurred_at": now}, now)
    windows = monitor.closed(FIRST + timedelta(hours=3))
    _, _, touched = land_windows(clickhouse_client, name, CONTRACTS, [(f"{w.event_type}|{w.hour}|w".encode(), w.to_bytes()) for w in windows])
    refresh_scorecards(clickhouse_client, name, CONTRACTS, touched)
    yield name
    clickhouse_client.command(f"DROP DATABASE IF EXISTS {name}")


def test_the_worst_rules_the_newest_hour_and_the_trend(clickhouse_client, database: str) -> None:  # noqa: ANN001
    rows = recent_scorecards(clickhouse_client, database)
    worst = worst_rules(rows)
    assert (worst[0].event_type, worst[0].dimension, worst[0].rule, worst[0].failed, worst[0].checked) == (
        "welfare.benefit_claimed", "completeness", "postcode", 22, 200)
    assert all(f.failed > 0 for f in worst) and worst == sorted(worst, key=lambda f: -f.failed_pct)
    assert {row["hour"].hour for row in latest(rows)} == {9}
    (event_type, hours), = trend(rows).items()
    assert event_type == "welfare.benefit_claimed" and [h.hour for h, _ in hours] == [9, 8]
    assert hours[0][1]["completeness"]["failed"] == 20 and hours[1][1]["completeness"]["failed"] == 2
    assert recent_scorecards(clickhouse_client, database, provider="tax") == []


def run(read: Callable[[str | None], list], test: Callable[[TestClient], Awaitable[None]]) -> None:
    snapshot = Snapshot(Status(), load_charter(load_settings()), [], window_s=300)

    async def go() -> None:
        app = make_app(Logins(PASSWORDS), lambda: snapshot, lambda _: ("", [], (None, "")), refresh_s=0.05, quality=read)
        async with TestClient(TestServer(app)) as client:
            assert (await client.get("/quality", allow_redirects=False)).status == 302  # a login first
            await client.post("/login", data={"user": "operator", "password": PASSWORDS["operator"]})
            await test(client)

    asyncio.run(go())


def test_the_pages_show_scores_bars_and_the_worst_rule(clickhouse_client, database: str) -> None:  # noqa: ANN001
    def read(provider: str | None) -> list:
        return recent_scorecards(clickhouse_client, database, provider=provider)

    async def test(client: TestClient) -> None:
        page = await (await client.get("/quality")).text()
        assert "postcode" in page and "2026-12-07 09:00" in page and 'href="/quality/welfare"' in page
        assert 'class="num bad"' in page  # 20 of 100 without a postcode: completeness 96.7, below its bar of 98
        trend_page = await (await client.get("/quality/welfare")).text()
        assert trend_page.index("2026-12-07 09:00") < trend_page.index("2026-12-07 08:00")
        assert "No scorecard of this provider" in await (await client.get("/quality/police")).text()

    run(read, test)


def test_a_quality_database_away_is_said_on_the_page() -> None:
    def read(provider: str | None) -> list:
        raise ConnectionRefusedError

    async def test(client: TestClient) -> None:
        answer = await client.get("/quality")
        assert answer.status == 503 and "cannot be read now (ConnectionRefusedError)" in await answer.text()

    run(read, test)
