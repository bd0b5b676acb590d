"""What the embedded broker keeps is said at start, and `backbone up` says when it grows past each step."""

from __future__ import annotations

import os

from hypothesis import given
from hypothesis import strategies as st

from backbone.stack.memory import BROKER_MEMORY_STEPS_MB, KEEPS, BrokerMemoryWatch, rss_mb


def test_each_step_is_said_once_when_the_broker_passes_it() -> None:
    readings = iter([100.0, 600.0, 620.0, 800.0, 790.0, None, 2100.0, 2200.0])
    watch = BrokerMemoryWatch(lambda: next(readings))
    said = [watch.check() for _ in range(8)]
    assert [warning is not None for warning in said] == [False, True, False, True, False, False, True, False]
    assert "600 MiB" in said[1] and "2,100 MiB" in said[6]
    assert "restart" in said[1] and "empty" in said[1]


@given(st.lists(st.floats(min_value=0, max_value=10_000), max_size=40))
def test_never_more_warnings_than_steps_passed(readings: list[float]) -> None:
    values = iter(readings)
    watch = BrokerMemoryWatch(lambda: next(values))
    said = sum(watch.check() is not None for _ in readings)
    assert said <= sum(1 for step in BROKER_MEMORY_STEPS_MB if max(readings, default=0) >= step)


def test_the_start_message_says_what_is_kept_and_for_how_long() -> None:
    assert "every message" in KEEPS and "until the stack stops" in KEEPS and "retention" in KEEPS
    assert "restart" in KEEPS and "empty" in KEEPS


def test_rss_of_a_living_process_and_of_none() -> None:
    assert (rss_mb(os.getpid()) or 0) > 1
    assert rss_mb(None) is None
