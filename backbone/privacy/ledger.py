"""The privacy-budget ledger's arithmetic: what a release may spend, the record of its spend or
refusal, and the recomputation `backbone audit verify` runs over the sealed records.

A ledger record is an operator action `dp_release` in the `operations` chain (outcome `spent` or
`refused`) whose details carry: agreement, window, recipient, purpose, query and its hash,
mechanism, scale, sensitivity, the cost, the budget's and the population cap's limits, and the
cumulative spend of both after it. Amounts are exact fractions written as text ("3/2"), so sums
do not depend on the order records are read in and the verifier reproduces them to the bit.

A budget is (agreement, window, recipient, purpose); the population cap is (agreement, window):
every recipient's spends count against it. With no windows declared the window is `all`: the
budget never renews.
"""

from __future__ import annotations

import hashlib
import json
from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Any

from backbone.policy.dp_release import Cost, Query

ACTION = "dp_release"
SPENT, REFUSED = "spent", "refused"
ALL_TIME = "all"
# The kinds `audit verify` reports for the ledger.
LEDGER_MISMATCH = "ledger_mismatch"
OVERSPENT = "overspent"


def budget_key(agreement: str, window: str, recipient: str, purpose: str) -> str:
    return f"{agreement}/{window}/{recipient}:{purpose}"


def cap_key(agreement: str, window: str) -> str:
    return f"{agreement}/{window}/population"


def amounts(cost: Cost | Mapping[str, float]) -> dict[str, Fraction]:
    """Exact amounts of a cost: each float by its shortest decimal text (1.0 -> 1, 0.1 -> 1/10)."""
    parts = cost.parts() if isinstance(cost, Cost) else cost
    return {k: Fraction(repr(float(v))) for k, v in parts.items()}


def text(values: Mapping[str, Fraction]) -> str:
    return json.dumps({k: str(v) for k, v in sorted(values.items())}, separators=(",", ":"))


def parse(value: str | None) -> dict[str, Fraction]:
    return {k: Fraction(v) for k, v in json.loads(value or "{}").items()}


def add(spent: Mapping[str, Fraction], cost: Mapping[str, Fraction]) -> dict[str, Fraction]:
    return {k: spent.get(k, Fraction(0)) + cost.get(k, Fraction(0)) for k in sorted({*spent, *cost})}


def within(spent: Mapping[str, Fraction], limit: Mapping[str, Fraction]) -> bool:
    return all(v <= limit.get(k, Fraction(0)) for k, v in spent.items())


def query_hash(agreement_key: str, query: Query, window: str) -> str:
    """SHA-256 of the query as declared (canonical JSON), the agreement version and the window."""
    body = json.dumps({"agreement": agreement_key, "window": window, "query": query.model_dump(mode="json")},
                      sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(body.encode()).hexdigest()


@dataclass
class Tally:
    """Cumulative spend per budget and cap key, from the ledger records read so far."""

    spent: dict[str, dict[str, Fraction]] = field(default_factory=lambda: defaultdict(dict))

    def apply(self, details: Mapping[str, str], outcome: str) -> None:
        if outcome != SPENT:
            return
        cost = parse(details.get("cost"))
        for key in (details["budget_key"], details["cap_key"]):
            self.spent[key] = add(self.spent[key], cost)

    def remaining(self, key: str, limit: Mapping[str, Fraction]) -> dict[str, Fraction]:
        used = self.spent.get(key, {})
        return {k: v - used.get(k, Fraction(0)) for k, v in limit.items()}


@dataclass(slots=True, frozen=True)
class Attempt:
    """One release asked for, before it is decided."""

    agreement: str  # id@version
    agreement_id: str
    window: str
    recipient: str
    purpose: str
    query: str
    query_hash: str
    mechanism: str
    cost: dict[str, Fraction]
    budget: dict[str, Fraction]
    cap: dict[str, Fraction]
    release_id: str
    parameters: str = "{}"  # JSON: sensitivity, contribution bounds, clipping bounds

    @property
    def budget_key(self) -> str:
        return budget_key(self.agreement_id, self.window, self.recipient, self.purpose)

    @property
    def cap_key(self) -> str:
        return cap_key(self.agreement_id, self.window)


def decide(tally: Tally, attempt: Attempt) -> tuple[str, str | None, dict[str, str]]:
    """(outcome, refusal reason or None, the ledger record's details) for `attempt` given `tally`."""
    budget_after = add(tally.spent.get(attempt.budget_key, {}), attempt.cost)
    cap_after = add(tally.spent.get(attempt.cap_key, {}), attempt.cost)
    reason = None
    if not within(budget_after, attempt.budget):
        reason = f"the budget of {attempt.recipient} for {attempt.purpose} in window {attempt.window} would be exceeded"
    elif not within(cap_after, attempt.cap):
        reason = f"the population cap of {attempt.agreement_id} in window {attempt.window} would be exceeded"
    outcome = SPENT if reason is None else REFUSED
    if outcome == REFUSED:
        budget_after, cap_after = dict(tally.spent.get(attempt.budget_key, {})), dict(tally.spent.get(attempt.cap_key, {}))
    details = {
        "ledger": "1", "release_id": attempt.release_id, "agreement": attempt.agreement, "window": attempt.window,
        "recipient": attempt.recipient, "purpose": attempt.purpose, "query": attempt.query, "query_hash": attempt.query_hash,
        "mechanism": attempt.mechanism, "parameters": attempt.parameters, "cost": text(attempt.cost), "budget": text(attempt.budget), "cap": text(attempt.cap),
        "budget_key": attempt.budget_key, "cap_key": attempt.cap_key,
        "budget_spent": text(budget_after), "cap_spent": text(cap_after),
    }
    return outcome, reason, details


@dataclass(slots=True, frozen=True)
class Problem:
    kind: str
    sequence: int
    detail: str


def recompute(actions: Mapping[int, Mapping[str, Any]]) -> tuple[Tally, list[Problem]]:
    """Every ledger record of the `operations` chain (sequence -> action record), in chain order:
    each cumulative spend recomputed from the costs before it; a record whose stated cumulative
    differs, or a spend past its budget or cap, is named by its checkpoint sequence."""
    tally = Tally()
    problems: list[Problem] = []
    for sequence, record in sorted(actions.items()):
        if record.get("action") != ACTION:
            continue
        details = dict(record.get("details") or {})
        name = f"ledger record {record.get('action_id')} ({details.get('agreement')} {details.get('query')} for " \
               f"{details.get('recipient')}, window {details.get('window')})"
        try:
            cost = parse(details.get("cost"))
            before = {key: dict(tally.spent.get(details[key], {})) for key in ("budget_key", "cap_key")}
            outcome = record.get("outcome")
            for key, spent_field, limit_field in (("budget_key", "budget_spent", "budget"), ("cap_key", "cap_spent", "cap")):
                expected = add(before[key], cost) if outcome == SPENT else before[key]
                stated = parse(details.get(spent_field))
                if {k: v for k, v in stated.items() if v} != {k: v for k, v in expected.items() if v}:
                    problems.append(Problem(LEDGER_MISMATCH, sequence, f"{name}: states {spent_field} {text(stated)}, the records "
                                                                       f"before it add up to {text(expected)}"))
                if outcome == SPENT and not within(expected, parse(details.get(limit_field))):
                    problems.append(Problem(OVERSPENT, sequence, f"{name}: spends past its {limit_field} "
                                                                 f"({text(expected)} > {details.get(limit_field)})"))
        except (KeyError, ValueError, ZeroDivisionError) as exc:
            problems.append(Problem(LEDGER_MISMATCH, sequence, f"{name}: not a readable ledger record ({type(exc).__name__})"))
            continue
        tally.apply(details, str(record.get("outcome")))
    return tally, problems


def ledger_records(actions: Iterable[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    return [a for a in actions if a.get("action") == ACTION]
