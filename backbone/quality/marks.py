"""Consistency marks as records of the compacted `quality.marks` topic, so they survive a restart.

A consistency rule (`claim_after_death`) holds an event against its subject's earlier event of
another provider (a registered death). The monitor remembers the month of each such event by the
subject's oversight pseudonym (`backbone.quality.checks`); each new or changed mark is also
published, keyed `<after event type>|<at field>|<pseudonym>` with the month index (year * 12 +
month - 1) as ASCII digits as its value, and every worker reads the topic in full at start and
then as it grows (`processors.app`). A compacted topic keeps the newest mark per key: its size is
the number of marked subjects, not of events. Nothing but the pseudonym and a month is in it: no
national id, no date of death. A tombstone (no value) forgets the mark.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

SEPARATOR = "|"
# Months from year 1 to 9999: anything else in a value is not a mark.
_MONTHS = range(12, 10_000 * 12)


def mark_record(after: str, at: str, token: str, month: int | None) -> tuple[bytes, bytes | None]:
    """The key and value of one mark (month None: its tombstone, for an erased subject)."""
    return f"{after}{SEPARATOR}{at}{SEPARATOR}{token}".encode(), None if month is None else str(month).encode()


def read_mark(key: bytes | None, value: bytes | None) -> tuple[str, str, str, int | None]:
    """(after, at, pseudonym, month or None for a tombstone); ValueError names what is wrong (never the content)."""
    try:
        after, at, token = (key or b"").decode("ascii").split(SEPARATOR)
    except (UnicodeDecodeError, ValueError):
        raise ValueError("a quality mark's key is not <event type>|<field>|<pseudonym>") from None
    if not after or not at or not token:
        raise ValueError("a quality mark's key has an empty part")
    if value is None:
        return after, at, token, None
    text = value.decode("ascii", errors="replace")
    if not text.isdigit() or int(text) not in _MONTHS:
        raise ValueError("a quality mark's value is not a month index")
    return after, at, token, int(text)


def mark_applier(remember: Callable[[str, str, str, int | None], None], log: logging.Logger) -> Callable[[Any], None]:
    """`apply(message)` for a reader of `quality.marks`: each mark to `remember` (the monitor's); a
    record that is not a mark is skipped with a warning naming its offset only."""

    def apply(message: Any) -> None:
        try:
            remember(*read_mark(message.key(), message.value()))
        except ValueError as exc:
            log.warning("skipped the record at offset %s of partition %s of quality.marks: %s", message.offset(),
                        message.partition(), exc)

    return apply
