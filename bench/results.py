"""What every benchmark does with its figures: one wide console, the percentile summary, the
measure / value / target table with its green or red target cell, the rows the processor and
end-to-end benchmarks both print, the notes, and the JSON file each run leaves in `bench/results/`
(`<name>-<UTC timestamp>.json`, git-ignored)."""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, is_dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

RESULTS_DIR = Path(__file__).resolve().parent / "results"
LOADED_MACHINE = ("measured on a shared 2-core development machine with other engineers' work running: "
                  "figures of a loaded machine, compare ratios within one run")
console = Console(width=max(Console().width, 120))  # the tables stay readable when piped


def save(name: str, results: Any) -> Path:
    """Write `results` (a dataclass or a dict) to `bench/results/<name>-<UTC timestamp>.json` and say where."""
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    path = RESULTS_DIR / f"{name}-{datetime.now(UTC):%Y%m%dT%H%M%SZ}.json"
    payload = asdict(results) if is_dataclass(results) else results
    path.write_text(json.dumps(payload, indent=2) + "\n")
    console.print(f"results: {path}")
    return path


def print_notes(notes: Sequence[str]) -> None:
    for note in notes:
        console.print(f"note: {note}")


def print_and_save(name: str, table: Table, results: Any) -> Path:
    """The end of a benchmark's report: its table, its notes (`results.notes`), its JSON file (`save`)."""
    console.print(table)
    print_notes(results.notes)
    return save(name, results)


def size_ratio(smallest: float, largest: float) -> float | None:
    """A figure at the largest size over the smallest (1.0: flat in size); None when there is no smallest."""
    return round(largest / smallest, 2) if smallest else None


def add_flat_ratios(table: Table, ratios: Mapping[str, float], label: Callable[[str], str]) -> None:
    """One row per `ratios` entry (largest / smallest size), each against the flat goal."""
    for name, ratio in ratios.items():
        table.add_row(label(name), f"{ratio:.2f}x", "flat: ~1x")


# -- percentiles --------------------------------------------------------------------------------


def nearest_rank(ordered: Sequence[float], q: float) -> float:
    """The value of rank round(q% of n), clamped to the values (bench.processor, bench.e2e)."""
    return ordered[min(len(ordered) - 1, max(0, round(q / 100 * len(ordered)) - 1))]


def rank_above(ordered: Sequence[float], q: float) -> float:
    """The value at index int(q% of n) of the sorted values: one rank above `nearest_rank` where q%
    of n is whole (bench.consent's rule, kept so its figures stay as they were)."""
    return ordered[min(len(ordered) - 1, int(q / 100 * len(ordered)))]


def percentiles(values: Sequence[float], points: Sequence[int] = (50, 95, 99), *,
                rank: Callable[[Sequence[float], float], float] = nearest_rank,
                digits: int | None = None, count: bool = False) -> dict[str, float]:
    """`p<point>` for each of `points` and `max` of `values` (empty if there are none), rounded to
    `digits` if given; with `count`, `n` too."""
    if not values:
        return {}
    ordered = sorted(values)
    keep = (lambda value: value) if digits is None else (lambda value: round(value, digits))
    out = {f"p{point}": keep(rank(ordered, point)) for point in points}
    out["max"] = keep(ordered[-1])
    if count:
        out["n"] = len(ordered)
    return out


# -- the measure / value / target table ---------------------------------------------------------


def measures(title: str) -> Table:
    table = Table(title=title)
    table.add_column("measure")
    table.add_column("value", justify="right")
    table.add_column("target")
    return table


def target(ok: bool, text: str) -> str:
    """A target cell: green when met, red when not."""
    return f"[{'green' if ok else 'red'}]{text}"


def add_bare_loop(table: Table, events_per_s: float, remark: str = "") -> None:
    table.add_row("bare loop (consume -> Router.route -> produce)", f"{events_per_s:,.0f} events/s", remark)


def add_handwritten(table: Table, with_audit: float, no_audit: float) -> None:
    table.add_row("hand-written loop, audit per event / no audit", f"{with_audit:,.0f} / {no_audit:,.0f} events/s", "")


def add_handwritten_ratios(table: Table, processor: float, with_audit: float, no_audit: float, *,
                           who: str = "processor", goal: float | None = None, remark: str = "") -> None:
    """processor / hand-written no-audit loop (against `goal` if given) and / the loop with the same audit."""
    ratio = processor / no_audit
    table.add_row(f"{who} / hand-written no-audit loop", f"{ratio:.0%}",
                  target(ratio >= goal, f">= {goal:.0%}") if goal is not None else remark)
    table.add_row(f"{who} / hand-written loop with the same audit", f"{processor / max(1.0, with_audit):.0%}", "")


def add_offered(table: Table, rate: float, events: int, sink_batch: str | None = None) -> None:
    if sink_batch is None:
        table.add_row("offered load achieved", f"{rate:,.0f} events/s ({events:,} events)", "")
    else:
        table.add_row("offered load achieved", f"{rate:,.0f} events/s", f"{events:,} events, sink batch {sink_batch}")


def add_latency(table: Table, path: str, figures: Mapping[str, float], goal_ms: float,
                remark: Callable[[str], str] | None = None) -> None:
    """`latency <path> p50 / p95 / p99 / max` in ms, the p99 against `goal_ms`; `remark(name)` is
    added to each row's target cell."""
    met = figures.get("p99", float("nan")) < goal_ms
    for name in ("p50", "p95", "p99", "max"):
        cell = target(met, f"< {goal_ms:,.0f} ms") if name == "p99" else ""
        if remark is not None:
            cell = f"{cell}{'  ' if cell else ''}{remark(name)}"
        table.add_row(f"latency {path} {name}", f"{figures.get(name, float('nan')):,.0f} ms", cell)
