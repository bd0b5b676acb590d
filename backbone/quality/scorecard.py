"""The scorecard: 0-100 per provider, event type, dimension and hour, with the counts behind it.

A dimension's score is the share of its checks that passed: completeness checks each listed field
of each event (missing: null, empty or NaN), validity each present value against its rule,
uniqueness each event once per key (the event id; with a business key, again for a different event
repeating its values), timeliness each event (later than the bound), consistency each
event against each of its rules (a claim after its subject's registered death), volume the hour's
events against the median of the same hour in earlier weeks (capped at 100). A dimension with no
checks (no events, no history) has no score (None): there is no evidence either way.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from backbone.quality.contract import DIMENSIONS, QualityContract
from backbone.quality.window import WindowState, hour_start


@dataclass(slots=True, frozen=True)
class DimensionScore:
    dimension: str
    score: float | None
    checked: int
    failed: int
    threshold: str | None = None
    met: bool | None = None
    # per field or rule: (checked, failed), for the worst rules
    detail: dict[str, tuple[int, int]] = field(default_factory=dict)


@dataclass(frozen=True)
class Scorecard:
    provider: str
    event_type: str
    hour: int
    events: int
    dimensions: dict[str, DimensionScore]
    distinct: tuple[float, float, float]          # HLL estimate, lower, upper (2 standard deviations)
    delay_s: dict[str, float | None]             # KLL quantiles of occurred_at -> decision

    @property
    def hour_start(self) -> datetime:
        return hour_start(self.hour)

    def breaches(self) -> list[DimensionScore]:
        """Dimensions scored below their contract's bar."""
        return [d for d in self.dimensions.values() if d.met is False]

    def rows(self) -> list[dict[str, Any]]:
        """One row per dimension, for the `quality.scorecards` table."""
        return [{"provider": self.provider, "event_type": self.event_type, "hour": self.hour_start,
                 "dimension": d.dimension, "score": d.score, "checked": d.checked, "failed": d.failed,
                 "threshold": d.threshold or "", "met": d.met, "events": self.events,
                 "detail": {k: list(v) for k, v in d.detail.items()}} for d in self.dimensions.values()]


def _ratio(checked: int, failed: int) -> float | None:
    return None if checked <= 0 else 100.0 * (checked - failed) / checked


def volume_baseline(history: list[int]) -> float | None:
    """The expected events in an hour: the median of the same hour in earlier weeks (None: no history)."""
    return float(statistics.median(history)) if history else None


def score(window: WindowState, contract: QualityContract, baseline: float | None = None) -> Scorecard:
    """The scorecard of one window (merged from every worker's) under its event type's contract."""
    quality = contract.quality
    scores: dict[str, DimensionScore] = {}
    for dimension in quality.dimensions():
        detail: dict[str, tuple[int, int]] = {}
        if dimension == "completeness":
            detail = {name: (window.events, window.missing.get(name, 0)) for name in quality.completeness.fields}
        elif dimension == "validity":
            labels = sorted(set(window.checked) | set(window.invalid))
            detail = {label: (window.checked.get(label, 0), window.invalid.get(label, 0)) for label in labels}
        elif dimension == "consistency":
            detail = {rule.name: (window.events, window.inconsistent.get(rule.name, 0)) for rule in quality.consistency.rules}
        if dimension in ("completeness", "validity", "consistency"):
            checked, failed = sum(c for c, _ in detail.values()), sum(f for _, f in detail.values())
            value = _ratio(checked, failed)
        elif dimension == "uniqueness":
            detail = {quality.uniqueness.key: (window.events, window.duplicates)}
            label = quality.uniqueness.business_label
            if label is not None:
                detail[label] = (window.events, window.key_duplicates.get(label, 0))
            checked, failed = sum(c for c, _ in detail.values()), sum(f for _, f in detail.values())
            value = _ratio(checked, failed)
        elif dimension == "timeliness":
            checked, failed = window.events, window.late
            value = _ratio(checked, failed)
        else:  # volume
            checked = round(baseline) if baseline else 0
            failed = max(0, checked - window.events)
            value = None if not baseline else min(100.0, 100.0 * window.events / baseline)
        threshold = quality.threshold(dimension)
        scores[dimension] = DimensionScore(dimension, value, checked, failed, str(threshold) if threshold else None,
                                           None if value is None or threshold is None else threshold.met(value), detail)
    return Scorecard(contract.provider, contract.event_type, window.hour, window.events,
                     {d: scores[d] for d in DIMENSIONS if d in scores}, window.distinct_estimate(), window.delay_quantiles())
