"""One generated Python function per event type doing all of its contract's checks on one record.

The monitor's per-event cost was ~12 Python calls (a plan loop, a test per rule, one method per
dimension); the function built here does completeness, validity (allowed values, ranges, patterns,
references), event-id and business-key uniqueness, timeliness and the consistency rules in
straight-line code with local variables, touching a counter only on a failure. Its source is built
from the contract only: field names, labels and rule names enter it as `repr()` literals, every
other value (compiled patterns, value sets, reference sets, bounds, the pseudonym, the marks) as a
constant bound by name (as `backbone.events.decoder` does), so nothing in a contract is code.

    check(window, seen, previous, keys, later, delays, batch, now)

checks each `(record, token)` of `batch` in order (`token`: the subject's oversight pseudonym, or
None); the window's arguments come first: the monitor binds them once per window (`functools.partial`).

`seen`/`previous`: the event-id markers of this window and the one before (sets, or a
`backbone.quality.keyset.KeySet`'s `recent` set); `keys`: (this window's, the previous window's)
business-key markers' sets, None to skip business keys (the gate's windows). `later`: None, or a
list to which the record's (event-id marker, business marker, business text) is appended instead of
deciding its uniqueness here, when older markers are held compacted (`KeySet`) and the monitor
decides the batch's in one vectorised look-up (`QualityMonitor.flush`). `delays`: a list the delay
`occurred_at` -> now of each record is appended to, for the window's KLL sketch in one update of
the batch (an update per value cost ~0.85 µs, a numpy array's ~0.05 µs a value).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from datetime import datetime
from typing import Any
from uuid import UUID

from backbone.quality.contract import ValidityRule
from backbone.quality.patterns import digits_test

Compiled = Callable[..., None]
MASK = (1 << 64) - 1  # a marker is an unsigned 64-bit integer (`KeySet` holds them in uint64 arrays)
SEP = "\x1f"


class _Source:
    def __init__(self) -> None:
        self.lines: list[str] = []
        self.constants: dict[str, Any] = {"_UUID": UUID, "_datetime": datetime, "_isfinite": math.isfinite,
                                          "_NUMBER": (int, float), "_str": str, "_hash": hash, "MASK": MASK}

    def constant(self, value: Any) -> str:
        name = f"_c{len(self.constants)}"
        self.constants[name] = value
        return name

    def add(self, line: str, indent: int = 1) -> None:
        self.lines.append("    " * indent + line)


def _validity(src: _Source, rule: ValidityRule, label: str, test: Any, indent: int) -> None:
    """`if <value fails>: invalid[label] += 1` for the value `v` (present: not None, "" or NaN)."""
    fail = f"invalid[{label!r}] += 1"
    if rule.reference is not None:  # a ReferenceSet's `__contains__`: text only, then its members (a frozenset or a Bloom filter)
        src.add(f"if not (isinstance(v, _str) and v in {src.constant(test.__self__.members)}): {fail}", indent)
    elif rule.values is not None:
        src.add(f"if v not in {src.constant(frozenset(rule.values))}: {fail}", indent)
    elif rule.pattern is not None:
        digits = digits_test(rule.pattern)  # a run of digit classes: str methods, half a regex call's cost
        src.add(f"if not ({digits}): {fail}" if digits else f"if not {src.constant(test)}(v): {fail}", indent)
    else:  # a range: a finite number (not a bool) within the bounds given
        bounds = "".join([f" and {src.constant(rule.min)} <= v" if rule.min is not None else "",
                          f" and v <= {src.constant(rule.max)}" if rule.max is not None else ""])
        src.add(f"if not (isinstance(v, _NUMBER) and not isinstance(v, bool) and _isfinite(v){bounds}): {fail}", indent)


def compile_checker(checker: Any) -> Compiled:
    """The function doing `checker`'s checks on a batch of records (a `backbone.quality.checks.Checker`,
    its plan, keys, subject field, pseudonym and consistency marks as they are now: compile again
    after a change). The window's counters and bound methods are locals of the batch's loop."""
    src = _Source()
    add = src.add
    add("get = record.get")
    business = checker.business_key if checker.key is not None else ()
    for name, tests in checker.plan:
        add(f"v = get({name!r})")
        if name in business:  # read once: the business key below takes it from this local
            add(f"f{business.index(name)} = v")
        add("if v is None or v == '' or v != v:")  # NaN is not equal to itself
        add(f"    missing[{name!r}] += 1")
        if tests:
            add("else:")
            for (label, test), rule in zip(tests, checker.rules_of(name), strict=True):
                _validity(src, rule, label, test, 2)
    if checker.key is not None:  # a business key is part of the uniqueness rule, beside the event id
        _uniqueness(src, checker)
    if checker.max_delay_s is not None:
        add("o = get('occurred_at')")
        add("if isinstance(o, _datetime):")
        add("    d = (now - o).total_seconds()")
        add("    delay(d)")
        add(f"    if d > {src.constant(checker.max_delay_s)}: late += 1")
    if checker.consistency and checker.subject_field:
        _consistency(src, checker)
    label = checker.business_label
    head = ["    missing, invalid, distinct, delay = window.missing, window.invalid, window.distinct.update, delays.append",
            "    duplicates = late = key_duplicates = 0",
            "    key_distinct = None",
            "    for record, token in batch:"]
    tail = ["    window.events += len(batch)",
            "    window.duplicates += duplicates",
            "    window.late += late"]
    if label is not None:
        tail.append(f"    if key_duplicates: window.key_duplicates[{label!r}] += key_duplicates")
    source = ("def check(window, seen, previous, keys, later, delays, batch, now):\n"
              + "\n".join([*head, *("    " + line for line in src.lines), *tail]) + "\n")
    scope = dict(src.constants)
    exec(compile(source, f"<quality checks {checker.event_type}>", "exec"), scope)  # noqa: S102 - from the contract only
    check: Compiled = scope["check"]
    check.source = source  # type: ignore[attr-defined]  # for a reader (and a test) of what runs
    return check


def _uniqueness(src: _Source, checker: Any) -> None:
    """The event id's marker: 63 bits of a UUID (the same in every worker, cheap for the sketch), any
    other key's text hashed under the process's secret (its text goes to the sketch)."""
    add = src.add
    business = bool(checker.business_key)
    add(f"k = get({checker.key!r})")
    add("dup = False")
    add("if k is not None:")
    add("    if isinstance(k, _UUID):")  # the decoder's TextUUID too
    add("        m = k.int >> 65")
    add("        distinct(m)")
    add("    else:")
    add("        k = _str(k)")
    add("        m = _hash(k) & MASK")
    add("        distinct(k)")
    add("    if later is not None:")  # older markers are compacted: the monitor decides the batch's
    if business:
        add("        if keys is not None:")
        _business(src, checker, 4, deferred="m")
        add("        else:")
        add("            later.append((m, None, None))")
    else:
        add("        later.append((m, None, None))")
    add("    elif m in seen or m in previous:")
    add("        duplicates += 1")
    add("        dup = True")
    add("    else:")
    add("        seen.add(m)")
    if business:
        add("elif later is not None and keys is not None:")
        _business(src, checker, 2, deferred="None")
        add("if later is None and not dup and keys is not None:")
        _business(src, checker, 2)


def _business(src: _Source, checker: Any, indent: int, deferred: str | None = None) -> None:
    """The business key's values, the subject's oversight pseudonym in place of the subject (for a
    key without the subject: the pseudonym of its values), held only hashed under the process's
    secret; a record missing one of them is completeness's concern. `deferred`: append (the event
    marker's expression, the marker, the sketch's text) to `later` instead of deciding here."""
    add = src.add
    names = checker.business_key
    pseudonym = src.constant(checker.pseudonym)
    planned = {name for name, _ in checker.plan}
    parts = []
    for i, name in enumerate(names):
        add(f"b{i} = f{i}" if name in planned else f"b{i} = get({name!r})", indent)
        add(f"if b{i} is None or b{i} == '': b{i} = None", indent)
        text = f"(b{i} if b{i}.__class__ is _str else _str(b{i}))"  # a decoded string is its own text: no call
        parts.append(f"(token or {pseudonym}({text}))" if name == checker.subject_field else text)
    present = " and ".join(f"b{i} is not None" for i in range(len(names)))
    add(f"if {present}:", indent)
    inner = indent + 1
    if checker.subject_field in names:
        add(f"values = ({', '.join(parts)},)", inner)
    else:
        add(f"values = ({pseudonym}({SEP!r}.join(({', '.join(parts)},))),)", inner)
    add("b = _hash(values) & MASK", inner)
    label = checker.business_label
    if deferred is not None:
        add(f"later.append(({deferred}, b, {SEP!r}.join(values)))", inner)
        add("else:", indent)
        add(f"    later.append(({deferred}, None, None))", indent)
        return
    add("if b in keys[0] or b in keys[1]:", inner)
    add("    key_duplicates += 1", inner)
    add("else:", inner)
    add("    keys[0].add(b)", inner)
    add("    if key_distinct is None:", inner)  # the sketch is made with the window's first business key
    add(f"        key_distinct = window.key_distinct_sketch({label!r}).update", inner)
    add(f"    key_distinct({SEP!r}.join(values))", inner)


def _consistency(src: _Source, checker: Any) -> None:
    """An event is inconsistent when its subject was marked by a rule's earlier event and its field's
    month is after the mark's month."""
    add = src.add
    month = src.constant(checker.month_index)
    pseudonym = src.constant(checker.pseudonym)
    add(f"s = get({checker.subject_field!r})")
    add("if s:")
    for rule in checker.consistency:
        marks = src.constant(checker.marks.get((rule.after, rule.at), {}))
        add(f"    if {marks}:")
        add(f"        token = token or {pseudonym}(s)")
        add(f"        marked = {marks}.get(token)")
        add("        if marked is not None:")
        add(f"            n = {month}(get({rule.field!r}))")
        add(f"            if n is not None and n > marked: window.inconsistent[{rule.name!r}] += 1")
