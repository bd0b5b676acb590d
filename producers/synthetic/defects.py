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
- `unknown`: a benefit claim's `postcode` (one not already missing) is a well-formed postcode that
  is not a known one (`schemas/reference/postcodes.v1.txt`, which the generator draws from): the
  validity rule `reference: postcodes` fails it
- `double`: a benefit claim is sent again as another event (a new event id, the same claimant,
  benefit and month): a duplicate of its business key, not of its event id. `key_duplicate` counts
  every record repeating the business key of another record of the same or the previous hour
  (`BUSINESS_KEYS`, the contracts' `uniqueness.business_key`), the doubles and any the stream has
- `dropped`: in one hour (`drop_hour`, hours since the epoch of the clock), 40% of each event type's
  records are not sent. The volume dimension holds an hour against the same hour of earlier weeks:
  plant those with `plant` run again, the same seed, no `drop_hour`, at a clock weeks earlier
  (`earlier_weeks`); each defect counter runs as it would have, so the hour lacks exactly the
  dropped records.
- `after_death`: not planted here but counted: the generator's own `claim_after_death` fraud cases
  claim a benefit for a month after the claimant's registered death; each such claim sent after the
  death is counted, the cross-provider consistency rule of `welfare.benefit_claimed`.
"""

from __future__ import annotations

import copy
import math
import uuid
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta

from producers.synthetic.identities import unknown_postcode

MISSING_EVENT, MISSING_FIELD = "welfare.benefit_claimed", "postcode"
INVALID_EVENT, INVALID_FIELD = "tax.income_declared", "declared_income"
UNKNOWN_EVENT, UNKNOWN_FIELD = "welfare.benefit_claimed", "postcode"
DOUBLE_EVENT = "welfare.benefit_claimed"
# Each event type's business key, as its quality contract's `uniqueness.business_key` names it
BUSINESS_KEYS = {"welfare.benefit_claimed": ("national_id", "benefit_type", "period"),
                 "tax.income_declared": ("national_id", "employer_id", "period")}
LATE_BY = timedelta(days=2)  # later than every contract's timeliness bound (registry: a day)
DEATH_EVENT, CLAIM_EVENT = "registry.death_registered", "welfare.benefit_claimed"
HOUR = timedelta(hours=1)
CONSENT_EVENT = "consent.changed"  # consent changes pass untouched: they are no provider's raw stream


@dataclass(frozen=True)
class Defects:
    """Rates of each planted defect (0 to 1)."""

    missing: float = 0.03
    invalid: float = 0.01
    duplicate: float = 0.005
    late: float = 0.02
    unknown: float = 0.01
    double: float = 0.005
    drop: float = 0.4  # of each event type's records in the drop hour, if there is one

    def __post_init__(self) -> None:
        for name in ("missing", "invalid", "duplicate", "late", "unknown", "double", "drop"):
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


def earlier_weeks(moment: datetime, weeks: int) -> list[datetime]:
    """The same moment in each of `weeks` earlier weeks, oldest first: the clocks of the history the
    volume dimension compares `moment`'s hour with."""
    return [moment - timedelta(weeks=k) for k in range(weeks, 0, -1)]


def _month(value: object) -> int | None:
    if isinstance(value, date):
        return value.year * 12 + value.month - 1
    if isinstance(value, int):  # a date as days since the epoch (the Avro form)
        return _month(date(1970, 1, 1) + timedelta(days=value))
    if isinstance(value, str) and len(value) >= 7:
        return int(value[:4]) * 12 + int(value[5:7]) - 1
    return None


def plant(stream: Iterable[tuple[str, dict]], defects: Defects, clock: Callable[[], datetime],
          planted: Planted | None = None, drop_hour: int | None = None) -> Iterator[tuple[str, dict]]:
    """The stream with defects planted (records are copied, not changed); counts go to `planted`."""
    planted = planted if planted is not None else Planted()
    missing, invalid = _Every(defects.missing, 0.13), _Every(defects.invalid, 0.89)
    duplicate, late = _Every(defects.duplicate, 0.61), _Every(defects.late, 0.37)
    unknown, double = _Every(defects.unknown, 0.53), _Every(defects.double, 0.71)
    drops: dict[str, _Every] = {}
    deaths: dict[str, int] = {}  # national id -> month of death, of the deaths sent
    hours: dict[tuple[str, int], tuple[set[str], set[tuple]]] = {}  # (event type, hour) -> event ids, business keys sent
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
        if event_type == UNKNOWN_EVENT and unknown() and "missing" not in kinds and record.get(UNKNOWN_FIELD):
            record[UNKNOWN_FIELD] = unknown_postcode(record[UNKNOWN_FIELD])
            kinds.append("unknown")
        copies = 2 if duplicate() else 1
        outgoing = [record] * copies
        if event_type == DOUBLE_EVENT and double():  # the same claim again, as another event
            outgoing.append({**record, "event_id": str(uuid.uuid5(uuid.NAMESPACE_URL, f"double:{record['event_id']}"))})
        # Dropped last, so every other counter runs as in the same stream without the drop.
        dropping = drop_hour is not None and int(now.timestamp()) // 3600 == drop_hour
        drop = drops.setdefault(event_type, _Every(defects.drop, 0.29)) if dropping else None
        kept = [drop is None or not drop() for _ in outgoing]
        if not all(kept):
            planted.defects[(event_type, "dropped")] += kept.count(False)
        if kept[:copies].count(True) == 2:
            planted.defects[(event_type, "duplicate")] += 1
        for out, keep in zip(outgoing, kept, strict=True):  # a re-sent copy carries its original's defects too
            if not keep:
                continue
            planted.sent[event_type] += 1
            planted.defects.update((event_type, kind) for kind in kinds)
            _key_duplicate(event_type, out, int(now.timestamp()) // 3600, hours, planted)
            _after_death(event_type, out, deaths, planted)
            yield event_type, out


def _key_duplicate(event_type: str, record: dict, hour: int, hours: dict[tuple[str, int], tuple[set[str], set[tuple]]],
                   planted: Planted) -> None:
    """Count a record repeating the business key of another record (not a copy of itself) sent in
    the same or the previous hour, as the quality monitor does."""
    names = BUSINESS_KEYS.get(event_type)
    if names is None:
        return
    key = tuple(record.get(name) for name in names)
    ids, keys = hours.setdefault((event_type, hour), (set(), set()))
    before = hours.get((event_type, hour - 1), (set(), set()))
    event_id = str(record["event_id"])
    if event_id in ids or event_id in before[0]:
        return  # a re-sent copy: the event id's duplicate
    ids.add(event_id)
    if any(v is None or v == "" for v in key):
        return
    if key in keys or key in before[1]:
        planted.defects[(event_type, "key_duplicate")] += 1
    else:
        keys.add(key)
    for old in [k for k in hours if k[0] == event_type and k[1] < hour - 1]:
        del hours[old]


def _after_death(event_type: str, record: dict, deaths: dict[str, int], planted: Planted) -> None:
    subject = record.get("national_id")
    if event_type == DEATH_EVENT and subject and _month(record.get("date_of_death")) is not None:
        deaths[subject] = _month(record["date_of_death"])  # type: ignore[assignment]
    elif event_type == CLAIM_EVENT and subject in deaths:
        month = _month(record.get("period"))
        if month is not None and month > deaths[subject]:
            planted.defects[(event_type, "after_death")] += 1
