"""The quality gate of agreements that require quality (issue 32): their records wait for their own
window's verdict.

While an event's quality window is open, a permit under an agreement with `require_quality` is not
sent: the router audits it `quality_pending` (nothing disclosed) and writes the raw event to the
pending topic (`backbone.quality.gating`). When the worker closes the window, each pending event is
decided again as things are then (a subject who withdrew consent or was erased meanwhile gets that
denial, an agreement revoked meanwhile releases nothing) and the permits are judged on the window's
scorecard: released, held (`quality_breach`) or delivered flagged, and audited then, under an id
derived from the event's (`release_event_id`): a record is disclosed when it is released.

Where no window can judge the records (quality rules off, or the event type's contract no longer
matches its schema) a gated permit is held at once: no evidence meets no bar.
"""

from __future__ import annotations

import dataclasses
import json
from collections import Counter
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from backbone.kafka.topics import AUDIT_TOPIC, QUALITY_BREACHES_TOPIC, QUALITY_PENDING_TOPIC, raw_topic
from backbone.policy.decision import QUALITY_BREACH, QUALITY_PENDING, ConsentState, Decision
from backbone.quality.checks import Checker
from backbone.quality.contract import Threshold
from backbone.quality.gating import (
    CLOSED_HEADER,
    MINUTE_MS,
    PROGRESS_HEADER,
    RECIPIENTS_HEADER,
    PendingWindow,
    below_bars,
    close_marker,
    progress_marker,
    release_event_id,
)
from backbone.quality.scorecard import Scorecard, score
from backbone.quality.window import WindowState
from processors.outputs import Headers, Output

if TYPE_CHECKING:
    from processors.router import Router

Bars = tuple[dict[str, Threshold], str]  # an agreement version's bars, and hold or flag
NO_BARS: Bars = ({}, "hold")


def _denied(decision: Decision, reason: str) -> Decision:
    return dataclasses.replace(decision, permitted=False, reason=reason, record=None, released_fields=(), key_ids=(), key=None)


class QualityGate:
    """One worker's gate: the bars of each agreement version, the windows with pending records, and
    the scorecards of those that closed, until their records are released."""

    def __init__(self, router: Router, minutes: int = 60) -> None:
        self.router = router
        self.windows = GateWindows(minutes)
        self._bars: dict[tuple[str | None, int | None], Bars] = {}
        self.pending: Counter[tuple[str, int]] = Counter()  # (event type, start minute) -> records in the pending topic
        self.judged: dict[tuple[str, int], Scorecard] = {}  # closed windows with pending records, awaiting release

    @property
    def minutes(self) -> int:
        """The window length a gated record waits for (BACKBONE_QUALITY_GATE_MINUTES, a divisor of 60):
        60 judges on the monitor's hourly windows; a shorter one on the gate's own (`GateWindows`)."""
        return self.windows.minutes

    @minutes.setter
    def minutes(self, value: int) -> None:
        self.windows.minutes = value

    def bars(self, decision: Decision) -> Bars:
        key = (decision.agreement_id, decision.agreement_version)
        bars = self._bars.get(key)
        if bars is None:
            agreement = next((a for a in self.router.engine.charter.agreements if (a.id, a.version) == key), None)
            bars = self._bars[key] = (dict(agreement.require_quality), agreement.on_quality_breach) if agreement else NO_BARS
        return bars

    def can_judge(self, event_type: str) -> bool:
        """Whether a window of this event type will be scored (quality rules on, its contract loaded)."""
        quality = self.router.quality
        return quality is not None and event_type in quality.contracts

    def decide(self, decision: Decision, event_type: str) -> tuple[Decision, bool]:
        """A permit as the gate leaves it while its window is open: (unchanged, False) without bars;
        (a `quality_pending` denial, True) when it waits for its window; a `quality_breach` denial
        when no window can judge it."""
        if not self.bars(decision)[0]:
            return decision, False
        if self.can_judge(event_type):
            self.router.counts["quality.pending"] += 1
            return _denied(decision, QUALITY_PENDING), True
        self.router.counts["quality.held"] += 1
        return _denied(decision, QUALITY_BREACH), False

    def pending_output(self, event_type: str, value: bytes, recipients: list[str], now: datetime, record: dict,
                       token: str | None) -> Output:
        """The raw event, to wait in the pending topic for the window it falls in (with windows shorter
        than the hour, its evidence goes to the gate's own window too)."""
        window = PendingWindow.of(self.router.worker_id, event_type, now, self.minutes)
        self.pending[(event_type, window.start)] += 1
        if self.minutes < 60:
            self.windows.observe(self.router.quality.checkers[event_type], window.start, record, now, token)  # type: ignore[union-attr]
        return Output(QUALITY_PENDING_TOPIC, window.key, value, [(RECIPIENTS_HEADER, ",".join(recipients).encode())])

    def closed(self, window: WindowState) -> None:
        """The monitor's hourly window just closed: with hourly gating its scorecard judges its pending records."""
        key = (window.event_type, window.hour * 60)
        if self.minutes == 60 and key in self.pending:
            contract = self.router.quality.contracts[window.event_type]  # type: ignore[union-attr]
            self.judged[key] = score(window, contract)

    def close(self, now: datetime, everything: bool = False) -> list[Output]:
        """The gate's own windows (shorter than the hour) ended by `now`: each judges its pending
        records, and a breach event tells the provider of the bars it missed, as it closes."""
        outputs: list[Output] = []
        quality = self.router.quality
        if self.minutes == 60 or quality is None:
            return outputs
        for (event_type, start), window in self.windows.closed(now, everything):
            scorecard = score(quality.checkers[event_type].finish(window), quality.contracts[event_type])
            self.judged[(event_type, start)] = scorecard
            breach = self.breach(event_type, scorecard, now, PendingWindow(self.router.worker_id, event_type, start, self.minutes))
            if breach is not None:
                outputs.append(breach)
        return outputs

    def closing(self, now: datetime) -> bool:
        """Whether one of the gate's own windows ended by `now` (the data plane closes it in a lull)."""
        return self.minutes < 60 and self.windows.ended(now)

    def due(self) -> list[PendingWindow]:
        """The closed windows whose pending records wait to be released, oldest first."""
        return [PendingWindow(self.router.worker_id, event_type, start, self.minutes)
                for event_type, start in sorted(self.judged, key=lambda k: (k[1], k[0]))]

    def release(self, window: PendingWindow, pending: Iterable[tuple[bytes | None, Headers | None]], consent: ConsentState,
                now: datetime, outcomes: Counter[str]) -> list[Output]:
        """The outputs of some of a judged window's pending records (value, headers): each event
        decided again now for the recipients it waited for, its permits released, held or flagged
        on the window's scorecard, and one audit record of the release per event."""
        router = self.router
        scorecard = self.judged.get((window.event_type, window.start))
        topic = raw_topic(window.event_type)
        audit = router._audit_record or router._audit_writer()
        outputs: list[Output] = []
        for value, headers in pending:
            recipients = set(dict(headers or ()).get(RECIPIENTS_HEADER, b"").decode().split(","))
            try:
                record, event_type = router._admit(topic, value)
            except Exception:  # noqa: BLE001 - routed once already; unreadable now (a schema gone): nothing is released
                outcomes["unreadable"] += 1
                continue
            subject_field = router._subject_fields[event_type]
            subject = record.get(subject_field) if subject_field else None
            subject_token = router._oversight(subject) if subject else None
            audited = []
            for decision in router.engine.decide(record, consent, now):
                if decision.recipient not in recipients:
                    continue
                if decision.permitted:
                    bars, mode = self.bars(decision)
                    failed = below_bars(scorecard, bars) if bars else ()
                    if failed and mode == "hold":
                        decision = _denied(decision, QUALITY_BREACH)
                        router.counts["quality.held"] += 1
                        outcomes["held"] += 1
                    else:
                        flag = f"breach:{','.join(failed)}".encode() if failed else None
                        outputs.append(router.shared_output(decision, event_type, flag))
                        outcomes["flagged" if failed else "released"] += 1
                else:
                    outcomes[decision.reason or "denied"] += 1
                if not decision.permitted:  # a permit was counted as its record was made
                    router.counts["deny"] += 1
                    router.decided[(decision.recipient, decision.reason or "denied")] += 1
                audited.append(decision)
            if audited:
                event_id = release_event_id(str(record["event_id"]))
                outputs.append(Output(AUDIT_TOPIC, event_id.encode(),
                                      audit(event_id, event_type, record["provider"], subject_token, now, audited)))
        return outputs

    def progress(self, window: PendingWindow, outcomes: Counter[str]) -> Output:
        """A progress marker of the window's release so far (counts only), for after a chunk is acknowledged:
        a worker that dies mid-release leaves the window listed as partly released, not as wholly held."""
        return Output(QUALITY_PENDING_TOPIC, window.key, b"", [(PROGRESS_HEADER, progress_marker(outcomes))])

    def finish(self, window: PendingWindow, outcomes: Counter[str]) -> Output:
        """The window's close marker (its records are all released, held or flagged); the window is forgotten."""
        key = (window.event_type, window.start)
        scorecard = self.judged.pop(key, None)
        self.pending.pop(key, None)
        return Output(QUALITY_PENDING_TOPIC, window.key, b"", [(CLOSED_HEADER, close_marker(scorecard, outcomes))])

    def hourly_breach(self, window: WindowState, now: datetime) -> Output | None:
        """The provider's breach event for an hourly window of the monitor just closed, if it is below its
        contract's thresholds or (with hourly gating) a bar an agreement in force requires: scored from
        the window itself, so each of several windows closed at once gets its own event."""
        quality = self.router.quality
        if quality is None or window.event_type not in quality.contracts:
            return None
        verdict = score(window, quality.contracts[window.event_type])
        return self.breach(window.event_type, verdict, now, None if self.minutes == 60 else False)

    def breach(self, event_type: str, verdict: Scorecard, now: datetime, window: PendingWindow | None | bool) -> Output | None:
        """A breach event (counts and scores only): the contract's thresholds missed (`window` None or
        False: the hourly scorecard) and the bars of agreements in force missed (`window` None: the
        hourly window gates; a PendingWindow: the gate's own window, which names its length)."""
        router = self.router
        agreements = []
        for agreement in (router.engine.charter.agreements if window is not False else ()):
            if event_type in agreement.event_types and agreement.require_quality and agreement.in_force_at(now):
                failed = below_bars(verdict, agreement.require_quality)
                if failed:
                    agreements.append({"agreement": agreement.key, "recipient": agreement.recipient, "dimensions": list(failed),
                                       "records": "held" if agreement.on_quality_breach == "hold" else "flagged"})
        below = {d.dimension: {"score": d.score, "checked": d.checked, "failed": d.failed, "threshold": d.threshold}
                 for d in verdict.dimensions.values() if d.met is False} if not isinstance(window, PendingWindow) else {}
        if not below and not agreements:
            return None
        router.counts["quality.breaches"] += 1
        scores = {d.dimension: d.score for d in verdict.dimensions.values()}
        event = {"provider": verdict.provider, "event_type": event_type, "hour": verdict.hour_start.isoformat(),
                 "events": verdict.events, "scores": scores, "below_contract": below, "agreements": agreements,
                 "worker": router.worker_id}
        if isinstance(window, PendingWindow):  # the gate's own window: when it started and how long it lasted
            event["window"] = {"start": datetime.fromtimestamp(window.start_ms / 1000, UTC).isoformat(), "minutes": window.minutes}
        return Output(QUALITY_BREACHES_TOPIC, verdict.provider.encode(), json.dumps(event, sort_keys=True).encode())


class GateWindows:
    """The gate's own quality windows, shorter than the hour, of the event types with gated records:
    the same checks as the monitor's (its checkers), on the same raw records, in windows of `minutes`
    (only gated events: a second, shorter evidence beside the hourly scorecard)."""

    def __init__(self, minutes: int) -> None:
        self.minutes = minutes
        self.open: dict[tuple[str, int], WindowState] = {}
        self._seen: dict[tuple[str, int], set] = {}

    def observe(self, checker: Checker, start: int, record: dict, now: datetime, token: str | None) -> None:
        key = (checker.event_type, start)
        window = self.open.get(key)
        if window is None:
            window = self.open[key] = WindowState(checker.event_type, start // 60)
        seen = self._seen.setdefault(key, set())
        checker.observe(record, window, seen, self._seen.get((checker.event_type, start - self.minutes), set()), now, token)

    def ended(self, now: datetime) -> bool:
        minute = int(now.timestamp() * 1000) // MINUTE_MS
        return any(start + self.minutes <= minute for _, start in self.open)

    def closed(self, now: datetime, everything: bool = False) -> list[tuple[tuple[str, int], WindowState]]:
        """Every window ended by `now` (`everything`: the open ones too), oldest first, forgotten."""
        minute = int(now.timestamp() * 1000) // MINUTE_MS
        done = sorted((k for k in self.open if everything or k[1] + self.minutes <= minute), key=lambda k: (k[1], k[0]))
        out = [(key, self.open.pop(key)) for key in done]
        for key in [k for k in self._seen if k[1] + 2 * self.minutes <= minute]:  # keys of this and the window before
            del self._seen[key]
        return out
