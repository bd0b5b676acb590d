"""Grievance deadlines under a controlled clock: calendar months (31 January is due on the last day of
February), an extension only when notified within the first period, a breach flagged as soon as
the deadline has passed, fixed-day profiles, and the state machine's allowed moves."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from app.portal import grievances as g

GDPR = g.profile("gdpr")


def at(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


@pytest.mark.parametrize(("received", "due"), [
    ("2027-01-31T10:00", "2027-02-28T10:00"),
    ("2028-01-31T10:00", "2028-02-29T10:00"),  # a leap year
    ("2027-03-31T09:30", "2027-04-30T09:30"),
    ("2027-02-15T00:00", "2027-03-15T00:00"),
    ("2027-12-31T23:59", "2028-01-31T23:59"),
])
def test_a_request_is_due_one_calendar_month_after_receipt(received: str, due: str) -> None:
    assert g.file("tax", "e.fraud", at(received), GDPR).deadline == at(due)


def test_an_extension_notified_within_the_first_month_adds_two_months() -> None:
    case = g.file("tax", "e.fraud", at("2027-01-31T10:00"), GDPR)
    case = g.move(case, g.ACKNOWLEDGED, at("2027-02-01T09:00"), "handler")
    extended = g.move(case, g.EXTENDED, at("2027-02-28T10:00"), "handler", "the records are held by three agencies")
    assert extended.deadline == at("2027-04-30T10:00")  # 31 January + 3 months


def test_an_extension_after_the_first_month_is_refused() -> None:
    case = g.move(g.file("tax", "e.fraud", at("2027-01-31T10:00"), GDPR), g.ACKNOWLEDGED, at("2027-02-01T09:00"), "handler")
    with pytest.raises(g.GrievanceError, match="too late to extend"):
        g.move(case, g.EXTENDED, at("2027-02-28T10:01"), "handler", "late")
    with pytest.raises(g.GrievanceError, match="states its reason"):
        g.move(case, g.EXTENDED, at("2027-02-02T10:00"), "handler", " ")


def test_a_breach_is_flagged_within_a_minute_of_the_deadline_passing() -> None:
    case = g.move(g.file("tax", "e.fraud", at("2027-01-31T10:00"), GDPR), g.ACKNOWLEDGED, at("2027-02-01T09:00"), "handler")
    clock = at("2027-02-28T09:58")
    flagged = None
    while flagged is None:  # the controlled clock ticks a minute at a time
        if g.breached(case, clock):
            flagged = clock
        clock += timedelta(minutes=1)
    assert case.deadline < flagged <= case.deadline + timedelta(minutes=1)


def test_an_answer_in_time_is_no_breach_and_a_late_one_stays_a_breach() -> None:
    case = g.file("tax", "e.fraud", at("2027-01-31T10:00"), GDPR)
    on_time = g.move(case, g.RESOLVED, at("2027-02-27T10:00"), "handler", "corrected")
    late = g.move(case, g.RESOLVED, at("2027-03-01T10:00"), "handler", "corrected")
    assert not g.breached(on_time, at("2027-06-01T00:00"))
    assert g.breached(late, at("2027-06-01T00:00"))


def test_a_21_day_profile_has_no_extension() -> None:
    days = g.profile("days21")
    case = g.file("welfare", "e.fraud", at("2027-01-31T10:00"), days)
    assert case.deadline == at("2027-02-21T10:00")
    case = g.move(case, g.ACKNOWLEDGED, at("2027-02-01T09:00"), "handler")
    with pytest.raises(g.GrievanceError, match="no extension"):
        g.move(case, g.EXTENDED, at("2027-02-01T10:00"), "handler", "busy")
    assert g.profile("", days=10).period.days == 10


def test_a_refusal_gives_reasons_and_names_the_supervisory_authority() -> None:
    case = g.file("tax", "e.fraud", at("2027-01-31T10:00"), GDPR)
    with pytest.raises(g.GrievanceError, match="reasons"):
        g.move(case, g.REFUSED, at("2027-02-01T10:00"), "handler")
    refused = g.move(case, g.REFUSED, at("2027-02-01T10:00"), "handler", "the disclosure is required by law")
    assert "data protection authority" in refused.steps[-1].note
    appealed = g.move(refused, g.APPEALED, at("2027-02-02T10:00"), "subject", "poor answer")
    assert g.move(appealed, g.CLOSED, at("2027-02-20T10:00"), "handler").state == g.CLOSED


STATES = sorted(g.MOVES)


@given(path=st.lists(st.sampled_from(STATES), max_size=8))
def test_only_the_process_moves_are_allowed_and_a_closed_case_stays_closed(path: list[str]) -> None:
    case = g.file("tax", "e.fraud", at("2027-01-31T10:00"), GDPR)
    now = at("2027-02-01T10:00")
    for to in path:
        allowed = to in g.MOVES[case.state]
        try:
            case = g.move(case, to, now, "handler", "a reason")
        except g.GrievanceError:
            assert not allowed
        else:
            assert allowed
    if case.state == g.CLOSED:
        for to in STATES:
            with pytest.raises(g.GrievanceError):
                g.move(case, to, now, "handler", "a reason")
