"""Gating records on their own quality window (issue 32): what the processor writes to the pending
topic while a window is open, how a closed window's scorecard is judged against an agreement's bars,
and how the pending records a worker left are listed. Pure: the processor does the Kafka I/O.

A permitted record of an agreement with `require_quality` is not sent while its window is open: the
raw event goes to the pending topic keyed `<worker>|<event type>|<start minute>|<minutes>` with the
recipients it waits for. When the worker closes the window it re-decides each pending event (consent and erasure as they
are then) and releases, holds or flags it on that window's scorecard; a close marker with the same
key, counts only, says so. A window with records and no close marker was left by a worker that
stopped before judging it: its records stay held (fail closed) and `backbone quality pending` lists them.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from backbone.quality.contract import Threshold
from backbone.quality.errors import QualityStateError
from backbone.quality.scorecard import Scorecard
from backbone.quality.window import HOUR_MS

MINUTE_MS = HOUR_MS // 60
RECIPIENTS_HEADER = "recipients"  # on a pending record: the recipients it waits for, comma-separated
CLOSED_HEADER = "closed"  # on a close marker: the window was judged (its value: what was done, counts)
# On a progress marker, written as each chunk of a window's releases is acknowledged: what its records
# became so far (counts). A worker that dies mid-release leaves the last one: the window was partly released.
PROGRESS_HEADER = "progress"
MARKER_HEADERS = (CLOSED_HEADER, PROGRESS_HEADER)
# Audit records of releases are ids derived from the event's (a second record with the event's own id
# would collapse with the first in the audit table, which keeps one row per id).
_RELEASE_NAMESPACE = uuid.UUID("5d1b6f0e-8a4e-4c55-9f57-3c1f0b6a2e91")


@dataclass(slots=True, frozen=True)
class PendingWindow:
    """One worker's quality window of one event type, as named in the pending topic's keys: it starts
    `start` minutes after the epoch and lasts `minutes` (60: the scorecard's hour)."""

    worker: str
    event_type: str
    start: int
    minutes: int = 60

    @property
    def key(self) -> bytes:
        return f"{self.worker}|{self.event_type}|{self.start}|{self.minutes}".encode()

    @property
    def start_ms(self) -> int:
        return self.start * MINUTE_MS

    @property
    def end_ms(self) -> int:
        return (self.start + self.minutes) * MINUTE_MS

    @classmethod
    def of(cls, worker: str, event_type: str, moment: datetime, minutes: int = 60) -> PendingWindow:
        """The window of `minutes` that `moment` falls in."""
        minute = int(moment.timestamp() * 1000) // MINUTE_MS
        return cls(worker, event_type, minute - minute % minutes, minutes)

    @classmethod
    def from_key(cls, key: bytes | None) -> PendingWindow:
        try:
            worker, event_type, start, minutes = (key or b"").decode().split("|")
            return cls(worker, event_type, int(start), int(minutes))
        except (UnicodeDecodeError, ValueError):
            raise QualityStateError("a pending record's key is not <worker>|<event type>|<start minute>|<minutes>; it was "
                                    "not written by a processor") from None


def release_event_id(event_id: str) -> str:
    """The audit event id of the release decision about event `event_id` (a UUID derived from it, so
    `backbone audit receipt` can find it from the provider's id)."""
    return str(uuid.uuid5(_RELEASE_NAMESPACE, str(event_id)))


def below_bars(scorecard: Scorecard | None, bars: Mapping[str, Threshold]) -> tuple[str, ...]:
    """The dimensions of `bars` the window's scorecard is below. No scorecard (the window was never
    judged) fails every bar; a dimension with no checks in the window is no evidence, so no breach."""
    if scorecard is None:
        return tuple(bars)
    failed = []
    for dimension, bar in bars.items():
        found = scorecard.dimensions.get(dimension)
        if found is not None and found.score is not None and not bar.met(found.score):
            failed.append(dimension)
    return tuple(failed)


def close_marker(scorecard: Scorecard | None, outcomes: Mapping[str, int]) -> bytes:
    """The value of a window's close marker: its scores and what its pending records became
    (`released`, `flagged`, `held`, and denials by reason, e.g. `consent_withdrawn`). Counts only."""
    scores = {d.dimension: d.score for d in scorecard.dimensions.values()} if scorecard is not None else {}
    return json.dumps({"scores": scores, "outcomes": dict(sorted(outcomes.items()))}, sort_keys=True).encode()


def progress_marker(outcomes: Mapping[str, int]) -> bytes:
    """The value of a progress marker: what the window's records released so far became (counts only)."""
    return json.dumps({"outcomes": dict(sorted(outcomes.items()))}, sort_keys=True).encode()


@dataclass
class WindowListing:
    """What the pending topic holds of one worker's window: `closed` once it was judged; `progress`:
    the last progress marker of a release (what the records done so far became)."""

    window: PendingWindow
    records: int = 0
    recipients: set[str] = field(default_factory=set)
    closed: dict[str, Any] | None = None
    progress: dict[str, Any] | None = None

    @property
    def done(self) -> int:
        """Records of a window left mid-release whose release was acknowledged (0 without a progress marker)."""
        if self.closed is not None or self.progress is None:
            return 0
        return sum(n for n in self.progress.get("outcomes", {}).values() if isinstance(n, int))

    def held(self, now: datetime) -> int:
        """Records a stopped worker left held (never delivered)."""
        return self.records - self.done if self.closed is None and self.window.end_ms <= now.timestamp() * 1000 else 0

    def state(self, now: datetime) -> str:
        if self.closed is not None:
            outcomes = self.closed.get("outcomes", {})
            return "judged: " + (", ".join(f"{n} {what}" for what, n in outcomes.items()) or "nothing pending")
        if self.window.end_ms > now.timestamp() * 1000:
            return "open: released or held when the window ends"
        if self.done:
            outcomes = self.progress.get("outcomes", {}) if self.progress else {}
            return (f"partly released: {self.done} of {self.records} done (" + ", ".join(f"{n} {what}" for what, n in outcomes.items())
                    + "; see audit), the rest held: its worker stopped while releasing it (fail closed)")
        return "held: its worker stopped before judging it (fail closed)"

    def row(self, now: datetime) -> dict[str, Any]:
        return {"worker": self.window.worker, "event_type": self.window.event_type,
                "start": datetime.fromtimestamp(self.window.start_ms / 1000, UTC).isoformat(), "minutes": self.window.minutes,
                "records": self.records, "recipients": sorted(self.recipients), "state": self.state(now), "held": self.held(now)}


def list_pending(records: Iterable[tuple[bytes | None, list[tuple[str, bytes]] | None]]) -> list[WindowListing]:
    """The windows in the pending topic's (key, headers), oldest first; a record not a processor's is skipped."""
    found: dict[PendingWindow, WindowListing] = {}
    markers: dict[PendingWindow, dict[str, Any]] = {}
    progress: dict[PendingWindow, dict[str, Any]] = {}
    for key, headers in records:
        try:
            window = PendingWindow.from_key(key)
        except QualityStateError:
            continue
        named = dict(headers or [])
        if CLOSED_HEADER in named:
            try:
                markers[window] = json.loads(named[CLOSED_HEADER])
            except ValueError:
                markers[window] = {}
            continue
        if PROGRESS_HEADER in named:  # in the order written: the last one is the furthest the release got
            try:
                progress[window] = json.loads(named[PROGRESS_HEADER])
            except ValueError:
                progress[window] = {}
            continue
        listing = found.setdefault(window, WindowListing(window))
        listing.records += 1
        listing.recipients.update(r for r in named.get(RECIPIENTS_HEADER, b"").decode().split(",") if r)
    for window, marker in markers.items():
        found.setdefault(window, WindowListing(window)).closed = marker
    for window, reached in progress.items():
        found.setdefault(window, WindowListing(window)).progress = reached
    return sorted(found.values(), key=lambda w: (w.window.start, w.window.event_type, w.window.worker))
