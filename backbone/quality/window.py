"""One hour of one event type's quality evidence, as mergeable state.

Counters (events, missing per field, checked and invalid per validity rule, duplicates, late,
inconsistent per consistency rule, duplicates per business key) add
when two workers' windows merge, so a merged window's counts are exact. Two Apache DataSketches
carry what counters cannot: an HLL sketch of the uniqueness key (distinct count, relative error
`HLL_REL_ERR` at 2 standard deviations) and a KLL sketch of the delay `occurred_at` -> decision in
seconds (quantiles within a normalised rank error of `KLL_RANK_ERR`); merging unions them.

Duplicates are counted exactly by the worker that sees them (the 64-bit markers of the keys it saw
in this hour and the one before, `backbone.quality.keyset`, never serialised): a re-sent event carries its key, so it reaches the partition,
and so the worker, of the first copy. Across workers, the HLL union bounds the distinct count.

A business key (`uniqueness.business_key`, e.g. national id and period) is counted the same way:
exactly by the worker that sees both records (a subject's records share a partition), across workers
bounded by the union of an HLL per business key. The key's values, with the subject's oversight
pseudonym in place of the subject, are held only hashed: in the exact set under the process's own
hash secret, in the HLL as its register values (`backbone.quality.checks`).

Nothing personal is in the serialised state: counts, the sketch of the delays, and the HLLs of the
uniqueness key (an event id) and of the business keys' markers (a sketch retains hashed register
values only, not the keys).
"""

from __future__ import annotations

import base64
import hashlib
import json
import uuid
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from datasketches import hll_sketch, hll_union, kll_floats_sketch, tgt_hll_type

from backbone.quality.errors import QualityStateError

FORMAT = 1
HOUR_MS = 3_600_000
HLL_LG_K = 12  # 4,096 registers: 1.6% relative standard error, 4 KiB a window
KLL_K = 200
# The sketches' stated bounds: HLL relative error at two standard deviations (~95%), KLL rank error.
HLL_REL_ERR = 2 * 1.04 / (1 << HLL_LG_K) ** 0.5
KLL_RANK_ERR = kll_floats_sketch.get_normalized_rank_error(KLL_K, False)


# The audit record sealing a closed window has this event type, and `window_seal_id(its bytes)` as its id.
QUALITY_SEAL_TYPE = "quality.window"


def window_seal_id(value: bytes) -> str:
    """The audit event id sealing a window's serialised bytes: a UUID of their SHA-256, which
    `backbone audit verify` recomputes from the landed window."""
    return str(uuid.UUID(bytes=hashlib.sha256(value).digest()[:16]))


def hour_of(moment: datetime) -> int:
    """Hours since the epoch of `moment`: the window it falls in."""
    return int(moment.timestamp() * 1000) // HOUR_MS


def hour_start(hour: int) -> datetime:
    return datetime.fromtimestamp(hour * HOUR_MS / 1000, UTC)


@dataclass
class WindowState:
    """The evidence of one (provider, event type, hour) from one or more workers."""

    event_type: str
    hour: int
    events: int = 0
    missing: Counter[str] = field(default_factory=Counter)
    checked: Counter[str] = field(default_factory=Counter)   # validity rule label -> values checked
    invalid: Counter[str] = field(default_factory=Counter)   # validity rule label -> values invalid
    duplicates: int = 0
    late: int = 0
    distinct: hll_sketch = field(default_factory=lambda: hll_sketch(HLL_LG_K, tgt_hll_type.HLL_8))
    delays: kll_floats_sketch = field(default_factory=lambda: kll_floats_sketch(KLL_K))
    inconsistent: Counter[str] = field(default_factory=Counter)  # consistency rule name -> events failing it
    key_duplicates: Counter[str] = field(default_factory=Counter)  # business key label -> events repeating one
    key_distinct: dict[str, hll_sketch] = field(default_factory=dict)  # business key label -> HLL of its markers

    def key_distinct_sketch(self, label: str) -> hll_sketch:
        found = self.key_distinct.get(label)
        if found is None:
            found = self.key_distinct[label] = hll_sketch(HLL_LG_K, tgt_hll_type.HLL_8)
        return found

    @property
    def provider(self) -> str:
        return self.event_type.split(".", 1)[0]

    @property
    def key(self) -> tuple[str, int]:
        return (self.event_type, self.hour)

    def merge(self, other: WindowState) -> WindowState:
        """A new window holding both windows' evidence (same event type and hour)."""
        if other.key != self.key:
            raise ValueError(f"cannot merge the window {other.key} into {self.key}: merge windows of one event type and hour")
        union = hll_union(HLL_LG_K)
        union.update(self.distinct)
        union.update(other.distinct)
        delays = kll_floats_sketch.deserialize(self.delays.serialize())
        delays.merge(other.delays)
        return WindowState(self.event_type, self.hour, self.events + other.events, self.missing + other.missing,
                           self.checked + other.checked, self.invalid + other.invalid,
                           self.duplicates + other.duplicates, self.late + other.late,
                           union.get_result(tgt_hll_type.HLL_8), delays, self.inconsistent + other.inconsistent,
                           self.key_duplicates + other.key_duplicates, _union_each(self.key_distinct, other.key_distinct))

    def counters(self) -> dict[str, Any]:
        """Every exact count, for comparison and tables."""
        return {"events": self.events, "missing": dict(self.missing), "checked": dict(self.checked),
                "invalid": dict(self.invalid), "duplicates": self.duplicates, "late": self.late, "inconsistent": dict(self.inconsistent),
                "key_duplicates": dict(self.key_duplicates)}

    def distinct_estimate(self) -> tuple[float, float, float]:
        """(estimate, lower, upper) of the distinct uniqueness keys, bounds at two standard deviations."""
        return (self.distinct.get_estimate(), self.distinct.get_lower_bound(2), self.distinct.get_upper_bound(2))

    def key_distinct_estimate(self, label: str) -> tuple[float, float, float]:
        """(estimate, lower, upper) of the distinct values of a business key, as `distinct_estimate`."""
        sketch = self.key_distinct.get(label)
        if sketch is None:
            return (0.0, 0.0, 0.0)
        return (sketch.get_estimate(), sketch.get_lower_bound(2), sketch.get_upper_bound(2))

    def delay_quantiles(self, ranks: tuple[float, ...] = (0.5, 0.95, 0.99)) -> dict[str, float | None]:
        if self.delays.is_empty():
            return {f"p{round(r * 100)}": None for r in ranks}
        return {f"p{round(r * 100)}": float(self.delays.get_quantile(r)) for r in ranks}

    def to_dict(self) -> dict[str, Any]:
        return {"format": FORMAT, "event_type": self.event_type, "hour": self.hour, **self.counters(),
                "distinct": base64.b64encode(self.distinct.serialize_compact()).decode(),
                "delays": base64.b64encode(self.delays.serialize()).decode(),
                "key_distinct": {label: base64.b64encode(sketch.serialize_compact()).decode()
                                 for label, sketch in sorted(self.key_distinct.items())}}

    def to_bytes(self) -> bytes:
        return json.dumps(self.to_dict(), separators=(",", ":"), sort_keys=True).encode()

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> WindowState:
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            raise QualityStateError(f"not a quality window of format {FORMAT}; it was written by another version")
        try:
            return cls(str(data["event_type"]), int(data["hour"]), int(data["events"]), Counter(data["missing"]),
                       Counter(data["checked"]), Counter(data["invalid"]), int(data["duplicates"]), int(data["late"]),
                       hll_sketch.deserialize(base64.b64decode(data["distinct"])),
                       kll_floats_sketch.deserialize(base64.b64decode(data["delays"])),
                       # absent from windows landed before consistency rules and business keys
                       Counter(data.get("inconsistent", {})), Counter(data.get("key_duplicates", {})),
                       {str(label): hll_sketch.deserialize(base64.b64decode(raw)) for label, raw in data.get("key_distinct", {}).items()})
        except (KeyError, TypeError, ValueError, RuntimeError) as exc:
            raise QualityStateError(f"a quality window could not be read ({type(exc).__name__}); it is corrupt") from None

    @classmethod
    def from_bytes(cls, raw: bytes) -> WindowState:
        try:
            data = json.loads(raw)
        except (ValueError, UnicodeDecodeError):
            raise QualityStateError("a quality window is not JSON; it is corrupt") from None
        return cls.from_dict(data)


def _union_each(a: dict[str, hll_sketch], b: dict[str, hll_sketch]) -> dict[str, hll_sketch]:
    out: dict[str, hll_sketch] = {}
    for label in sorted(set(a) | set(b)):
        union = hll_union(HLL_LG_K)
        for sketch in (a.get(label), b.get(label)):
            if sketch is not None:
                union.update(sketch)
        out[label] = union.get_result(tgt_hll_type.HLL_8)
    return out


def merge_all(windows: list[WindowState]) -> list[WindowState]:
    """Windows of the same event type and hour merged into one (several workers' windows)."""
    merged: dict[tuple[str, int], WindowState] = {}
    for window in windows:
        merged[window.key] = merged[window.key].merge(window) if window.key in merged else window
    return sorted(merged.values(), key=lambda w: (w.hour, w.event_type))
