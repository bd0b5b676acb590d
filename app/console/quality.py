"""The console's quality pages (issue 32): `/quality`, each provider's newest scorecard and the
worst rules of the last week; `/quality/{provider}`, the provider's trend, hour by hour per event
type and dimension. Read from the landed `quality.scorecards` (counts and scores only, nothing
personal), so every role may see them."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from html import escape
from typing import Any

from aiohttp import web

from backbone.quality.contract import DIMENSIONS

Reader = Callable[[str | None], list[dict[str, Any]]]  # provider (None: all) -> recent scorecard rows
TREND_HOURS = 48  # hours a provider's trend shows, newest first


@dataclass(frozen=True, slots=True)
class RuleFigure:
    """One rule's checks and failures summed over the hours read."""

    event_type: str
    dimension: str
    rule: str
    checked: int
    failed: int

    @property
    def failed_pct(self) -> float:
        return 100.0 * self.failed / self.checked if self.checked else 0.0


def worst_rules(rows: Iterable[dict[str, Any]], limit: int = 10) -> list[RuleFigure]:
    """The rules failing the largest share of their checks (a field's completeness, a validity rule,
    a consistency rule; uniqueness, timeliness and volume as a whole), ties by failures."""
    sums: dict[tuple[str, str, str], list[int]] = {}
    for row in rows:
        parts = row["detail"].items() if row["detail"] else [(row["dimension"], (row["checked"], row["failed"]))]
        for rule, (checked, failed) in parts:
            total = sums.setdefault((row["event_type"], row["dimension"], rule), [0, 0])
            total[0] += int(checked)
            total[1] += int(failed)
    figures = [RuleFigure(t, d, r, c, f) for (t, d, r), (c, f) in sums.items() if f > 0]
    return sorted(figures, key=lambda x: (-x.failed_pct, -x.failed, x.event_type, x.rule))[:limit]


def trend(rows: Iterable[dict[str, Any]]) -> dict[str, list[tuple[Any, dict[str, dict[str, Any]]]]]:
    """Per event type, its hours newest first, each with its row per dimension."""
    by_type: dict[str, dict[Any, dict[str, dict[str, Any]]]] = {}
    for row in rows:
        by_type.setdefault(row["event_type"], {}).setdefault(row["hour"], {})[row["dimension"]] = row
    return {t: sorted(hours.items(), key=lambda item: item[0], reverse=True) for t, hours in sorted(by_type.items())}


def latest(rows: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """Each (provider, event type)'s newest hour, one row per dimension."""
    newest: dict[tuple[str, str], Any] = {}
    rows = list(rows)
    for row in rows:
        key = (row["provider"], row["event_type"])
        newest[key] = max(newest.get(key, row["hour"]), row["hour"])
    return [row for row in rows if row["hour"] == newest[(row["provider"], row["event_type"])]]


def _cell(row: dict[str, Any] | None) -> str:
    if row is None or row["score"] is None:
        return '<td class="dim">-</td>'
    kind = "bad" if row["met"] is False else "good" if row["met"] else ""
    title = escape(f"{row['failed']:,} of {row['checked']:,} checks failed; bar {row['threshold'] or 'none'}")
    return f'<td class="num {kind}" title="{title}">{row["score"]:.1f}</td>'


def _scores_table(first: str, lines: list[tuple[str, dict[str, dict[str, Any]]]]) -> str:
    head = f"<tr><th>{escape(first)}</th>" + "".join(f"<th>{d}</th>" for d in DIMENSIONS) + "</tr>"
    body = "".join(f"<tr><td>{label}</td>" + "".join(_cell(cells.get(d)) for d in DIMENSIONS) + "</tr>" for label, cells in lines)
    return f"<table>{head}{body}</table>"


def overview_html(rows: list[dict[str, Any]]) -> str:
    if not rows:
        return '<section><h1>Data quality</h1><p class="dim">No scorecard has landed yet.</p></section>'
    lines: dict[tuple[str, str], dict[str, dict[str, Any]]] = {}
    for row in latest(rows):
        lines.setdefault((row["provider"], row["event_type"]), {})[row["dimension"]] = row
    newest = [(f'<a href="/quality/{escape(p)}">{escape(p)}</a> {escape(t)} <span class="dim">{cells[next(iter(cells))]["hour"]:%Y-%m-%d %H:00}</span>',
               cells) for (p, t), cells in sorted(lines.items())]
    worst = "".join(f"<tr><td>{escape(f.event_type)}</td><td>{f.dimension}</td><td>{escape(f.rule)}</td>"
                    f'<td class="num">{f.failed:,}</td><td class="num">{f.checked:,}</td><td class="num">{f.failed_pct:.2f}%</td></tr>'
                    for f in worst_rules(rows))
    worst_table = ("<table><tr><th>event type</th><th>dimension</th><th>rule</th><th>failed</th><th>checked</th><th>failed %</th></tr>"
                   f"{worst}</table>") if worst else '<p class="dim">No rule failed.</p>'
    return (f"<section><h1>Data quality</h1><p>Each provider's newest scored hour (0-100; red: below its bar).</p>"
            f"{_scores_table('provider, event type, hour', newest)}</section>"
            f"<section><h2>Worst rules, last week</h2>{worst_table}</section>")


def provider_html(provider: str, rows: list[dict[str, Any]]) -> str:
    if not rows:
        return f'<section><h1>{escape(provider)}</h1><p class="dim">No scorecard of this provider has landed.</p></section>'
    sections = []
    for event_type, hours in trend(rows).items():
        lines = [(f"{hour:%Y-%m-%d %H:00}", cells) for hour, cells in hours[:TREND_HOURS]]
        sections.append(f"<section><h2>{escape(event_type)}</h2>{_scores_table('hour', lines)}</section>")
    return f"<section><h1>Data quality: {escape(provider)}</h1><p>Scores per hour, newest first.</p></section>" + "".join(sections)


def quality_routes(app: web.Application, read: Reader, page: Callable[..., str], session_of: Callable[[web.Request], Any]) -> None:
    """Mount `/quality` and `/quality/{provider}`."""

    async def rows(provider: str | None) -> tuple[list[dict[str, Any]] | None, str]:
        try:
            return await asyncio.get_running_loop().run_in_executor(None, read, provider), ""
        except Exception as exc:  # noqa: BLE001 - ClickHouse away or no quality database: said on the page
            return None, type(exc).__name__

    async def answer(request: web.Request, provider: str | None) -> web.Response:
        session = session_of(request)
        found, problem = await rows(provider)
        if found is None:
            body = f'<section class="unreachable"><h1>Data quality</h1><p class="bad">The scorecards cannot be read now ({escape(problem)}).</p></section>'
            return web.Response(text=page("Data quality", body, session.user, session.role), content_type="text/html", status=503)
        body = overview_html(found) if provider is None else provider_html(provider, found)
        return web.Response(text=page("Data quality", body, session.user, session.role), content_type="text/html")

    async def overview(request: web.Request) -> web.Response:
        return await answer(request, None)

    async def one(request: web.Request) -> web.Response:
        return await answer(request, request.match_info["provider"])

    app.add_routes([web.get("/quality", overview), web.get("/quality/{provider}", one)])


def scorecard_reader(settings: Any) -> Reader:
    """Reads the landed scorecards with the console's ClickHouse user, a new read-only client a call."""

    def read(provider: str | None) -> list[dict[str, Any]]:
        from backbone.clickhouse.client import make_client
        from consumers.quality import quality_database, recent_scorecards

        client = make_client(settings.clickhouse_dsn or "", read_only=True)
        try:
            return recent_scorecards(client, quality_database(settings), provider=provider)
        finally:
            client.close()

    return read
