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
from datetime import datetime
from typing import TYPE_CHECKING

from backbone.kafka.topics import AUDIT_TOPIC, QUALITY_BREACHES_TOPIC, QUALITY_PENDING_TOPIC, raw_topic
from backbone.policy.decision import QUALITY_BREACH, QUALITY_PENDING, ConsentState, Decision
from backbone.quality.contract import Threshold
from backbone.quality.gating import CLOSED_HEADER, RECIPIENTS_HEADER, PendingWindow, below_bars, close_marker, release_event_id
from backbone.quality.scorecard import Scorecard, score
from backbone.quality.window import WindowState, hour_of
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

    def __init__(self, router: Router) -> None:
        self.router = router
        self._bars: dict[tuple[str | None, int | None], Bars] = {}
        self.pending: Counter[tuple[str, int]] = Counter()  # (event type, hour) -> records written to the pending topic
        self.judged: dict[tuple[str, int], Scorecard] = {}  # closed windows with pending records, awaiting release

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

    def pending_output(self, event_type: str, value: bytes, recipients: list[str], now: datetime) -> Output:
        hour = hour_of(now)
        self.pending[(event_type, hour)] += 1
        key = PendingWindow(self.router.worker_id, event_type, hour).key
        return Output(QUALITY_PENDING_TOPIC, key, value, [(RECIPIENTS_HEADER, ",".join(recipients).encode())])

    def closed(self, window: WindowState) -> None:
        """A window just closed: its scorecard judges its pending records."""
        if window.key in self.pending:
            contract = self.router.quality.contracts[window.event_type]  # type: ignore[union-attr]
            self.judged[window.key] = score(window, contract)

    def due(self) -> list[PendingWindow]:
        """The closed windows whose pending records wait to be released, oldest first."""
        return [PendingWindow(self.router.worker_id, event_type, hour) for event_type, hour in sorted(self.judged, key=lambda k: (k[1], k[0]))]

    def release(self, window: PendingWindow, pending: Iterable[tuple[bytes | None, Headers | None]], consent: ConsentState,
                now: datetime, outcomes: Counter[str]) -> list[Output]:
        """The outputs of some of a judged window's pending records (value, headers): each event
        decided again now for the recipients it waited for, its permits released, held or flagged
        on the window's scorecard, and one audit record of the release per event."""
        router = self.router
        scorecard = self.judged.get((window.event_type, window.hour))
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

    def finish(self, window: PendingWindow, outcomes: Counter[str]) -> Output:
        """The window's close marker (its records are all released, held or flagged); the window is forgotten."""
        key = (window.event_type, window.hour)
        scorecard = self.judged.pop(key, None)
        self.pending.pop(key, None)
        return Output(QUALITY_PENDING_TOPIC, window.key, b"", [(CLOSED_HEADER, close_marker(scorecard, outcomes))])

    def breach(self, event_type: str, hour: int, now: datetime) -> Output | None:
        """The provider's breach event for a window just closed, if it is below its contract's
        thresholds or a bar an agreement in force requires; counts and scores only."""
        router = self.router
        verdict = router.quality.verdicts.get(event_type) if router.quality is not None else None
        if verdict is None or verdict.hour != hour:
            return None
        agreements = []
        for agreement in router.engine.charter.agreements:
            if event_type in agreement.event_types and agreement.require_quality and agreement.in_force_at(now):
                failed = below_bars(verdict, agreement.require_quality)
                if failed:
                    agreements.append({"agreement": agreement.key, "recipient": agreement.recipient, "dimensions": list(failed),
                                       "records": "held" if agreement.on_quality_breach == "hold" else "flagged"})
        below = {d.dimension: {"score": d.score, "checked": d.checked, "failed": d.failed, "threshold": d.threshold}
                 for d in verdict.dimensions.values() if d.met is False}
        if not below and not agreements:
            return None
        router.counts["quality.breaches"] += 1
        scores = {d.dimension: d.score for d in verdict.dimensions.values()}
        return Output(QUALITY_BREACHES_TOPIC, verdict.provider.encode(), json.dumps({
            "provider": verdict.provider, "event_type": event_type, "hour": verdict.hour_start.isoformat(),
            "events": verdict.events, "scores": scores, "below_contract": below, "agreements": agreements,
            "worker": router.worker_id}, sort_keys=True).encode())
