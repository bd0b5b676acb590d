"""A validity pattern of decimal digits checked by string methods: the same verdict as the regex."""

from __future__ import annotations

import re
import uuid
from datetime import UTC, datetime

from hypothesis import given, settings
from hypothesis import strategies as st

from backbone.quality.checks import QualityMonitor
from backbone.quality.contract import QualityContract, QualitySection
from backbone.quality.patterns import digits_test

# digit classes as contracts write them; the text mixes ASCII digits with other Nd digits (Arabic-Indic,
# fullwidth), digits that are not decimal (superscript two), a newline (`$` matches before one) and others
PIECES = [r"\d", r"[1-9]", r"[0-5]", "7", r"\d{3}", r"[2-4]{2}", r"[0-9]"]
TEXT = st.text(alphabet=st.sampled_from("0123456789\u0660\u0669\uff10\uff19\u00b2a -\n"), max_size=12)


@st.composite
def digit_patterns(draw: st.DrawFn) -> str:
    body = "".join(draw(st.lists(st.sampled_from(PIECES), min_size=1, max_size=6)))
    return f"{'^' if draw(st.booleans()) else ''}{body}{'$' if draw(st.booleans()) else ''}"


def verdict(pattern: str) -> object:
    expression = digits_test(pattern)
    assert expression is not None, pattern
    return eval(f"lambda v: {expression}")  # built from the test's own pattern


@settings(max_examples=150, deadline=None)
@given(digit_patterns(), st.data())
def test_a_digit_pattern_as_string_methods_matches_exactly_what_the_regex_matches(pattern: str, data: st.DataObject) -> None:
    test = verdict(pattern)
    regex = re.compile(pattern)
    for value in [data.draw(TEXT), data.draw(st.from_regex(regex, fullmatch=True))]:
        assert test(value) == bool(regex.fullmatch(value)), (pattern, value)


def test_the_contracts_digit_patterns_are_string_methods_and_other_patterns_stay_regexes() -> None:
    assert digits_test(r"^[1-9]\d{8}$") == "len(v) == 9 and v.isdecimal() and '1' <= v[0] <= '9'"
    assert digits_test(r"^\d{8}$") == "len(v) == 8 and v.isdecimal()"
    for other in [r"^\d{4}-(0[1-9]|1[0-2])$", r"^NL\d{2}[A-Z]{4}\d{10}$", r"\d+", r"\d{2,3}", r"(?a)\d{3}", r"^\d{3}\Z",
                  r"[^0-9]", r"\w{3}", r"^$", "("]:
        assert digits_test(other) is None, other


def test_a_national_id_checked_by_string_methods_is_counted_as_the_regex_would() -> None:
    contract = QualityContract("tax.income_declared", "test", QualitySection.model_validate({
        "validity": {"rules": [{"field": "national_id", "pattern": r"^[1-9]\d{8}$"}]}}))
    monitor = QualityMonitor([contract])
    assert "v.isdecimal()" in monitor.checkers["tax.income_declared"].check.source
    values = ["123456782", "023456782", "12345678", "1234567890", "12345678\n", "\u0661\u0662\u0663\u0664\u0665\u0666\u0667\u0668\u0669",
              "1234567\u00b28", "12345678a", " 23456782"]
    now = datetime(2026, 12, 7, 10, tzinfo=UTC)
    for value in values:
        monitor.observe("tax.income_declared", {"event_id": uuid.uuid4(), "national_id": value}, now)
    (window,) = monitor.closed(now, everything=True)
    invalid = sum(1 for v in values if not re.fullmatch(r"^[1-9]\d{8}$", v))
    assert (window.invalid["national_id:pattern"], invalid) == (8, 8)  # only the first is an ASCII non-zero digit and eight decimal digits
