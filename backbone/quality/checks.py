"""The quality checks compiled from a contract, and the monitor that runs them on the raw stream.

Compiled once per event type (patterns compiled, value sets frozen, one plan entry per field) into
one generated function (`backbone.quality.compiled`) that checks a batch of that event type's
records: it reads each checked field once and touches a counter only on a failure, plus one update
per sketch. The uniqueness markers of a window and the one before are exact and compact
(`backbone.quality.keyset`). Values never leave the monitor: only counts and sketches do
(`backbone.quality.window`).
"""

from __future__ import annotations

import hashlib
import re
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from datetime import date, datetime
from pathlib import Path
from typing import Any

from backbone.quality.compiled import compile_checker
from backbone.quality.contract import ConsistencyRule, QualityContract, Threshold, ValidityRule, finite
from backbone.quality.keyset import EMPTY, RECENT_MAX, KeySet, Open
from backbone.quality.reference import ReferenceSet
from backbone.quality.scorecard import Scorecard, score
from backbone.quality.spill import Spill
from backbone.quality.window import HOUR_MS, WindowState

Test = Callable[[Any], bool]
Marker = int
# Records noted before they are checked together. Measured in the route loop (9,000 demo events x 3,
# CPU µs per event, none / every 64 / a whole 5,000-record batch): 46.2 / 47.3 / 50.9 and 46.9 / 50.4
# / 53.4. Holding a whole batch of decoded records alive sets off the cyclic garbage collector (132
# young and 1-2 full collections per 27,000 events, none otherwise), which costs most in a big worker.
MAX_PENDING = 64
# Subjects remembered per consistency rule's earlier event (by pseudonym, with its month), the oldest
# forgotten first past this bound: ~140 bytes each (tracemalloc, a million 25-character pseudonyms:
# 137 MB; tests/test_quality_marks.py), so at most ~140 MB a rule in a worker.
MAX_MARKS = 1_000_000
Pseudonym = Callable[[str], str]
Current = tuple[int, Callable[..., None], "Open"]  # an event type's open window: (hour, its checks bound to it, its state)
Marks = dict[str, int]  # subject pseudonym -> month index (year * 12 + month - 1), in insertion order


def month_index(value: Any) -> int | None:
    """The month of a date, a datetime or `YYYY-MM...` text as year * 12 + month - 1 (None: none)."""
    if isinstance(value, (date, datetime)):
        return value.year * 12 + value.month - 1
    if isinstance(value, str) and len(value) >= 7 and value[4] == "-" and value[:4].isdigit() and value[5:7].isdigit():
        return int(value[:4]) * 12 + int(value[5:7]) - 1
    return None


def hashed(subject: str) -> str:
    """The pseudonym used when the monitor is given none (tests, benchmarks): a SHA-256 of the value."""
    return hashlib.sha256(subject.encode()).hexdigest()


def rule_label(rule: ValidityRule) -> str:
    """`declared_income:range`: a validity rule's name in counters and tables."""
    return f"{rule.field}:{rule.kind}"


def _test(rule: ValidityRule, references: Mapping[str, ReferenceSet]) -> Test:
    if rule.reference is not None:
        found = references.get(rule.reference)
        if found is None:
            raise ValueError(f"validity rule {rule_label(rule)}: the reference set {rule.reference!r} is not loaded")
        return found.__contains__
    if rule.values is not None:
        return frozenset(rule.values).__contains__
    if rule.pattern is not None:
        # The contract allows patterns on string fields only: the match (or None) is the verdict.
        return re.compile(rule.pattern).fullmatch
    low = float("-inf") if rule.min is None else rule.min
    high = float("inf") if rule.max is None else rule.max
    return lambda value: finite(value) and low <= value <= high


class Checker:
    """One event type's checks; `observe(record, window, seen, previous, now)` adds one event's evidence."""

    def __init__(self, contract: QualityContract, subject_field: str | None = None) -> None:
        quality = contract.quality
        self.event_type = contract.event_type
        required = list(quality.completeness.fields) if quality.completeness else []
        rules = list(quality.validity.rules) if quality.validity else []
        # One entry per field read: (field, [(label, test)]). A field is counted missing whether or not
        # completeness lists it: validity checks the values present, `events - missing` of them.
        names = list(dict.fromkeys([*required, *(rule.field for rule in rules)]))
        self.plan = tuple((name, tuple((rule_label(r), _test(r, contract.references)) for r in rules if r.field == name))
                          for name in names)
        self.labels = {rule_label(rule): rule.field for rule in rules}
        self.key = quality.uniqueness.key if quality.uniqueness else None
        self.business_key = tuple(quality.uniqueness.business_key or ()) if quality.uniqueness else ()
        self.business_label = quality.uniqueness.business_label if quality.uniqueness else None
        self.max_delay_s = quality.timeliness.max_delay_seconds if quality.timeliness else None
        self.subject_field = subject_field
        self.consistency: tuple[ConsistencyRule, ...] = tuple(quality.consistency.rules) if quality.consistency else ()
        self.marks: dict[tuple[str, str], Marks] = {}  # (after, at) -> marks: the monitor's, shared by rules
        self.pseudonym: Pseudonym = hashed
        self.rules = rules
        self.month_index = month_index
        self.compile()

    def rules_of(self, name: str) -> list[ValidityRule]:
        """The validity rules on a field, in the order of its plan's tests."""
        return [rule for rule in self.rules if rule.field == name]

    def compile(self) -> None:
        """Generate the one function doing every check (`backbone.quality.compiled`): again whenever
        the subject field, the pseudonym or the consistency marks change (`QualityMonitor.bind`)."""
        self.check = compile_checker(self)

    def observe(self, record: dict[str, Any], window: WindowState, seen: set[Marker], previous: frozenset[Marker] | set[Marker],
                now: datetime, token: str | None = None, keys: tuple[set[int], frozenset[int] | set[int]] | None = None) -> None:
        """Add one event's evidence to `window`: `seen`/`previous`: the uniqueness keys of this hour and
        the one before; `keys`: the same of the business key's markers (None: not checked)."""
        delays: list[float] = []
        self.check(window, seen, previous, keys, None, delays, [(record, token)], now)
        if delays:
            window.delays.update(delays[0])

    def finish(self, window: WindowState) -> WindowState:
        """Fill in the values each validity rule checked: the window's events less its field's missing."""
        for label, name in self.labels.items():
            checked = window.events - window.missing.get(name, 0)
            if checked > 0:  # counters hold no zeros: merging (Counter addition) drops them
                window.checked[label] = checked
            else:
                window.checked.pop(label, None)
        return window


def _nobody(token: str) -> bool:
    return False


class QualityMonitor:
    """Open windows per (event type, hour) of the events this worker routes; `closed(now)` hands
    over every window of an hour before now's, once, and forgets it.

    A window is the hour in which the processor decided on its events (the hour a recipient would
    act on them), so it closes at a known time whatever the providers' clocks say. The keys seen
    for uniqueness are kept for the current and the previous hour: a copy re-sent across the hour
    boundary is still a duplicate.
    """

    def __init__(self, contracts: Iterable[QualityContract], subject_fields: Mapping[str, str | None] | None = None,
                 markers_dir: Path | None = None) -> None:
        """`markers_dir`: where the uniqueness markers' big blocks go to files (`backbone.quality.spill`;
        the worker's `<data dir>/quality-markers`), None: all held in memory."""
        self.spill = Spill(markers_dir) if markers_dir is not None else None
        self.contracts = {contract.event_type: contract for contract in contracts}
        subject_fields = subject_fields or {}
        self.checkers = {event_type: Checker(contract, subject_fields.get(event_type))
                         for event_type, contract in self.contracts.items()}
        # Consistency rules: the earlier events each rule holds others against, by event type -> [(at,
        # marks)]; the marks are per worker and in memory only, keyed by the subject's pseudonym.
        self.marking: dict[str, list[tuple[str, Marks]]] = {}
        for checker in self.checkers.values():
            for rule in checker.consistency:
                if (rule.after, rule.at) not in checker.marks:
                    found = [m for at, m in self.marking.get(rule.after, ()) if at == rule.at]
                    if not found:
                        found = [{}]
                        self.marking.setdefault(rule.after, []).append((rule.at, found[0]))
                    checker.marks[(rule.after, rule.at)] = found[0]
            checker.compile()  # with its marks
        self.subject_fields = dict(subject_fields)
        self._pseudonym: Pseudonym = hashed
        # Marks this worker made since the last `take_marks` (to publish), and marks read back from
        # `quality.marks` by another thread (applied by the data plane's thread, in `flush`)
        self._made: list[tuple[str, str, str, int | None]] = []  # None: a tombstone
        self._read: deque[tuple[str, str, str, int | None]] = deque()
        # Erased subjects (oversight tokens, from the erasure table's thread): their marks are
        # forgotten and tombstoned at the next flush, and `erased(token)` keeps them from being marked again.
        self._erased: deque[str] = deque()
        self.erased: Callable[[str], bool] = _nobody
        self.windows: dict[tuple[str, int], WindowState] = {}
        self._seen: dict[tuple[str, int], KeySet] = {}
        self._seen_keys: dict[tuple[str, int], KeySet] = {}  # business keys' markers, per hour
        self._current: dict[str, Current] = {}
        self._now: datetime | None = None  # the data plane passes one `now` per batch: its hour is computed once
        # Records noted, not yet checked: each event type's (record, token) in order, all of one `now`
        self._groups: dict[str, list[tuple[dict[str, Any], str | None]]] = {}
        self._count = 0
        self._pending_now: datetime | None = None
        # The scorecard of each event type's last closed window: the gate agreements' bars are judged on
        self.verdicts: dict[str, Scorecard] = {}
        self._hour = 0

    def observe(self, event_type: str, record: dict[str, Any], now: datetime, token: str | None = None) -> None:
        """Note one raw record; it is checked with the next few (`MAX_PENDING`) and at the end of its
        batch (`flush`), not in between decoding and encoding others, where the checks ran cold in
        the cache (`python -m bench.processor`). `token`: the subject's pseudonym if the caller has
        it (the router computes it for the audit record anyway), else the monitor computes it when
        a consistency rule needs it."""
        if now is not self._pending_now:  # the records of another `now` first (the data plane's batch)
            if self._count:
                self.flush()
            self._pending_now = now
        if event_type in self.marking:  # an earlier event of a consistency rule: the records before it without its mark
            self.flush()
            self._mark(event_type, record, token)
        group = self._groups.get(event_type)
        if group is None:
            if event_type not in self.checkers:
                return
            group = self._groups[event_type] = []
        group.append((record, token))
        self._count += 1
        if self._count >= MAX_PENDING:
            self.flush()

    def flush(self, settle: bool = False) -> None:
        """Check every record noted since the last flush, each event type's in order and together
        (the data plane's thread only); `settle`: decide every deferred uniqueness now
        (`Open.settle`), as before a window is handed over."""
        while self._read:
            self._remember(*self._read.popleft())
        while self._erased:
            self._forget(self._erased.popleft())
        current_of = self._current
        if self._count:
            groups, self._groups, self._count = self._groups, {}, 0
            self._check(groups, self._pending_now)  # type: ignore[arg-type]
        for _, _, state in list(current_of.values()):
            state.settle(force=settle)
            if len(state.ids.recent) >= RECENT_MAX or len(state.keys.recent) >= RECENT_MAX:
                state.ids.compact()
                state.keys.compact()
                self._open(state.window.event_type, state.window.hour)  # now deferring its decisions

    def bind(self, subject_fields: Mapping[str, str | None], pseudonym: Pseudonym) -> None:
        """Each event type's subject field and how a subject is named in the consistency marks (the
        router gives the catalog's fields and its oversight pseudonym: no national id is kept)."""
        self.subject_fields = dict(subject_fields)
        self._pseudonym = pseudonym
        for event_type, checker in self.checkers.items():
            checker.subject_field, checker.pseudonym = self.subject_fields.get(event_type), pseudonym
            checker.compile()
        for _, _, state in self._current.values():  # bound to the checks compiled before: settled, then let go
            state.settle(force=True)
        self._current.clear()

    def _mark(self, event_type: str, record: dict[str, Any], token: str | None) -> None:
        subject_field = self.subject_fields.get(event_type)
        for at, marks in self.marking[event_type]:
            subject = record.get(subject_field) if subject_field else None
            month = month_index(record.get(at))
            if not subject or month is None:
                continue
            token = token or self._pseudonym(subject)
            if self.erased(token):  # an erased subject is not marked again (nor published)
                continue
            if marks.pop(token, None) != month:  # re-inserted: the newest is forgotten last
                self._made.append((event_type, at, token, month))
            marks[token] = month
            if len(marks) > MAX_MARKS:
                del marks[next(iter(marks))]

    def take_marks(self) -> list[tuple[str, str, str, int | None]]:
        """The marks made since the last call, (after, at, pseudonym, month), to publish (`quality.marks`)."""
        self.flush()
        made, self._made = self._made, []
        return made

    def forget_subjects(self, tokens: Iterable[str]) -> None:
        """Erased subjects (any thread): each one's marks are dropped and, at the next `take_marks`,
        tombstoned on `quality.marks` for every rule (another worker may hold the mark), before the
        next records are checked."""
        self._erased.extend(tokens)

    def _forget(self, token: str) -> None:
        for after, pairs in self.marking.items():
            for at, marks in pairs:
                marks.pop(token, None)
                self._made.append((after, at, token, None))

    def remember(self, after: str, at: str, token: str, month: int | None) -> None:
        """A mark read back from `quality.marks` (None: forget it); any thread. It applies before the
        next records are checked."""
        self._read.append((after, at, token, month))

    def _remember(self, after: str, at: str, token: str, month: int | None) -> None:
        for mark_at, marks in self.marking.get(after, ()):
            if mark_at != at:
                continue
            if month is None or self.erased(token):
                marks.pop(token, None)
            elif marks.get(token) != month:
                marks.pop(token, None)
                marks[token] = month
                if len(marks) > MAX_MARKS:
                    del marks[next(iter(marks))]

    def _check(self, groups: dict[str, list[tuple[dict[str, Any], str | None]]], now: datetime) -> None:
        if now is not self._now:
            self._now, self._hour = now, int(now.timestamp() * 1000) // HOUR_MS
        for event_type, batch in groups.items():
            current = self._current.get(event_type)
            if current is None or current[0] != self._hour:
                current = self._open(event_type, self._hour)
            current[1](batch, now)

    def _open(self, event_type: str, hour: int) -> Current:
        before = self._current.get(event_type)
        if before is not None:  # its records' uniqueness first: they came before
            before[2].settle(force=True)
        window = self.windows.get((event_type, hour))
        if window is None:
            window = self.windows[(event_type, hour)] = WindowState(event_type, hour)
        state = Open(self.checkers[event_type], window,
                     self._seen.setdefault((event_type, hour), KeySet(self.spill)), self._seen.get((event_type, hour - 1), EMPTY),
                     self._seen_keys.setdefault((event_type, hour), KeySet(self.spill)), self._seen_keys.get((event_type, hour - 1), EMPTY))
        current = self._current[event_type] = (hour, state.bound(), state)
        return current

    def breached(self, event_type: str, bars: Mapping[str, Threshold]) -> tuple[str, ...]:
        """The dimensions whose score in the event type's last closed window is below its bar (none
        before a window closed, or where a dimension had no checks: no evidence is no breach)."""
        verdict = self.verdicts.get(event_type)
        if verdict is None:
            return ()
        failed = []
        for dimension, bar in bars.items():
            found = verdict.dimensions.get(dimension)
            if found is not None and found.score is not None and not bar.met(found.score):
                failed.append(dimension)
        return tuple(failed)

    def scorecards(self) -> list[Scorecard]:
        """The open windows' scorecards as of the last batch (for metrics at scrape time, from
        another thread), without a volume baseline; nothing is handed over."""
        return [score(self.checkers[w.event_type].finish(w), self.contracts[w.event_type]) for w in list(self.windows.values())]

    def due(self, now: datetime) -> bool:
        """Whether a window of an hour before `now`'s waits to be handed over."""
        self.flush()
        hour = int(now.timestamp() * 1000) // HOUR_MS
        return any(key[1] < hour for key in list(self.windows))

    def closed(self, now: datetime, everything: bool = False) -> list[WindowState]:
        """Every window of an hour before `now`'s (`everything`: the open ones too, as a worker stops
        cleanly), removed from the monitor (each handed over once; another worker's or a restarted
        worker's window of the same hour merges with it)."""
        self.flush(settle=True)
        hour = int(now.timestamp() * 1000) // HOUR_MS + (1 if everything else 0)
        done = sorted((key for key in self.windows if key[1] < hour), key=lambda k: (k[1], k[0]))
        out = [self.checkers[key[0]].finish(self.windows.pop(key)) for key in done]
        for window in out:  # in hour order: the last is the newest
            self.verdicts[window.event_type] = score(window, self.contracts[window.event_type])
        for seen in (self._seen, self._seen_keys):
            for key in [k for k in seen if k[1] < hour - 1]:
                seen.pop(key).drop()  # its files removed
        for event_type in [t for t, current in self._current.items() if current[0] < hour]:
            del self._current[event_type]
        return out
