"""Differentially private releases an agreement declares (`dp_release:`): the model and its rules.

An agreement that lands records may also let aggregates of those landed rows be released, with
noise, to other recipients: counts, sums, means, histograms and quantiles grouped by
non-identifying columns whose cells are declared in advance (a cell's existence tells nothing).
The privacy unit is a person, named by the field the agreement pseudonymises (the domain
pseudonym), optionally per window (`per: period`: a person-month). Each query bounds what one
unit contributes (groups, rows per group, clipped values) before the noise, so the sensitivity is
known; each release spends its `cost` from the budget of the recipient and purpose it is for, and
from the cap on the source population across all recipients, per window. Budgets renew from one
window to the next only when the windows are disjoint in the privacy unit (`per` is the window
column), never by the calendar alone.

    dp_release:
      privacy_unit: {pseudonym: national_id, per: period}
      windows: {column: period}
      population_cap: {epsilon: 3.0}
      budgets: [{recipient: statistics, purpose: official_statistics, epsilon: 2.0}]
      invariants: [group_keys]
      queries:
        - name: claims_per_region
          statistic: count
          group_by: [{column: postcode, prefix: 2, values: {range: [10, 99]}}]
          contributions: {max_groups: 1, max_rows_per_group: 1}
          mechanism: laplace
          cost: {epsilon: 0.5}

Accounting: `{epsilon}` (pure epsilon-DP, Laplace noise), `{rho}` (zero-concentrated DP, Gaussian
noise) or `{epsilon, delta}` (approximate DP, Gaussian noise); releases compose by adding costs.
Pure: `backbone.policy.rules` runs `dp_problems`, `backbone.privacy` computes and accounts.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

if TYPE_CHECKING:
    from backbone.events.catalog import Catalog, EventSchema
    from backbone.policy.agreements import Agreement

NAME = r"^[a-z0-9][a-z0-9_]*$"
STATISTICS = ("count", "sum", "mean", "histogram", "quantile")
MECHANISMS = {"laplace": ("epsilon",), "gaussian": ("rho", "epsilon_delta")}
# Facts released exactly, outside the accounting, that a release may declare (diff: a new one widens).
INVARIANTS = {
    "group_keys": "the declared cells (public by construction: declared in the agreement, not read from the data)",
    "window": "which window a release covers",
    "population_total": "the exact number of people in the window (a disclosure outside the budget, as the 2020 US Census's totals)",
}
MAX_CELLS = 100_000
NUMERIC = {"int", "long", "float", "double"}


class Cost(BaseModel):
    """A privacy loss: `{epsilon}`, `{rho}` or `{epsilon, delta}`."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    epsilon: float | None = Field(None, gt=0)
    delta: float | None = Field(None, gt=0, lt=1)
    rho: float | None = Field(None, gt=0)

    @model_validator(mode="after")
    def _one_unit(self) -> Cost:
        if self.rho is not None and (self.epsilon is not None or self.delta is not None):
            raise ValueError("a budget is {rho: X} (zCDP) or {epsilon: X} or {epsilon: X, delta: Y}, not both")
        if self.rho is None and self.epsilon is None:
            raise ValueError("give epsilon (with delta for approximate DP) or rho (zCDP)")
        return self

    @property
    def unit(self) -> str:
        """`epsilon`, `rho` or `epsilon_delta`: which accounting this is in."""
        return "rho" if self.rho is not None else ("epsilon_delta" if self.delta is not None else "epsilon")

    def parts(self) -> dict[str, float]:
        return {k: v for k, v in (("epsilon", self.epsilon), ("delta", self.delta), ("rho", self.rho)) if v is not None}

    def fits(self, spent: dict[str, float], limit: Cost) -> bool:
        """Whether `spent` plus this cost stays within `limit` (float sums, a relative 1e-9 allowance)."""
        if self.unit != limit.unit:
            return False
        return all(spent.get(k, 0.0) + v <= limit.parts()[k] * (1 + 1e-9) for k, v in self.parts().items())

    def text(self) -> str:
        return ", ".join(f"{k} {v:g}" for k, v in self.parts().items())


class Budget(Cost):
    recipient: str = Field(pattern=r"^[a-z0-9][a-z0-9_-]*$")
    purpose: str

    def cost(self) -> Cost:
        return Cost(**self.parts())


class Values(BaseModel):
    """The declared cells of one grouping column: a list, or a range of zero-padded integers."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    values: tuple[str, ...] = ()
    range: tuple[int, int] | None = None

    @model_validator(mode="before")
    @classmethod
    def _from_yaml(cls, value: Any) -> Any:
        if isinstance(value, list | tuple):
            return {"values": [str(v) for v in value]}
        return value

    def expand(self) -> tuple[str, ...]:
        if self.range is None:
            return self.values
        low, high = self.range
        width = len(str(high))
        return tuple(str(v).zfill(width) for v in range(low, high + 1))


class Group(BaseModel):
    """A grouping column of the landed table, optionally cut to its first `prefix` characters."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    column: str
    prefix: int | None = Field(None, ge=1)
    values: Values


class Contributions(BaseModel):
    """What one privacy unit may add to one release: groups, and rows in each."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    max_groups: int = Field(1, ge=1, le=10_000)
    max_rows_per_group: int = Field(1, ge=1, le=10_000)


class Query(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")
    name: str = Field(pattern=NAME)
    statistic: Literal["count", "sum", "mean", "histogram", "quantile"]
    field: str | None = None
    bounds: tuple[float, float] | None = None  # clipping for sum/mean, candidates' range for quantile
    bins: tuple[float, ...] = ()  # histogram edges
    quantile: float | None = Field(None, gt=0, lt=1)
    candidates: int = Field(101, ge=2, le=10_001)  # quantile: evenly spaced over bounds
    group_by: tuple[Group, ...] = ()
    contributions: Contributions = Contributions()
    mechanism: Literal["laplace", "gaussian"]
    cost: Cost

    @field_validator("bins")
    @classmethod
    def _increasing(cls, bins: tuple[float, ...]) -> tuple[float, ...]:
        if any(b <= a for a, b in zip(bins, bins[1:], strict=False)):
            raise ValueError("histogram bins must be increasing edges")
        return bins

    def cells(self) -> list[tuple[str, ...]]:
        """Every declared cell, in order: the product of the groups' values (and the bins)."""
        axes = [list(g.values.expand()) for g in self.group_by]
        if self.statistic == "histogram":
            axes.append(bin_labels(self.bins))
        cells: list[tuple[str, ...]] = [()]
        for axis in axes:
            cells = [cell + (value,) for cell in cells for value in axis]
        return cells

    def cell_count(self) -> int:
        return math.prod([len(g.values.expand()) for g in self.group_by] + ([len(self.bins) + 1] if self.statistic == "histogram" else []))


def bin_labels(bins: Sequence[float]) -> list[str]:
    """`<0`, `[0, 500)`, ..., `>=5000`: a label per bin, the two open ends included."""
    if not bins:
        return []
    inner = [f"[{a:g}, {b:g})" for a, b in zip(bins, bins[1:], strict=False)]
    return [f"<{bins[0]:g}", *inner, f">={bins[-1]:g}"]


class PrivacyUnit(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")
    pseudonym: str
    per: str | None = None


class Windows(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")
    column: str


class DpRelease(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")
    privacy_unit: PrivacyUnit
    windows: Windows | None = None
    population_cap: Cost
    budgets: tuple[Budget, ...] = Field(min_length=1)
    invariants: tuple[str, ...] = ()
    queries: tuple[Query, ...] = Field(min_length=1)

    def query(self, name: str) -> Query:
        for query in self.queries:
            if query.name == name:
                return query
        raise KeyError(name)

    def budget(self, recipient: str, purpose: str | None = None) -> Budget:
        found = [b for b in self.budgets if b.recipient == recipient and (purpose is None or b.purpose == purpose)]
        if len(found) != 1:
            raise KeyError(recipient)
        return found[0]


def dp_problems(agreement: Agreement, catalog: Catalog, where: str) -> list[str]:
    """Problems with an agreement's `dp_release`, each naming the place and the fix."""
    release = agreement.dp_release
    if release is None:
        return []
    at = f"{where}: field dp_release"
    problems: list[str] = []
    schemas = [catalog.events[t] for t in agreement.event_types if t in catalog.events]
    if len(agreement.event_types) != 1:
        problems.append(f"{at}: a dp_release reads one landed table; declare it on an agreement with one event type")
    if agreement.status != "draft" and agreement.domain is None:
        problems.append(f"{at}.privacy_unit: the privacy unit is a person by their domain pseudonym; give the agreement a domain")
    unit = release.privacy_unit
    treatment = agreement.fields.get(unit.pseudonym)
    if treatment is None or treatment.name != "pseudonymise":
        problems.append(f"{at}.privacy_unit.pseudonym: {unit.pseudonym} must be a field this agreement pseudonymises "
                        f"(its pseudonym names one person in the domain); it is {treatment.name if treatment else 'not released'}")
    if release.windows is not None:
        problems += _column(agreement, schemas, release.windows.column, f"{at}.windows.column")
        if unit.per != release.windows.column:
            problems.append(f"{at}.windows: budgets renew per window only when windows are disjoint in the privacy unit; a person "
                            f"appears in many {release.windows.column} windows, so set privacy_unit.per: {release.windows.column} "
                            "(the unit becomes a person per window) or remove windows (one budget for all time)")
    elif unit.per is not None:
        problems.append(f"{at}.privacy_unit.per: a unit per {unit.per} needs windows: {{column: {unit.per}}}")
    for name in release.invariants:
        if name not in INVARIANTS:
            problems.append(f"{at}.invariants: unknown invariant {name!r}; declare some of {', '.join(INVARIANTS)}")
    units = {release.population_cap.unit} | {b.unit for b in release.budgets}
    if len(units) > 1:
        problems.append(f"{at}: budgets and the population cap must use one accounting (epsilon, rho, or epsilon with delta); found {sorted(units)}")
    seen: set[tuple[str, str]] = set()
    for budget in release.budgets:
        if budget.purpose not in catalog.purposes:
            problems.append(f"{at}.budgets: unknown purpose {budget.purpose!r}; use one of {', '.join(catalog.purposes)}")
        if (budget.recipient, budget.purpose) in seen:
            problems.append(f"{at}.budgets: two budgets for {budget.recipient} and {budget.purpose}; one per recipient and purpose")
        seen.add((budget.recipient, budget.purpose))
        if not budget.cost().fits({}, release.population_cap):
            problems.append(f"{at}.budgets: {budget.recipient}'s budget ({budget.text()}) exceeds the population cap "
                            f"({release.population_cap.text()}); lower it")
    names: set[str] = set()
    for query in release.queries:
        problems += _query_problems(agreement, schemas, query, release, f"{at}.queries.{query.name}")
        if query.name in names:
            problems.append(f"{at}.queries: query name {query.name} is used twice")
        names.add(query.name)
    return problems


def _query_problems(agreement: Agreement, schemas: list[EventSchema], query: Query, release: DpRelease, at: str) -> list[str]:
    problems = []
    unit = query.cost.unit
    if unit not in MECHANISMS[query.mechanism]:
        wanted = " or ".join("{" + u.replace("_", ", ") + "}" for u in MECHANISMS[query.mechanism])
        problems.append(f"{at}.cost: the {query.mechanism} mechanism is accounted in {wanted}, not {{{unit.replace('_', ', ')}}}")
    elif unit != release.population_cap.unit:
        problems.append(f"{at}.cost: accounted in {unit}, the budgets in {release.population_cap.unit}; use one accounting")
    elif not query.cost.fits({}, release.population_cap) or any(not query.cost.fits({}, b) for b in release.budgets):
        problems.append(f"{at}.cost: one release ({query.cost.text()}) exceeds a budget or the population cap")
    needs_field = query.statistic in {"sum", "mean", "histogram", "quantile"}
    if needs_field and query.field is None:
        problems.append(f"{at}.field: a {query.statistic} needs the numeric field it is over")
    if not needs_field and query.field is not None:
        problems.append(f"{at}.field: a count is over rows; remove field (or use a histogram)")
    if query.field is not None:
        problems += _numeric(agreement, schemas, query.field, f"{at}.field")
    if query.statistic in {"sum", "mean", "quantile"}:
        if query.bounds is None or query.bounds[0] >= query.bounds[1]:
            problems.append(f"{at}.bounds: a {query.statistic} needs bounds [lower, upper] with lower < upper (values are clipped to them)")
    if query.statistic == "quantile" and unit == "epsilon_delta":
        problems.append(f"{at}.cost: a quantile is accounted in {{epsilon}} (laplace) or {{rho}} (gaussian), not with delta")
    if query.statistic == "quantile" and query.quantile is None:
        problems.append(f"{at}.quantile: say which quantile (e.g. 0.5 for the median)")
    if query.statistic == "histogram" and not query.bins:
        problems.append(f"{at}.bins: a histogram needs its bin edges, e.g. [0, 500, 1000]")
    if query.statistic != "histogram" and query.bins:
        problems.append(f"{at}.bins: only a histogram has bins")
    for group in query.group_by:
        problems += _column(agreement, schemas, group.column, f"{at}.group_by.{group.column}", group.prefix)
        if not group.values.expand():
            problems.append(f"{at}.group_by.{group.column}.values: declare the cells (a list or {{range: [low, high]}}): "
                            "cells read from the data would tell who is there")
    if query.cell_count() > MAX_CELLS:
        problems.append(f"{at}.group_by: {query.cell_count():,} cells; at most {MAX_CELLS:,}")
    return problems


def _column(agreement: Agreement, schemas: list[EventSchema], column: str, at: str, prefix: int | None = None) -> list[str]:
    """A grouping or window column: released by the agreement, identifying nobody."""
    treatment = agreement.fields.get(column)
    if treatment is None or treatment.name == "drop":
        return [f"{at}: {column} is not landed under this agreement; group only by fields it releases"]
    tags = set().union(*(s.fields[column].tags for s in schemas if column in s.fields)) if schemas else set()
    if "PII" in tags or treatment.name in {"pseudonymise", "encrypt", "mask"}:
        return [f"{at}: {column} identifies ({treatment.name}{', PII' if 'PII' in tags else ''}); group by non-identifying columns only"]
    if "QUASI_ID" in tags and treatment.name != "generalise":
        return [f"{at}: {column} is a quasi-identifier kept exact; group by it only where the agreement generalises it"]
    if prefix is not None and treatment.name == "generalise" and isinstance(treatment.params, dict):
        landed = (treatment.params.get("prefix") if isinstance(treatment.params.get("prefix"), int) else None)
        if landed is not None and prefix > landed:
            return [f"{at}.prefix: {column} lands as its first {landed} characters; a prefix of {prefix} is not there"]
    return []


def _numeric(agreement: Agreement, schemas: list[EventSchema], column: str, at: str) -> list[str]:
    treatment = agreement.fields.get(column)
    if treatment is None or treatment.name != "keep":
        return [f"{at}: {column} must be landed as kept (exact) under this agreement to be summed or ranked"]
    for schema in schemas:
        info = schema.fields.get(column)
        kind = info.type if info is not None else None
        kind = next((t for t in kind if t != "null"), None) if isinstance(kind, list) else kind
        if info is None or kind not in NUMERIC or "PII" in info.tags:
            return [f"{at}: {column} is not a numeric, non-PII field of {schema.event_type}"]
    return []
