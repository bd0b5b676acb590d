"""What a change of an agreement's `dp_release` widens, for `backbone.policy.diff`.

Widening: a release declared where none was, a new query, a larger budget or population cap (any
of epsilon, delta, rho), a looser contribution bound (more groups or rows per person, wider
clipping bounds), a finer or other grouping, a new invariant, another privacy unit or windows, a
new recipient's budget. A query whose statistic, field or mechanism changed cannot be ordered and
counts as widening (fail closed). Each change is reported once per recipient that has a budget.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from backbone.policy.dp_release import Cost, DpRelease, Query

if TYPE_CHECKING:
    from backbone.policy.agreements import Agreement
    from backbone.policy.diff import Change

KIND = "dp_release"


def dp_changes(old: Agreement | None, new: Agreement | None) -> list[Change]:
    """Every change of the DP release from `old` to `new` (None: no agreement), per budget recipient."""
    from backbone.policy.diff import NARROWING, WIDENING, Change

    before = old.dp_release if old is not None else None
    after = new.dp_release if new is not None else None
    if before is None and after is None:
        return []
    event_type = (new or old).event_types[0]  # type: ignore[union-attr]
    rows: list[Change] = []

    def row(recipients: set[str], field: str | None, was: str | None, now: str | None, wide: bool, reason: str) -> None:
        for recipient in sorted(recipients):
            rows.append(Change(recipient, event_type, KIND, field, was, now, WIDENING if wide else NARROWING, reason))

    if before is None or after is None:
        release = after or before
        assert release is not None
        names = ", ".join(q.name for q in release.queries)
        row(_recipients(release), None, None if before is None else names, names if before is None else None, before is None,
            f"differentially private release {'declared' if before is None else 'withdrawn'}: queries {names}")
        return rows
    everyone = _recipients(before) | _recipients(after)
    if before.privacy_unit != after.privacy_unit or before.windows != after.windows:
        row(everyone, "privacy_unit", _unit(before), _unit(after), True,
            "privacy unit or windows changed: budgets are counted per another unit; counted as widening")
    _cost(row, everyone, "population_cap", before.population_cap, after.population_cap, "population cap")
    old_budgets = {(b.recipient, b.purpose): b for b in before.budgets}
    for key, budget in {(b.recipient, b.purpose): b for b in after.budgets}.items():
        if key not in old_budgets:
            row({key[0]}, f"budget:{key[1]}", None, budget.text(), True, f"new budget: {key[0]} may spend {budget.text()} for {key[1]}")
        else:
            _cost(row, {key[0]}, f"budget:{key[1]}", old_budgets[key].cost(), budget.cost(), f"budget for {key[1]}")
    for key, budget in old_budgets.items():
        if key not in {(b.recipient, b.purpose) for b in after.budgets}:
            row({key[0]}, f"budget:{key[1]}", budget.text(), None, False, f"budget for {key[1]} withdrawn")
    for name in sorted(set(after.invariants) - set(before.invariants)):
        row(everyone, "invariants", None, name, True, f"new invariant {name}: released exactly, outside the budget")
    for name in sorted(set(before.invariants) - set(after.invariants)):
        row(everyone, "invariants", name, None, False, f"invariant {name} no longer released exactly")
    old_queries = {q.name: q for q in before.queries}
    for query in after.queries:
        if query.name not in old_queries:
            row(everyone, f"query:{query.name}", None, query.statistic, True, f"new query {query.name} ({query.statistic})")
        elif query != old_queries[query.name]:
            wide, reason = _query(old_queries[query.name], query)
            row(everyone, f"query:{query.name}", None, None, wide, f"query {query.name}: {reason}")
    for name in sorted(set(old_queries) - {q.name for q in after.queries}):
        row(everyone, f"query:{name}", old_queries[name].statistic, None, False, f"query {name} removed")
    return rows


def _recipients(release: DpRelease) -> set[str]:
    return {b.recipient for b in release.budgets}


def _unit(release: DpRelease) -> str:
    per = f" per {release.privacy_unit.per}" if release.privacy_unit.per else ""
    return f"{release.privacy_unit.pseudonym}{per}"


def _cost(row, recipients: set[str], field: str, old: Cost, new: Cost, what: str) -> None:  # noqa: ANN001 - the row callback
    if old == new:
        return
    if old.unit != new.unit:
        row(recipients, field, old.text(), new.text(), True, f"{what} in another accounting; counted as widening")
        return
    larger = [k for k, v in new.parts().items() if v > old.parts()[k]]
    row(recipients, field, old.text(), new.text(), bool(larger),
        f"{what} raised ({', '.join(larger)}): more privacy loss allowed" if larger else f"{what} lowered")


def _query(old: Query, new: Query) -> tuple[bool, str]:
    """(widening?, why) for two texts of one query."""
    if (old.statistic, old.field, old.mechanism, old.quantile) != (new.statistic, new.field, new.mechanism, new.quantile):
        return True, "statistic, field or mechanism changed: not comparable; counted as widening"
    reasons = []
    if new.cost != old.cost:
        if new.cost.unit != old.cost.unit or any(v > old.cost.parts()[k] for k, v in new.cost.parts().items()):
            reasons.append(f"cost per release raised to {new.cost.text()}")
    if (new.contributions.max_groups > old.contributions.max_groups
            or new.contributions.max_rows_per_group > old.contributions.max_rows_per_group):
        reasons.append("looser contribution bound: a person may weigh more")
    if new.bounds != old.bounds and (old.bounds is None or new.bounds is None
                                     or new.bounds[0] < old.bounds[0] or new.bounds[1] > old.bounds[1]):
        reasons.append("looser clipping bounds")
    if new.group_by != old.group_by or new.bins != old.bins or new.candidates != old.candidates:
        reasons.append("other cells (grouping, bins or candidates changed)")
    if reasons:
        return True, "; ".join(reasons)
    return False, "tighter: lower cost or tighter bounds"
