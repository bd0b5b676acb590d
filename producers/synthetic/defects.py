"""Data-quality defects planted at known rates (issue 32), so the quality scorecards can be checked
against what was planted: behind an option (`backbone produce --defects`), never by default.

Each kind is planted in `floor(n * rate + phase)` of the first `n` events it applies to, spread
evenly (no sampling noise; the phase differs by kind): a scorecard must recover the counts exactly
and the rates within a tenth of a point. A re-sent copy carries its original's defects.

- `missing`: `welfare.benefit_claimed` loses its `postcode` (empty)
- `invalid`: `tax.income_declared` declares a negative income
- `duplicate`: an event of any type is sent twice (the same event id)
- `late`: an event's `occurred_at` is two days before it is sent (every other event's is its send
  time: with defects on, the stream is "live", so timeliness means something)
"""

from __future__ import annotations

import copy
import math
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta

MISSING_EVENT, MISSING_FIELD = "welfare.benefit_claimed", "postcode"
INVALID_EVENT, INVALID_FIELD = "tax.income_declared", "declared_income"
LATE_BY = timedelta(days=2)  # later than every contract's timeliness bound (registry: a day)
CONSENT_EVENT = "consent.changed"  # consent changes pass untouched: they are no provider's raw stream


@dataclass(frozen=True)
class Defects:
    """Rates of each planted defect (0 to 1)."""

    missing: float = 0.03
    invalid: float = 0.01
    duplicate: float = 0.005
    late: float = 0.02

    def __post_init__(self) -> None:
        for name in ("missing", "invalid", "duplicate", "late"):
            if not 0 <= getattr(self, name) <= 1:
                raise ValueError(f"defect rate {name}={getattr(self, name)} is not between 0 and 1")


@dataclass
class Planted:
    """What was planted, by (event type, kind), and how many events of each type were sent."""

    defects: Counter[tuple[str, str]] = field(default_factory=Counter)
    sent: Counter[str] = field(default_factory=Counter)


class _Every:
    """floor(n * rate + phase) hits in the first n calls, evenly spread; each kind has its own phase,
    so one event rarely carries two defects (a duplicated late event would count late twice)."""

    def __init__(self, rate: float, phase: float) -> None:
        self.rate, self.phase, self.n = rate, phase, 0

    def __call__(self) -> bool:
        self.n += 1
        return math.floor(self.n * self.rate + self.phase) > math.floor((self.n - 1) * self.rate + self.phase)


def plant(stream: Iterable[tuple[str, dict]], defects: Defects, clock: Callable[[], datetime],
          planted: Planted | None = None) -> Iterator[tuple[str, dict]]:
    """The stream with defects planted (records are copied, not changed); counts go to `planted`."""
    planted = planted if planted is not None else Planted()
    missing, invalid = _Every(defects.missing, 0.13), _Every(defects.invalid, 0.89)
    duplicate, late = _Every(defects.duplicate, 0.61), _Every(defects.late, 0.37)
    for event_type, record in stream:
        if event_type == CONSENT_EVENT:
            yield event_type, record
            continue
        record = copy.deepcopy(record)
        now = clock()
        record["occurred_at"] = int(now.timestamp() * 1000)
        kinds = []
        if late():
            record["occurred_at"] = int((now - LATE_BY).timestamp() * 1000)
            kinds.append("late")
        if event_type == MISSING_EVENT and missing():
            record[MISSING_FIELD] = ""
            kinds.append("missing")
        if event_type == INVALID_EVENT and invalid():
            record[INVALID_FIELD] = -abs(record[INVALID_FIELD]) - 1.0
            kinds.append("invalid")
        copies = 2 if duplicate() else 1
        if copies == 2:
            planted.defects[(event_type, "duplicate")] += 1
        for _ in range(copies):  # a re-sent copy carries its original's defects too
            planted.sent[event_type] += 1
            planted.defects.update((event_type, kind) for kind in kinds)
            yield event_type, record
