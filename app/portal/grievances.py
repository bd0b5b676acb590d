"""Grievances with legal clocks, pure: the state machine of one complaint and its deadlines under a
jurisdiction profile. No I/O and no clock of its own: every step is given `now`, so the arithmetic is
tested under a controlled clock.

States: received -> acknowledged -> in_progress -> (extended) -> resolved | refused -> appealed ->
closed (resolved and refused may also be closed directly, when the person accepts the answer).
An extension needs a reason and is valid only while the first period runs (GDPR Art. 12(3): the
person is told of it within one month). A refusal states its reasons and names the supervisory
authority the person may complain to.

Deadlines are calendar arithmetic (`dateutil.relativedelta`): one month from 31 January is the last
day of February (28 or 29), never 3 March. A case is breached when it is still open after its
deadline; `breached(case, now)` says so the moment it is.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass, field, replace
from datetime import datetime

from dateutil.relativedelta import relativedelta

from backbone.errors import BackboneError

RECEIVED, ACKNOWLEDGED, IN_PROGRESS, EXTENDED = "received", "acknowledged", "in_progress", "extended"
RESOLVED, REFUSED, APPEALED, CLOSED = "resolved", "refused", "appealed", "closed"
ANSWERED = frozenset({RESOLVED, REFUSED, CLOSED})
OPEN = frozenset({RECEIVED, ACKNOWLEDGED, IN_PROGRESS, EXTENDED, APPEALED})
MOVES: dict[str, frozenset[str]] = {
    RECEIVED: frozenset({ACKNOWLEDGED, RESOLVED, REFUSED}),
    ACKNOWLEDGED: frozenset({IN_PROGRESS, EXTENDED, RESOLVED, REFUSED}),
    IN_PROGRESS: frozenset({EXTENDED, RESOLVED, REFUSED}),
    EXTENDED: frozenset({RESOLVED, REFUSED}),
    RESOLVED: frozenset({APPEALED, CLOSED}),
    REFUSED: frozenset({APPEALED, CLOSED}),
    APPEALED: frozenset({CLOSED}),
    CLOSED: frozenset(),
}


class GrievanceError(BackboneError):
    """A transition the process does not allow, saying which ones it does."""


@dataclass(slots=True, frozen=True)
class Profile:
    """A jurisdiction's clock: the first period, the extension (none: `relativedelta()`) and the
    authority a refused person may complain to."""

    name: str
    period: relativedelta
    extension: relativedelta
    authority: str

    @property
    def extendable(self) -> bool:
        return bool(self.extension)


PROFILES = {
    # GDPR Art. 12(3): one month from receipt, extendable by two further months, told within the first
    "gdpr": Profile("gdpr", relativedelta(months=1), relativedelta(months=2), "the national data protection authority"),
    # CPGRAMS-style: a 21-day redressal limit, no extension
    "days21": Profile("days21", relativedelta(days=21), relativedelta(), "the appellate authority of the ministry"),
}


def profile(name: str, days: int | None = None) -> Profile:
    """A named profile, or `days` for a fixed limit of that many days without extension."""
    if days is not None:
        if days < 1:
            raise GrievanceError("a deadline of at least one day")
        return Profile(f"days{days}", relativedelta(days=days), relativedelta(), PROFILES["days21"].authority)
    try:
        return PROFILES[name]
    except KeyError:
        raise GrievanceError(f"unknown jurisdiction profile {name!r}; one of {', '.join(sorted(PROFILES))}") from None


@dataclass(slots=True, frozen=True)
class Step:
    state: str
    at: datetime
    by: str
    note: str = ""


@dataclass(slots=True, frozen=True)
class Grievance:
    """One complaint, linked to one entry of the person's trail (event and recipient), never to a value."""

    tracking_id: str
    agency: str
    entry: str
    received_at: datetime
    profile: Profile
    steps: tuple[Step, ...] = field(default=())

    @property
    def state(self) -> str:
        return self.steps[-1].state if self.steps else RECEIVED

    @property
    def first_deadline(self) -> datetime:
        return self.received_at + self.profile.period

    @property
    def deadline(self) -> datetime:
        extended = any(step.state == EXTENDED for step in self.steps)
        # counted from receipt (31 January + 3 months is 30 April), not from the first deadline (28 February + 2: 28 April)
        return self.received_at + (self.profile.period + self.profile.extension) if extended else self.first_deadline

    @property
    def answered_at(self) -> datetime | None:
        return next((step.at for step in self.steps if step.state in (RESOLVED, REFUSED)), None)


def new_tracking_id() -> str:
    """A tracking id to quote (no personal data): GRV- and 12 base-32 characters."""
    alphabet = "ABCDEFGHJKLMNPQRSTUVWXYZ23456789"
    return "GRV-" + "".join(secrets.choice(alphabet) for _ in range(12))


def file(agency: str, entry: str, now: datetime, profile_: Profile, tracking_id: str | None = None) -> Grievance:
    return Grievance(tracking_id or new_tracking_id(), agency, entry, now, profile_, (Step(RECEIVED, now, "subject"),))


def move(case: Grievance, to: str, now: datetime, by: str, note: str = "", authority: str | None = None) -> Grievance:
    """`case` after the transition to `to` at `now`; `GrievanceError` when the process forbids it."""
    if to not in MOVES.get(case.state, frozenset()):
        allowed = ", ".join(sorted(MOVES.get(case.state, ()))) or "nothing (closed)"
        raise GrievanceError(f"grievance {case.tracking_id} is {case.state}: it may move to {allowed}, not {to}")
    if now < case.steps[-1].at:
        raise GrievanceError(f"grievance {case.tracking_id}: a step dated before the previous one")
    if to == EXTENDED:
        if not case.profile.extendable:
            raise GrievanceError(f"the {case.profile.name} profile allows no extension")
        if not note.strip():
            raise GrievanceError("an extension states its reason (it is sent to the person)")
        if now > case.first_deadline:
            raise GrievanceError(f"too late to extend grievance {case.tracking_id}: the person must be told within the "
                                 f"first period, which ended {case.first_deadline:%Y-%m-%d %H:%M} UTC")
    if to == REFUSED:
        if not note.strip():
            raise GrievanceError("a refusal states its reasons")
        note = f"{note.strip()} — you may complain to {authority or case.profile.authority}"
    return replace(case, steps=(*case.steps, Step(to, now, by, note)))


def breached(case: Grievance, now: datetime) -> bool:
    """Still unanswered after its deadline (an appeal runs a new period from the appeal)."""
    if case.state == APPEALED:
        appealed = next(step.at for step in reversed(case.steps) if step.state == APPEALED)
        return now > appealed + case.profile.period
    if case.state in OPEN:
        return now > case.deadline
    answered = case.answered_at
    return answered is not None and answered > case.deadline
