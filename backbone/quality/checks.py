"""The quality checks compiled from a contract, and the monitor that runs them on the raw stream.

Compiled once per event type (patterns compiled, value sets frozen); per event, `observe` does a
few dict look-ups, one sketch update per sketch and no allocation but the counters' keys. Values
never leave the monitor: only counts and sketches do (`backbone.quality.window`).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from datetime import datetime
from typing import Any

from backbone.quality.contract import QualityContract, ValidityRule, finite
from backbone.quality.window import HOUR_MS, WindowState

Test = Callable[[Any], bool]


def rule_label(rule: ValidityRule) -> str:
    """`declared_income:range`: a validity rule's name in counters and tables."""
    return f"{rule.field}:{rule.kind}"


def _test(rule: ValidityRule) -> Test:
    if rule.values is not None:
        allowed = frozenset(rule.values)
        return allowed.__contains__
    if rule.pattern is not None:
        match = re.compile(rule.pattern).fullmatch
        return lambda value: isinstance(value, str) and match(value) is not None
    low = float("-inf") if rule.min is None else rule.min
    high = float("inf") if rule.max is None else rule.max
    return lambda value: finite(value) and low <= value <= high


class Checker:
    """One event type's checks; `observe(record, window, seen, now)` adds one event's evidence."""

    def __init__(self, contract: QualityContract) -> None:
        quality = contract.quality
        self.event_type = contract.event_type
        self.fields = tuple(quality.completeness.fields) if quality.completeness else ()
        self.validity = tuple((rule_label(rule), rule.field, _test(rule)) for rule in quality.validity.rules) \
            if quality.validity else ()
        self.key = quality.uniqueness.key if quality.uniqueness else None
        self.max_delay_s = quality.timeliness.max_delay_seconds if quality.timeliness else None

    def observe(self, record: dict[str, Any], window: WindowState, seen: set[int], now: datetime) -> None:
        window.events += 1
        if self.fields:
            missing = window.missing
            for name in self.fields:
                value = record.get(name)
                if value is None or value == "" or value != value:  # NaN is not equal to itself
                    missing[name] += 1
        if self.validity:
            checked, invalid = window.checked, window.invalid
            for label, name, test in self.validity:
                value = record.get(name)
                if value is None or value == "" or value != value:
                    continue  # a missing value is completeness's, not validity's
                checked[label] += 1
                if not test(value):
                    invalid[label] += 1
        if self.key is not None:
            key = record.get(self.key)
            if key is not None:
                marker = hash(key)  # worker-local: the set is never serialised
                if marker in seen:
                    window.duplicates += 1
                else:
                    seen.add(marker)
                window.distinct.update(str(key))
        if self.max_delay_s is not None:
            occurred = record.get("occurred_at")
            if isinstance(occurred, datetime):
                delay = (now - occurred).total_seconds()
                window.delays.update(delay)
                if delay > self.max_delay_s:
                    window.late += 1


class QualityMonitor:
    """Open windows per (event type, hour) of the events this worker routes; `closed(now)` hands
    over every window of an hour before now's, once, and forgets it.

    A window is the hour in which the processor decided on its events (the hour a recipient would
    act on them), so it closes at a known time whatever the providers' clocks say. The keys seen
    for uniqueness are kept for the current and the previous hour: a copy re-sent across the hour
    boundary is still a duplicate.
    """

    def __init__(self, contracts: Iterable[QualityContract]) -> None:
        self.checkers = {contract.event_type: Checker(contract) for contract in contracts}
        self.windows: dict[tuple[str, int], WindowState] = {}
        self._seen: dict[tuple[str, int], set[int]] = {}
        self._current: dict[str, tuple[int, WindowState, set[int]]] = {}

    def observe(self, event_type: str, record: dict[str, Any], now: datetime) -> None:
        checker = self.checkers.get(event_type)
        if checker is None:
            return
        hour = int(now.timestamp() * 1000) // HOUR_MS
        current = self._current.get(event_type)
        if current is None or current[0] != hour:
            current = self._open(event_type, hour)
        checker.observe(record, current[1], current[2], now)

    def _open(self, event_type: str, hour: int) -> tuple[int, WindowState, set[int]]:
        window = self.windows.get((event_type, hour))
        if window is None:
            window = self.windows[(event_type, hour)] = WindowState(event_type, hour)
        seen = self._seen.get((event_type, hour))
        if seen is None:
            # The previous hour's keys stay visible: a copy re-sent across the boundary is a duplicate;
            # the hour before that is cut off, so the chain never grows.
            previous = self._seen.get((event_type, hour - 1), _Carry(frozenset()))
            previous.previous = frozenset()
            seen = self._seen[(event_type, hour)] = _Carry(previous)
        current = self._current[event_type] = (hour, window, seen)
        return current

    def closed(self, now: datetime) -> list[WindowState]:
        """Every window of an hour before `now`'s, removed from the monitor (each handed over once)."""
        hour = int(now.timestamp() * 1000) // HOUR_MS
        done = [key for key in self.windows if key[1] < hour]
        out = [self.windows.pop(key) for key in sorted(done, key=lambda k: (k[1], k[0]))]
        for key in [k for k in self._seen if k[1] < hour - 1]:
            del self._seen[key]
        for event_type, (open_hour, _, _) in list(self._current.items()):
            if open_hour < hour:
                del self._current[event_type]
        return out


class _Carry(set):
    """This hour's keys, falling back on the previous hour's for membership (not copied)."""

    __slots__ = ("previous",)

    def __init__(self, previous: set[int] | frozenset[int]) -> None:
        super().__init__()
        self.previous = previous

    def __contains__(self, marker: object) -> bool:
        return set.__contains__(self, marker) or marker in self.previous
