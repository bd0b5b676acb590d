"""The SQL that computes a query's true aggregates with each person's contribution bounded.

Bounding happens in ClickHouse before any noise, so the sensitivity OpenDP is told holds: rows
outside the window or the declared cells are dropped (a public filter), each person (the domain
pseudonym) keeps at most `max_rows_per_group` rows in a cell and at most `max_groups` cells, and
summed or ranked values are clipped to the declared bounds. Which rows and cells a person keeps is
chosen by a hash under a fresh random salt per release, so it cannot be steered from the data.

Pure: returns SQL text and parameters; `app.dp_release` runs it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from backbone.policy.dp_release import DpRelease, Query, bin_labels


def identifier(name: str) -> str:
    """A ClickHouse identifier in backquotes (names come from validated agreements and schemas)."""
    return "`" + name.replace("\\", "\\\\").replace("`", "\\`") + "`"


@dataclass(slots=True, frozen=True)
class BoundedSql:
    """The statement and its parameters; result rows are (cell columns..., n, s) or (cell..., values)."""

    sql: str
    parameters: dict[str, Any]
    cell_width: int


def _group_expr(column: str, prefix: int | None) -> str:
    value = f"toString({identifier(column)})"
    return f"substring({value}, 1, {int(prefix)})" if prefix else value


def _bin_expr(field: str, bins: tuple[float, ...]) -> str:
    labels = bin_labels(bins)
    value = f"toFloat64({identifier(field)})"
    arms = [f"{value} < {edge!r}, '{label}'" for edge, label in zip(bins, labels, strict=False)]
    return f"multiIf({', '.join(arms)}, '{labels[-1]}')"


def bounded_aggregate(table: str, release: DpRelease, query: Query, window: str | None, salt: int) -> BoundedSql:
    """The bounded aggregate of `query` over `table` (qualified, quoted) in `window` (None: all rows).

    Two aggregations, no window functions: per (person, cell) at most `max_rows_per_group` rows
    (the first by hash: their count, clipped sum or values), then per person at most `max_groups`
    cells (the first by a hash of the cell), summed per cell."""
    cells = [_group_expr(g.column, g.prefix) for g in query.group_by]
    if query.statistic == "histogram":
        assert query.field is not None
        cells.append(_bin_expr(query.field, query.bins))
    if not cells:
        cells = ["''"]  # one cell: the whole window
    names = [f"g{i}" for i in range(len(cells))]
    parameters: dict[str, Any] = {"salt": salt}
    where = [f"{identifier(release.privacy_unit.pseudonym)} IS NOT NULL"]
    if window is not None and release.windows is not None:
        where.append(f"toString({identifier(release.windows.column)}) = {{window:String}}")
        parameters["window"] = window
    for index, group in enumerate(query.group_by):
        parameters[f"cells{index}"] = list(group.values.expand())
        where.append(f"g{index} IN {{cells{index}:Array(String)}}")
    if query.field is not None and query.statistic != "histogram":
        low, high = query.bounds or (0.0, 0.0)
        value = f"least(greatest(toFloat64({identifier(query.field)}), {float(low)!r}), {float(high)!r})"
    else:
        value = "1.0"
    rows, groups = query.contributions.max_rows_per_group, query.contributions.max_groups
    cell_list = ", ".join(names)
    selected = ", ".join(f"{expr} AS {name}" for expr, name in zip(cells, names, strict=True))
    inner = (f"SELECT toString({identifier(release.privacy_unit.pseudonym)}) AS unit, {selected}, {value} AS v, "
             f"cityHash64(toString(event_id), {{salt:UInt64}}) AS h FROM {table} FINAL WHERE {' AND '.join(where)}")
    first_rows = f"arraySlice(arrayMap(x -> x.1, arraySort(x -> x.2, groupArray((v, h)))), 1, {rows})"
    if query.statistic == "quantile":
        per_cell = f"{first_rows} AS a"
    elif query.statistic in {"count", "histogram"}:
        per_cell = f"toFloat64(least(count(), {rows})) AS a"
    else:
        per_cell = f"arraySum({first_rows}) AS a"
    by_person_cell = f"SELECT unit, {cell_list}, least(count(), {rows}) AS n, {per_cell} FROM ({inner}) GROUP BY unit, {cell_list}"
    by_person = (f"SELECT arrayJoin(arraySlice(arraySort(x -> x.1, groupArray((cityHash64({cell_list}, {{salt:UInt64}}), "
                 f"tuple({cell_list}), n, a))), 1, {groups})) AS t FROM ({by_person_cell}) GROUP BY unit")
    out = ", ".join(f"tupleElement(t.2, {i + 1}) AS {name}" for i, name in enumerate(names))
    if query.statistic == "quantile":
        aggregate = "arrayFlatten(groupArray(t.4)) AS vs"
    else:
        aggregate = "sum(t.3) AS n, sum(t.4) AS s"
    sql = f"SELECT {out}, {aggregate} FROM ({by_person}) GROUP BY {cell_list}"
    return BoundedSql(sql, parameters, len(names) if query.group_by or query.statistic == "histogram" else 1)


def population_total_sql(table: str, release: DpRelease, window: str | None) -> tuple[str, dict[str, Any]]:
    """The exact number of people in the window: released only when declared as an invariant."""
    where, parameters = "1", {}
    if window is not None and release.windows is not None:
        where, parameters = f"toString({identifier(release.windows.column)}) = {{window:String}}", {"window": window}
    return f"SELECT uniqExact({identifier(release.privacy_unit.pseudonym)}) FROM {table} FINAL WHERE {where}", parameters


def plain_aggregate(table: str, release: DpRelease, query: Query, window: str | None) -> tuple[str, dict[str, Any]]:
    """The same cells without bounding or noise: the baseline `bench.dp` times a release against."""
    cells = [_group_expr(g.column, g.prefix) for g in query.group_by]
    names = [f"g{i}" for i in range(len(cells))]
    where, parameters = ["1"], {}
    if window is not None and release.windows is not None:
        where.append(f"toString({identifier(release.windows.column)}) = {{window:String}}")
        parameters["window"] = window
    selected = ", ".join(f"{e} AS {n}" for e, n in zip(cells, names, strict=True))
    group = f" GROUP BY {', '.join(names)}" if names else ""
    return f"SELECT {selected + ', ' if selected else ''}count() FROM {table} FINAL WHERE {' AND '.join(where)}{group}", parameters
