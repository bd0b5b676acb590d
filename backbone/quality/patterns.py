"""A validity pattern of decimal digits only compiled to string methods instead of a regex call.

`re.compile(pattern).fullmatch(v)` costs ~0.25 µs a value however simple the pattern; a fixed-length
run of digits (`^[1-9]\\d{8}$`, a national id; `^\\d{8}$`, an employer id) is tested in about half
of that by `len(v) == n and v.isdecimal()` plus one comparison per narrower position. The test is
exact: `\\d` (a `str` pattern without flags) matches a character of Unicode category Nd, which is
what `str.isdecimal` tests, and a position's class of ASCII digits (`[1-9]`) is a comparison of
code points. Any other pattern keeps the regex (measured: string slices and comparisons are no
faster than the regex for mixed classes).
"""

from __future__ import annotations

import re
from re import _constants as sre  # type: ignore[attr-defined]  # the regex parser's opcodes (stdlib)
from re import _parser as sre_parse  # type: ignore[attr-defined]

DIGITS = (ord("0"), ord("9"))


def _position(item: tuple) -> tuple[int, int] | None:
    """The code-point range a one-character item matches if it is within the decimal digits:
    `\\d` as (0, 0x10FFFF) (any Nd character, `isdecimal` decides), `[a-b]` or a literal digit as
    (a, b); None for anything else."""
    op, arg = item
    if op is sre.LITERAL and DIGITS[0] <= arg <= DIGITS[1]:
        return arg, arg
    if op is sre.IN and len(arg) == 1:
        (kind, value), = arg
        if kind is sre.CATEGORY and value is sre.CATEGORY_DIGIT:
            return 0, 0x10FFFF
        if kind is sre.RANGE and DIGITS[0] <= value[0] <= value[1] <= DIGITS[1]:
            return value
        if kind is sre.LITERAL and DIGITS[0] <= value <= DIGITS[1]:
            return value, value
    return None


def digits_test(pattern: str) -> str | None:
    """A Python expression over `v` (a `str`) true exactly when `re.fullmatch(pattern, v)` matches,
    for a pattern that is a fixed-length run of decimal-digit classes (anchors at its ends
    allowed); None for any other pattern."""
    try:
        parsed = sre_parse.parse(pattern)
    except re.error:
        return None
    if parsed.state.flags & ~sre.SRE_FLAG_UNICODE:
        return None
    items = list(parsed)
    if items and items[0] == (sre.AT, sre.AT_BEGINNING):
        items = items[1:]
    if items and items[-1] == (sre.AT, sre.AT_END):  # with fullmatch, `$` before the end is the end
        items = items[:-1]
    positions: list[tuple[int, int]] = []
    for item in items:
        if item[0] is sre.MAX_REPEAT or item[0] is sre.MIN_REPEAT:
            low, high, sub = item[1]
            if low != high or len(sub) != 1:
                return None
            found = _position(sub[0])
            if found is None:
                return None
            positions.extend([found] * low)
        else:
            found = _position(item)
            if found is None:
                return None
            positions.append(found)
    if not positions:
        return None
    checks = [f"len(v) == {len(positions)}", "v.isdecimal()"]
    for i, (low, high) in enumerate(positions):
        if (low, high) == (0, 0x10FFFF):
            continue
        checks.append(f"v[{i}] == {chr(low)!r}" if low == high else f"{chr(low)!r} <= v[{i}] <= {chr(high)!r}")
    return " and ".join(checks)
